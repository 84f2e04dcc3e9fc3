"""Every endpoint of the annotation API with the tiny model, including the error answers."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from medsam.serve.masks import decode_payload

from ._helpers import open_session, png_array, wait_job


def prompt(client, sid, z=0, **body):
    return client.post(f"/api/sessions/{sid}/slices/{z}/prompts", json=body)


# --- server, page, schema --------------------------------------------------------------------------------


def test_health_page_and_openapi(client):
    health = client.get("/api/health").json()
    assert health["model"] == "tiny_lite" and health["auth_required"] is False and health["data_root"] is True
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/sessions",
        "/api/sessions/upload",
        "/api/sessions/{sid}/slices/{z}/prompts",
        "/api/sessions/{sid}/slices/{z}/refine",
        "/api/sessions/{sid}/slices/{z}/undo",
        "/api/sessions/{sid}/slices/{z}/accept",
        "/api/sessions/{sid}/propagate",
        "/api/sessions/{sid}/export",
    ):
        assert path in paths
    body = paths["/api/sessions/{sid}/slices/{z}/prompts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("PromptRequest")


def test_files_listing_and_path_safety(client, data_root):
    listing = client.get("/api/files").json()
    names = {e["name"]: e for e in listing["entries"]}
    assert {"disc.png", "ball.nii.gz", "dicom", "sub"} <= set(names) and names["sub"]["is_dir"]
    assert "escape" not in names  # a symlink out of the root is not shown
    assert client.get("/api/files", params={"path": "sub"}).json()["entries"][0]["path"] == "sub/small.png"
    for bad in ("../secret.txt", "sub/../../secret.txt", "escape/secret.txt", str(data_root.parent / "secret.txt"), "/etc/passwd"):
        r = client.post("/api/sessions", json={"path": bad})
        assert r.status_code == 403, (bad, r.text)
        assert r.json()["error"] == "ForbiddenPath" and "data root" in r.json()["detail"]
    assert client.get("/api/files", params={"path": ".."}).status_code == 403
    r = client.post("/api/sessions", json={"path": "nothing.png"})
    assert r.status_code == 400 and "does not exist" in r.json()["detail"]


def test_no_data_root_refuses_paths(make_client):
    client = make_client(data_root=None)
    r = client.post("/api/sessions", json={"path": "disc.png"})
    assert r.status_code == 403 and "--data-root" in r.json()["detail"]
    assert client.get("/api/health").json()["data_root"] is False


# --- sessions and slices ---------------------------------------------------------------------------------


def test_open_2d_and_slice_image(client):
    info = open_session(client)
    assert info["dims"] == "2d" and info["shape"] == [1, 96, 128] and info["labels"] == 0
    sid = info["id"]
    assert [s["id"] for s in client.get("/api/sessions").json()] == [sid]
    r = client.get(f"/api/sessions/{sid}/slices/0/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert png_array(r.content).shape == (96, 128)
    slices = client.get(f"/api/sessions/{sid}/slices").json()
    assert slices["depth"] == 1 and slices["slices"][0]["encoded"] is False
    enc = client.post(f"/api/sessions/{sid}/slices/0/encode").json()
    assert enc["cached"] is False and enc["encode_ms"] > 0
    assert client.post(f"/api/sessions/{sid}/slices/0/encode").json()["cached"] is True
    assert client.get(f"/api/sessions/{sid}").json()["encoded_slices"] == [0]


def test_volume_info_and_windows(client):
    info = open_session(client, "ball.nii.gz")
    sid = info["id"]
    assert info["dims"] == "3d" and info["shape"] == [8, 48, 64]
    assert info["spacing_mm"] == pytest.approx([2.5, 0.8, 0.8])
    assert "lung" in info["window_presets"] and "soft_tissue" in info["window_presets"]
    soft = png_array(client.get(f"/api/sessions/{sid}/slices/4/image").content)
    lung = png_array(client.get(f"/api/sessions/{sid}/slices/4/image", params={"window": "lung"}).content)
    custom = png_array(client.get(f"/api/sessions/{sid}/slices/4/image", params={"window": "400,40"}).content)
    assert soft.shape == lung.shape == (48, 64)
    assert np.array_equal(soft, custom)  # auto on CT is soft tissue W400/L40
    assert not np.array_equal(soft, lung)
    r = client.get(f"/api/sessions/{sid}/slices/4/image", params={"window": "purple"})
    assert r.status_code == 400 and "window 'purple'" in r.json()["detail"]
    assert client.get(f"/api/sessions/{sid}/slices/8/image").status_code == 404
    assert client.get(f"/api/sessions/{sid}/slices/-1/image").status_code == 404


def test_unknown_session_everywhere(client):
    for method, path in (
        ("get", "/api/sessions/nope"),
        ("get", "/api/sessions/nope/slices"),
        ("get", "/api/sessions/nope/slices/0/image"),
        ("post", "/api/sessions/nope/slices/0/encode"),
        ("get", "/api/sessions/nope/labels"),
        ("get", "/api/sessions/nope/jobs"),
        ("get", "/api/sessions/nope/exports"),
    ):
        r = getattr(client, method)(path)
        assert r.status_code == 404 and "does not exist" in r.json()["detail"], path
    r = prompt(client, "nope", box=[1, 2, 30, 40])
    assert r.status_code == 404


def test_delete_session_needs_confirm(client, tmp_path):
    sid = open_session(client)["id"]
    r = client.delete(f"/api/sessions/{sid}")
    assert r.status_code == 409 and "confirm=true" in r.json()["detail"]
    assert client.delete(f"/api/sessions/{sid}", params={"confirm": "true"}).status_code == 204
    assert client.get(f"/api/sessions/{sid}").status_code == 404
    assert not (tmp_path / "sessions" / sid).exists()


# --- prompts, refine, undo/redo ----------------------------------------------------------------------------


def test_prompt_refine_undo_redo(client):
    sid = open_session(client)["id"]
    r = prompt(client, sid, box=[45, 25, 75, 55])
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["has_mask"] and first["step"] == 0 and first["can_undo"] and not first["can_redo"]
    assert first["iou"] is not None and first["latency_ms"] >= first["decode_ms"] + first["wait_ms"] and first["decode_ms"] > 0
    mask = decode_payload(first["mask"])
    assert mask.shape == (96, 128) and mask.sum() == first["area_px"] > 0
    rle = prompt(client, sid, box=[45, 25, 75, 55], mask_format="rle").json()
    assert np.array_equal(decode_payload(rle["mask"]), mask)  # same prompt, same mask, other encoding
    none = prompt(client, sid, box=[45, 25, 75, 55], mask_format="none").json()
    assert none["mask"] is None and none["area_px"] == first["area_px"]

    refined = client.post(f"/api/sessions/{sid}/slices/0/refine", json={"points": [[70, 50]], "point_labels": [0]}).json()
    assert refined["prompt"]["box"] == [45, 25, 75, 55]
    assert refined["prompt"]["points"] == [[70, 50]] and refined["prompt"]["used_mask_prompt"] is True
    again = client.post(f"/api/sessions/{sid}/slices/0/refine", json={"points": [[60, 40]], "point_labels": [1]}).json()
    assert again["prompt"]["points"] == [[70, 50], [60, 40]] and again["prompt"]["point_labels"] == [0, 1]
    assert again["step"] == 4 and again["steps"] == 5

    back = client.post(f"/api/sessions/{sid}/slices/0/undo", json={}).json()
    assert back["step"] == 3 and back["prompt"]["points"] == [[70, 50]] and back["area_px"] == refined["area_px"]
    fwd = client.post(f"/api/sessions/{sid}/slices/0/redo").json()
    assert fwd["step"] == 4 and fwd["area_px"] == again["area_px"]
    r = client.post(f"/api/sessions/{sid}/slices/0/redo")
    assert r.status_code == 409 and "nothing to redo" in r.json()["detail"]
    for _ in range(5):
        last = client.post(f"/api/sessions/{sid}/slices/0/undo").json()
    assert last["has_mask"] is False and last["step"] == -1 and last["mask"] is None
    r = client.post(f"/api/sessions/{sid}/slices/0/undo")
    assert r.status_code == 409 and "nothing to undo" in r.json()["detail"]
    draft = client.get(f"/api/sessions/{sid}/slices/0/draft").json()
    assert draft["has_mask"] is False and draft["can_redo"] is True

    # a new prompt after undo drops the redo branch; objects have separate histories
    new = prompt(client, sid, points=[[60, 40]], point_labels=[1]).json()
    assert new["step"] == 0 and not new["can_redo"] and new["prompt"]["box"] is None
    other = prompt(client, sid, object_id=3, box=[10, 10, 40, 40]).json()
    assert other["object_id"] == 3 and other["step"] == 0
    assert client.get(f"/api/sessions/{sid}/slices/0/draft", params={"object_id": 0}).json()["prompt"]["box"] is None


def test_refine_without_prompt_starts_one(client):
    sid = open_session(client)["id"]
    r = client.post(f"/api/sessions/{sid}/slices/0/refine", json={"points": [[60, 40]], "point_labels": [1]})
    assert r.status_code == 200 and r.json()["prompt"]["used_mask_prompt"] is False


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"box": [1, 2, 3]}, 422, "exactly 4 numbers"),
        ({"box": [50, 20, 10, 40]}, 400, "inverted"),
        ({"box": [500, 500, 600, 600]}, 400, "outside the image"),
        ({"box": [1, 2, "a", 4]}, 422, "box"),
        ({"points": [[10, 10]], "point_labels": [1, 0]}, 400, "1 points but 2 point_labels"),
        ({"points": [[10, 10]], "point_labels": [2]}, 400, "labels must be 1"),
        ({"points": [[1000, 10]], "point_labels": [1]}, 400, "outside the image"),
        ({"points": [[10, 10, 3]], "point_labels": [1]}, 422, "a point is [x, y]"),
        ({}, 400, "no prompt"),
        ({"box": [1, 2, 30, 40], "colour": "red"}, 422, "Extra inputs"),
    ],
)
def test_bad_prompts(client, body, status, words):
    sid = open_session(client)["id"]
    r = prompt(client, sid, **body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_bad_refine_and_slice(client):
    sid = open_session(client)["id"]
    r = client.post(f"/api/sessions/{sid}/slices/0/refine", json={"points": [], "point_labels": []})
    assert r.status_code == 422
    r = prompt(client, sid, z=1, box=[1, 2, 30, 40])
    assert r.status_code == 404 and "slices 0..0" in r.json()["detail"]


# --- accept, labels ----------------------------------------------------------------------------------------


def test_accept_labels_rename_delete(client, tmp_path):
    sid = open_session(client)["id"]
    r = client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "disc"})
    assert r.status_code == 409 and "draw a box or click first" in r.json()["detail"]
    mask = decode_payload(prompt(client, sid, box=[45, 25, 75, 55]).json()["mask"])
    acc = client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "disc", "colour": "#00FF00"}).json()
    assert acc["label"]["value"] == 1 and acc["label"]["colour"] == "#00ff00" and acc["saved"]
    assert acc["area_px"] == int(mask.sum()) and acc["label"]["accepted_slices"] == [0] and acc["revision"] == 1
    # the draft is cleared by default
    assert client.get(f"/api/sessions/{sid}/slices/0/draft").json()["has_mask"] is False
    plane = png_array(client.get(f"/api/sessions/{sid}/slices/0/labels").content)
    assert np.array_equal(plane == 1, mask)
    # saved to disk at once
    folder = tmp_path / "sessions" / sid
    with np.load(folder / "labels.npz") as saved:
        assert list(saved["z"]) == [0] and np.array_equal(saved["slices"][0] == 1, mask)
    record = json.loads((folder / "session.json").read_text())
    assert record["labels"][0]["name"] == "disc" and record["revision"] == 1

    prompt(client, sid, box=[5, 5, 30, 30])
    second = client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "corner"}).json()
    assert second["label"]["value"] == 2
    labels = client.get(f"/api/sessions/{sid}/labels").json()
    assert [lab["name"] for lab in labels["labels"]] == ["disc", "corner"] and labels["revision"] == 2

    r = client.patch(f"/api/sessions/{sid}/labels/2", json={"name": "disc"})
    assert r.status_code == 409 and "already called" in r.json()["detail"]
    renamed = client.patch(f"/api/sessions/{sid}/labels/2", json={"name": "background patch", "colour": "#123456"}).json()
    assert renamed["name"] == "background patch" and renamed["colour"] == "#123456"
    assert client.patch(f"/api/sessions/{sid}/labels/9", json={"name": "x"}).status_code == 404
    assert client.patch(f"/api/sessions/{sid}/labels/2", json={"colour": "blue"}).status_code == 422

    left = client.delete(f"/api/sessions/{sid}/labels/1").json()
    assert [lab["value"] for lab in left["labels"]] == [2]
    plane = png_array(client.get(f"/api/sessions/{sid}/slices/0/labels").content)
    assert not (plane == 1).any()
    assert client.delete(f"/api/sessions/{sid}/labels/1").status_code == 404
    r = client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": ""})
    assert r.status_code == 422


def test_accept_add_mode_and_existing_label(client):
    sid = open_session(client)["id"]
    a = decode_payload(prompt(client, sid, box=[45, 25, 75, 55]).json()["mask"])
    client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "x"})
    b = decode_payload(prompt(client, sid, box=[5, 5, 30, 30]).json()["mask"])
    client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "x", "mode": "add"})
    plane = png_array(client.get(f"/api/sessions/{sid}/slices/0/labels").content)
    assert np.array_equal(plane == 1, a | b)
    prompt(client, sid, box=[5, 5, 30, 30])
    client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "x"})  # replace
    plane = png_array(client.get(f"/api/sessions/{sid}/slices/0/labels").content)
    assert np.array_equal(plane == 1, b)


# --- exports -----------------------------------------------------------------------------------------------


def test_exports_2d(client):
    sid = open_session(client)["id"]
    mask = decode_payload(prompt(client, sid, box=[45, 25, 75, 55]).json()["mask"])
    client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "disc"})
    r = client.post(f"/api/sessions/{sid}/export", json={"format": "png"})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "disc_labels.png"
    exported = png_array(client.get(info["url"]).content)
    assert np.array_equal(exported == 1, mask)
    r = client.post(f"/api/sessions/{sid}/export", json={"format": "png"})
    assert r.status_code == 409 and "overwrite=true" in r.json()["detail"]
    assert client.post(f"/api/sessions/{sid}/export", json={"format": "png", "overwrite": True}).status_code == 201
    overlay = client.post(f"/api/sessions/{sid}/export", json={"format": "overlay", "filename": "look"}).json()
    assert overlay["name"] == "look.png" and png_array(client.get(overlay["url"]).content).shape == (96, 128, 3)
    npz = client.post(f"/api/sessions/{sid}/export", json={"format": "npz"}).json()
    with np.load(io.BytesIO(client.get(npz["url"]).content)) as data:
        assert np.array_equal(data["segs"] == 1, mask)
    names = [e["name"] for e in client.get(f"/api/sessions/{sid}/exports").json()["exports"]]
    assert names == ["disc_labels.npz", "disc_labels.png", "look.png"]
    for bad, status in (({"format": "nifti", "filename": "../x"}, 400), ({"format": "montage"}, 400), ({"format": "tiff"}, 422)):
        assert client.post(f"/api/sessions/{sid}/export", json=bad).status_code == status
    assert client.get(f"/api/sessions/{sid}/exports/nothing.png").status_code == 404
    assert client.get(f"/api/sessions/{sid}/exports/..%2Fsession.json").status_code == 404


def test_exports_volume_and_dicom(client):
    import SimpleITK as sitk

    sid = open_session(client, "ball.nii.gz")["id"]
    prompt(client, sid, z=4, box=[18, 12, 42, 36])
    client.post(f"/api/sessions/{sid}/slices/4/accept", json={"label": "ball"})
    info = client.post(f"/api/sessions/{sid}/export", json={"format": "nifti"}).json()
    image = sitk.ReadImage(info["path"])
    assert image.GetSpacing() == pytest.approx((0.8, 0.8, 2.5)) and image.GetOrigin() == pytest.approx((-10.0, 5.0, 20.0))
    labels = sitk.GetArrayFromImage(image)
    assert labels.shape == (8, 48, 64) and labels[4].any() and not labels[3].any()
    assert client.post(f"/api/sessions/{sid}/export", json={"format": "montage"}).status_code == 201
    r = client.post(f"/api/sessions/{sid}/export", json={"format": "dicom-seg"})
    assert r.status_code == 409 and "DICOM source" in r.json()["detail"]
    assert client.post(f"/api/sessions/{sid}/export", json={"format": "png"}).status_code == 400

    did = open_session(client, "dicom")["id"]
    prompt(client, did, z=2, box=[4, 4, 26, 26])
    client.post(f"/api/sessions/{did}/slices/2/accept", json={"label": "body"})
    seg = client.post(f"/api/sessions/{did}/export", json={"format": "dicom-seg"})
    rt = client.post(f"/api/sessions/{did}/export", json={"format": "rtstruct"})
    assert seg.status_code == 201 and rt.status_code == 201, (seg.text, rt.text)
    import pydicom

    assert pydicom.dcmread(seg.json()["path"]).Modality == "SEG"
    ds = pydicom.dcmread(rt.json()["path"])
    assert ds.Modality == "RTSTRUCT" and ds.StructureSetROISequence[0].ROIName == "body"


# --- uploads -----------------------------------------------------------------------------------------------


def test_uploads(client, data_root, tmp_path):
    png = (data_root / "disc.png").read_bytes()
    r = client.post("/api/sessions/upload", files={"file": ("my scan.png", png, "image/png")})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["dims"] == "2d" and info["name"] == "my_scan.png"
    assert (tmp_path / "sessions" / info["id"] / "source" / "my_scan.png").read_bytes() == png
    nii = client.post("/api/sessions/upload", files={"file": ("ball.nii.gz", (data_root / "ball.nii.gz").read_bytes())}, data={"window": "lung"})
    assert nii.status_code == 201 and nii.json()["shape"] == [8, 48, 64] and nii.json()["model_window"] == "lung"
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted((data_root / "dicom").iterdir()):
            zf.write(f, f"series/{f.name}")
    z = client.post("/api/sessions/upload", files={"file": ("series.zip", buf.getvalue())})
    assert z.status_code == 201, z.text
    assert z.json()["shape"][0] == 5 and z.json()["modality"] == "CT"
    bad = client.post("/api/sessions/upload", files={"file": ("notes.txt", b"hello")})
    assert bad.status_code == 400 and "unknown file type" in bad.json()["detail"]
    broken = client.post("/api/sessions/upload", files={"file": ("broken.png", b"\x89PNG not really")})
    assert broken.status_code == 400
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../evil.nii.gz", b"x")
    r = client.post("/api/sessions/upload", files={"file": ("evil.zip", evil.getvalue())})
    assert r.status_code == 403 and "unsafe path" in r.json()["detail"]
    # failed uploads leave no session folder behind
    assert len([p for p in (tmp_path / "sessions").iterdir() if not p.name.startswith(".")]) == 3


def test_upload_too_large(make_client, data_root):
    client = make_client(max_upload_mb=0.001)  # ~1 KiB
    r = client.post("/api/sessions/upload", files={"file": ("disc.png", (data_root / "disc.png").read_bytes() * 3)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it streams
        for _ in range(8):
            yield b"x" * 512

    r = client.post("/api/sessions/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"


# --- safety ------------------------------------------------------------------------------------------------


def test_token(make_client):
    client = make_client(token="s3cret")
    r = client.get("/api/health")
    assert r.status_code == 401 and "needs a token" in r.json()["detail"]
    r = client.get("/api/health", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "wrong" in r.json()["detail"]
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/health", headers={"X-Medsam-Token": "s3cret"}).json()["auth_required"] is True
    assert client.get("/openapi.json").status_code == 401
    assert client.post("/api/sessions", json={"path": "disc.png"}).status_code == 401
    assert client.post("/api/sessions/upload", files={"file": ("a.png", b"123")}).status_code == 401
    # the page itself loads, then asks for the token
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200


def test_host_header_guard(client):
    assert client.get("/api/health", headers={"Host": "evil.example:8000"}).status_code == 400
    assert client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "[::1]:8000"}).status_code == 200


# --- propagation -------------------------------------------------------------------------------------------


def test_propagate(client, tmp_path):
    sid = open_session(client, "ball.nii.gz")["id"]
    r = client.post(f"/api/sessions/{sid}/propagate", json={"label": "ball"})
    assert r.status_code == 404
    prompt(client, sid, z=4, box=[18, 12, 42, 36])
    client.post(f"/api/sessions/{sid}/slices/4/accept", json={"label": "ball"})
    accepted = png_array(client.get(f"/api/sessions/{sid}/slices/4/labels").content)
    r = client.post(f"/api/sessions/{sid}/propagate", json={"label": "ball", "z_range": [2, 6], "mode": "reference"})
    assert r.status_code == 202, r.text
    job = wait_job(client, sid, r.json()["id"])
    assert job["state"] == "done", job
    assert job["key_slice"] == 4 and job["progress"] == 1.0 and job["slices_total"] == 5
    assert set(job["slices_written"]) <= {2, 3, 5, 6} and 4 not in job["slices_written"]
    label = client.get(f"/api/sessions/{sid}/labels").json()["labels"][0]
    assert label["accepted_slices"] == [4] and label["propagated_slices"] == sorted(job["slices_written"])
    # the accepted slice is untouched; nothing outside z_range
    assert np.array_equal(png_array(client.get(f"/api/sessions/{sid}/slices/4/labels").content), accepted)
    for z in (0, 1, 7):
        assert not png_array(client.get(f"/api/sessions/{sid}/slices/{z}/labels").content).any()
    assert [j["id"] for j in client.get(f"/api/sessions/{sid}/jobs").json()] == [job["id"]]
    with np.load(tmp_path / "sessions" / sid / "labels.npz") as saved:
        assert set(saved["z"].tolist()) == {4, *job["slices_written"]}
    # cancelling a finished job is harmless; unknown jobs are 404
    assert client.delete(f"/api/sessions/{sid}/jobs/{job['id']}").json()["state"] == "done"
    assert client.get(f"/api/sessions/{sid}/jobs/nope").status_code == 404


def test_propagate_errors(client):
    sid = open_session(client)["id"]
    prompt(client, sid, box=[45, 25, 75, 55])
    client.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "disc"})
    r = client.post(f"/api/sessions/{sid}/propagate", json={"label": "disc"})
    assert r.status_code == 400 and "needs a volume" in r.json()["detail"]
    vid = open_session(client, "ball.nii.gz")["id"]
    prompt(client, vid, z=4, box=[18, 12, 42, 36])
    client.post(f"/api/sessions/{vid}/slices/4/accept", json={"label": "ball"})
    r = client.post(f"/api/sessions/{vid}/propagate", json={"label": "ball", "z": 2})
    assert r.status_code == 409 and "no pixels on slice 2" in r.json()["detail"]
    r = client.post(f"/api/sessions/{vid}/propagate", json={"label": "ball", "z_range": [5, 7]})
    assert r.status_code == 400 and "outside z_range" in r.json()["detail"]
    r = client.post(f"/api/sessions/{vid}/propagate", json={"label": "ball", "z_range": [5, 2]})
    assert r.status_code == 422


def test_propagate_cancel(make_client):
    client = make_client()
    sid = open_session(client, "ball.nii.gz")["id"]
    prompt(client, sid, z=4, box=[18, 12, 42, 36])
    client.post(f"/api/sessions/{sid}/slices/4/accept", json={"label": "ball"})
    state = client.app.state.medsam
    with state.engine.lock.hold():  # the job cannot take a step until we let go
        job = client.post(f"/api/sessions/{sid}/propagate", json={"label": 1, "mode": "reference"}).json()
        assert client.post(f"/api/sessions/{sid}/propagate", json={"label": 1}).status_code == 409
        state.registry.get(sid).jobs[job["id"]].cancel()
    done = wait_job(client, sid, job["id"])
    assert done["state"] == "cancelled" and done["slices_done"] <= 1


# --- restart -----------------------------------------------------------------------------------------------


def test_restart_reopens_sessions(make_client, make_app, tmp_path):
    first = make_client()
    sid = open_session(first)["id"]
    uid = first.post("/api/sessions/upload", files={"file": ("up.png", (tmp_path / "data" / "sub" / "small.png").read_bytes())}).json()["id"]
    mask = decode_payload(prompt(first, sid, box=[45, 25, 75, 55]).json()["mask"])
    first.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "disc", "colour": "#abcdef"})
    first.post(f"/api/sessions/{sid}/export", json={"format": "png"})
    first.app.state.medsam.close()

    second = make_client()  # same sessions_dir
    listed = {s["id"]: s for s in second.get("/api/sessions").json()}
    assert set(listed) == {sid, uid} and listed[sid]["labels"] == 1
    info = second.get(f"/api/sessions/{sid}").json()
    assert info["label_list"][0]["name"] == "disc" and info["label_list"][0]["colour"] == "#abcdef"
    assert info["revision"] == 1 and info["exports"] == ["disc_labels.png"]
    plane = png_array(second.get(f"/api/sessions/{sid}/slices/0/labels").content)
    assert np.array_equal(plane == 1, mask)
    assert second.get(f"/api/sessions/{uid}/slices/0/image").status_code == 200
    # new work goes on where it stopped
    prompt(second, sid, box=[5, 5, 30, 30])
    assert second.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "corner"}).json()["revision"] == 2

    third = make_client(data_root=None)  # a data-root session cannot be read without the data root
    r = third.get(f"/api/sessions/{sid}")
    assert r.status_code == 400 and "--data-root" in r.json()["detail"]
    assert {s["id"]: s["available"] for s in third.get("/api/sessions").json()}[sid] is False
    assert third.get(f"/api/sessions/{uid}").status_code == 200


def test_labels_npz_is_newest_truth(make_client, tmp_path):
    """A crash between writing labels.npz and session.json loses nothing: labels.npz carries the table."""
    first = make_client()
    sid = open_session(first)["id"]
    prompt(first, sid, box=[45, 25, 75, 55])
    first.post(f"/api/sessions/{sid}/slices/0/accept", json={"label": "disc"})
    folder = tmp_path / "sessions" / sid
    record = json.loads((folder / "session.json").read_text())
    record["labels"], record["revision"] = [], 0  # as if session.json was not rewritten yet
    (folder / "session.json").write_text(json.dumps(record))
    second = make_client()
    labels = second.get(f"/api/sessions/{sid}/labels").json()
    assert [lab["name"] for lab in labels["labels"]] == ["disc"] and labels["revision"] == 1


def test_prefetch_encodes_neighbours(make_client):
    client = make_client(prefetch_slices=1, prefetch_idle_s=0.0)
    sid = open_session(client, "ball.nii.gz")["id"]
    assert client.get(f"/api/sessions/{sid}/slices/3/image").status_code == 200
    end = time.monotonic() + 30
    while time.monotonic() < end:
        encoded = {s["z"] for s in client.get(f"/api/sessions/{sid}/slices").json()["slices"] if s["encoded"]}
        if {2, 3, 4} <= encoded:
            break
        time.sleep(0.05)
    assert {2, 3, 4} <= encoded and not ({0, 1, 7} & encoded)  # (the ball is symmetric: slice 5 looks like 3)
    # moving on cancels what was pending for the session
    engine = client.app.state.medsam.engine
    with engine.lock.hold():
        client.get(f"/api/sessions/{sid}/slices/6/image")
        client.get(f"/api/sessions/{sid}/slices/0/image")
        assert engine.prefetch.pending(sid) == 2  # slices 0 and 1 (6 and 7 were replaced)


def test_multimask_keeps_the_best(client):
    sid = open_session(client)["id"]
    r = prompt(client, sid, box=[45, 25, 75, 55], multimask=True)
    assert r.status_code == 200 and r.json()["has_mask"] and r.json()["decode_cpu_ms"] >= 0
