"""Propagation that stops where the object ends, and 3D corrections in the server: a click on a propagated slice
re-segments it and re-propagates, accepted slices never change, undo puts everything back (oracle model: it
segments the bright pixels inside the prompt box, so every expected mask is exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ._helpers import load_test_module, open_session, png_array, wait_job

HERE = Path(__file__).resolve().parent


def _oracle():
    return load_test_module("oracle_model", HERE.parent / "inference" / "oracle_model.py").OracleModel()


def ball_and_tube() -> np.ndarray:
    """A bright ball (slices 4..16) with a dimmer tube running out of its top to the last slice."""
    z, y, x = np.indices((24, 64, 64))
    volume = np.full((24, 64, 64), 30, np.uint8)
    ball = (z - 10) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 36
    tube = (z > 10) & ((y - 30) ** 2 + (x - 30) ** 2 <= 16) & ~ball
    volume[tube] = 120
    volume[ball] = 200
    for k in range(24):
        volume[k, 0, : k + 1] = 31
    return volume


@pytest.fixture
def oracle_client(make_client, data_root):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(ball_and_tube()), str(data_root / "tube.nrrd"))
    return make_client(model=_oracle(), refinement="box_update")


def slices_of(client, sid) -> list[int]:
    return client.get(f"/api/sessions/{sid}/labels").json()["labels"][0]["slices"]


def plane(client, sid, z) -> np.ndarray:
    return png_array(client.get(f"/api/sessions/{sid}/slices/{z}/labels").content)


def start(client) -> str:
    sid = open_session(client, "tube.nrrd", orientation="stored")["id"] if _takes_orientation(client) else \
        open_session(client, "tube.nrrd")["id"]
    r = client.post(f"/api/sessions/{sid}/slices/10/prompts", json={"box": [22, 22, 38, 38]})
    assert r.status_code == 200, r.text
    assert client.post(f"/api/sessions/{sid}/slices/10/accept", json={"label": "ball"}).status_code == 200
    return sid


def _takes_orientation(client) -> bool:
    schema = client.get("/openapi.json").json()["components"]["schemas"].get("OpenPathRequest", {})
    return "orientation" in schema.get("properties", {})


def test_propagate_stops_where_the_object_ends(oracle_client):
    client = oracle_client
    sid = start(client)
    job = wait_job(client, sid, client.post(f"/api/sessions/{sid}/propagate", json={"label": "ball"}).json()["id"])
    assert job["state"] == "done", job
    zs = slices_of(client, sid)
    assert zs[0] in (4, 5) and zs[-1] < 18  # the dimmer tube above the ball is not taken (the tips may go)
    assert "intensity moved" in job["message"]
    # a z_range says where the object is: the label may then fill it (the old behaviour)
    job = wait_job(client, sid, client.post(f"/api/sessions/{sid}/propagate", json={"label": "ball", "z_range": [0, 23]}).json()["id"])
    assert slices_of(client, sid)[-1] == 23


def test_a_click_on_a_propagated_slice_re_propagates(oracle_client):
    client = oracle_client
    sid = start(client)
    wait_job(client, sid, client.post(f"/api/sessions/{sid}/propagate", json={"label": "ball", "z_range": [0, 23]}).json()["id"])
    before = {z: plane(client, sid, z) for z in range(24)}
    assert before[21].any() and before[23].any()  # the propagation ran into the tube
    r = client.post(f"/api/sessions/{sid}/corrections", json={"label": "ball", "z": 20, "points": [[30, 30]], "point_labels": [0]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed_slices"] == [20, 21, 22, 23] and body["can_undo"]
    for z in range(20, 24):
        assert not plane(client, sid, z).any()
    for z in range(0, 20):
        assert np.array_equal(plane(client, sid, z), before[z])  # the accepted slice 10 among them
    label = client.get(f"/api/sessions/{sid}/labels").json()["labels"][0]
    assert label["accepted_slices"] == [10] and label["corrected_slices"] == [20]
    # a click next to the accepted slice never reaches it
    r = client.post(f"/api/sessions/{sid}/corrections", json={"label": "ball", "z": 11, "points": [[30, 30]], "point_labels": [0]})
    assert r.status_code == 200 and 10 not in r.json()["changed_slices"]
    assert np.array_equal(plane(client, sid, 10), before[10])
    # undo, twice: everything is back
    assert client.post(f"/api/sessions/{sid}/corrections/undo").status_code == 200
    assert client.post(f"/api/sessions/{sid}/corrections/undo").json()["changed_slices"] == [20, 21, 22, 23]
    for z in range(24):
        assert np.array_equal(plane(client, sid, z), before[z])
    assert client.post(f"/api/sessions/{sid}/corrections/undo").status_code == 409


def test_correction_errors(oracle_client):
    client = oracle_client
    sid = start(client)
    cases = [
        ({"label": "nope", "z": 3, "points": [[3, 3]], "point_labels": [1]}, 404, "does not exist"),
        ({"label": "ball", "z": 40, "points": [[3, 3]], "point_labels": [1]}, 404, "slice 40"),
        ({"label": "ball", "z": 3}, 400, "needs a click"),
        ({"label": "ball", "z": 3, "points": [[300, 3]], "point_labels": [1]}, 400, "outside the slice"),
        ({"label": "ball", "z": 3, "points": [[3, 3]], "point_labels": [1, 0]}, 400, "point_labels"),
    ]
    for body, status, words in cases:
        r = client.post(f"/api/sessions/{sid}/corrections", json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)


def test_a_sam2_model_is_refused_with_a_clear_message(tmp_path):
    from medsam.errors import InputError
    from medsam.models.registry import build_model
    from medsam.serve import ServeSettings, create_app

    with pytest.raises(InputError, match="not served yet"):
        create_app(ServeSettings(sessions_dir=tmp_path / "s", warm_up=False, precision="fp32", backend="torch"),
                   build_model("tiny_sam2", device="cpu"))
