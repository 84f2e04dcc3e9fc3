"""medsam.client.MedsamClient against a live uvicorn server on a free loopback port (real HTTP)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.client import ApiError, MedsamClient, mask_array
from medsam.errors import OutputError

from .live import live_server


@pytest.fixture
def server(make_app):
    with live_server(make_app(token="tok")) as url:
        yield url


def test_client_round_trip(server, data_root, tmp_path):
    with MedsamClient(server) as anonymous:
        with pytest.raises(ApiError) as err:
            anonymous.health()
        assert err.value.status == 401 and "token" in err.value.message
    with MedsamClient(server, token="tok") as c:
        assert c.health().model == "tiny_lite"
        assert "disc.png" in [e.name for e in c.files().entries]
        s = c.open_path("disc.png")
        assert s.shape == [1, 96, 128] and [x.id for x in c.sessions()] == [s.id]
        assert c.slice_image(s.id).shape == (96, 128)
        assert c.encode(s.id).cached is False
        assert c.slices(s.id).slices[0].encoded is True
        r = c.prompt(s.id, box=[45, 25, 75, 55])
        mask = mask_array(r)
        assert mask.shape == (96, 128) and mask.sum() == r.area_px
        assert np.array_equal(mask_array(c.prompt(s.id, box=[45, 25, 75, 55], mask_format="rle")), mask)
        r2 = c.refine(s.id, points=[[70, 50]], point_labels=[0])
        assert r2.prompt.used_mask_prompt and r2.step == 2
        assert c.undo(s.id).step == 1 and c.redo(s.id).step == 2 and c.draft(s.id).step == 2
        acc = c.accept(s.id, label="disc", colour="#00ff00")
        assert acc.label.value == 1 and acc.saved
        assert np.array_equal(c.slice_labels(s.id) == 1, mask_array(r2))
        assert c.rename_label(s.id, 1, "round thing").name == "round thing"
        assert c.labels(s.id).labels[0].colour == "#00ff00"
        info = c.export(s.id, "png")
        with pytest.raises(ApiError) as err:
            c.export(s.id, "png")
        assert err.value.status == 409
        assert c.export(s.id, "png", overwrite=True).name == info.name
        assert [e.name for e in c.exports(s.id).exports] == [info.name]
        target = tmp_path / "out.png"
        data = c.download(s.id, info.name, target)
        assert target.read_bytes() == data
        with pytest.raises(OutputError):
            c.download(s.id, info.name, target)
        with pytest.raises(ApiError) as err:
            c.prompt("0123456789abcdef", box=[1, 2, 3, 4])
        assert err.value.status == 404 and err.value.kind == "NotFound"
        with pytest.raises(ApiError) as err:
            c.prompt(s.id, box=[50, 50, 10, 10])
        assert err.value.status == 400 and err.value.kind == "PromptError"

        up = c.upload(data_root / "ball.nii.gz", name="ball")
        assert up.name == "ball" and up.dims == "3d"
        c.prompt(up.id, 4, box=[18, 12, 42, 36])
        c.accept(up.id, 4, label="ball")
        job = c.wait_job(up.id, c.propagate(up.id, label="ball", z_range=[3, 5]).id, timeout=120)
        assert job.state == "done" and [j.id for j in c.jobs(up.id)] == [job.id]
        assert c.labels(up.id).labels[0].accepted_slices == [4]
        assert c.delete_label(up.id, 1).labels == []
        c.delete_session(up.id)
        assert [x.id for x in c.sessions()] == [s.id]
