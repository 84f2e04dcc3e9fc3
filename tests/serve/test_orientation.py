"""Sessions in the view frame: a RAS file is served as radiological slices (the same as its LPS twin), its
labels are exported onto its own grid, the orientation survives a restart, and old records reopen stored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsam.preprocess.orientation import AxisReorientation, oriented_with, voxel_to_physical
from medsam.serve.masks import decode_payload
from medsam.types import Volume

from ._helpers import ct_ball, open_session, png_array
from .conftest import _dicom_synth

RAS_FLIP = (False, True, True)


def prompt(client, sid, z, **body):
    r = client.post(f"/api/sessions/{sid}/slices/{z}/prompts", json=body)
    assert r.status_code == 200, r.text
    return decode_payload(r.json()["mask"])


@pytest.fixture
def ras_root(data_root):
    """ball.nii.gz (stored LPS) and ball_ras.nii.gz: the same physical voxels stored RAS; a RAS DICOM series."""
    import SimpleITK as sitk

    from medsam.io.volume_writers import to_sitk_image

    lps = Volume(ct_ball(), (2.5, 0.8, 0.8), (-10.0, 5.0, 20.0), np.eye(3))
    ras = oriented_with(lps, AxisReorientation(lps.shape, flip=RAS_FLIP, name="copy")).view
    sitk.WriteImage(to_sitk_image(ras.array, ras), str(data_root / "ball_ras.nii.gz"))
    _dicom_synth().write_ct_series(data_root / "dicom_ras", num_slices=5, rows=32, cols=28,
                                   direction=np.column_stack([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]))
    return data_root


def test_a_ras_file_is_served_radiologically_and_exported_on_its_own_grid(client, ras_root):
    import SimpleITK as sitk

    info = open_session(client, "ball_ras.nii.gz")
    twin = open_session(client, "ball.nii.gz")
    o = info["orientation"]
    assert (o["name"], o["plane"], o["flip"], o["order"]) == ("canonical", "axial", list(RAS_FLIP), [0, 1, 2])
    assert o["description"] == "stored x flipped, y flipped" and o["source_shape"] == [8, 48, 64]
    assert twin["orientation"]["description"] == "as stored"
    assert info["spacing_mm"] == pytest.approx(twin["spacing_mm"])
    sid, tid = info["id"], twin["id"]
    for z in (2, 4):
        a = png_array(client.get(f"/api/sessions/{sid}/slices/{z}/image").content)
        b = png_array(client.get(f"/api/sessions/{tid}/slices/{z}/image").content)
        assert np.array_equal(a, b)  # the RAS file shows the same (radiological) picture as its LPS twin
    mask = prompt(client, sid, 4, box=[18, 12, 42, 36])
    assert mask.any()
    assert client.post(f"/api/sessions/{sid}/slices/4/accept", json={"label": "ball"}).status_code == 200
    view_labels = np.zeros((8, 48, 64), np.uint8)
    view_labels[4][mask] = 1

    exported = {}
    for fmt in ("nifti", "nrrd", "npz", "montage"):
        r = client.post(f"/api/sessions/{sid}/export", json={"format": fmt})
        assert r.status_code == 201, r.text
        exported[fmt] = r.json()["path"]
    source = sitk.ReadImage(str(ras_root / "ball_ras.nii.gz"))
    for fmt in ("nifti", "nrrd"):
        image = sitk.ReadImage(exported[fmt])
        assert np.allclose(image.GetDirection(), source.GetDirection()) and np.allclose(image.GetOrigin(), source.GetOrigin())
        labels = sitk.GetArrayFromImage(image)
        assert np.array_equal(labels, view_labels[:, ::-1, ::-1]), fmt
        # in physical space: the exported voxels are where the view showed them
        read = Volume(labels, tuple(reversed(image.GetSpacing())), image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))
        view = Volume(view_labels, (2.5, 0.8, 0.8), (-10.0, 5.0, 20.0), np.eye(3))
        got, want = voxel_to_physical(read, np.argwhere(labels)), voxel_to_physical(view, np.argwhere(view_labels))
        assert np.allclose(got[np.lexsort(got.T)], want[np.lexsort(want.T)])
    with np.load(exported["npz"]) as data:
        assert np.array_equal(data["segs"], view_labels[:, ::-1, ::-1])


def test_a_ras_dicom_session_exports_seg_and_rtstruct_on_the_source_slices(client, ras_root):
    import highdicom as hd

    from medsam.io.rtstruct import read_rtstruct_labels
    from medsam.io.volume import read_volume

    info = open_session(client, "dicom_ras")
    assert info["orientation"]["flip"] == list(RAS_FLIP) and info["shape"] == [5, 32, 28]
    sid = info["id"]
    mask = prompt(client, sid, 1, box=[3, 4, 14, 20])
    client.post(f"/api/sessions/{sid}/slices/1/accept", json={"label": "body"})
    view_labels = np.zeros((5, 32, 28), np.uint8)
    view_labels[1][mask] = 1
    expected = view_labels[:, ::-1, ::-1]
    volume = read_volume(ras_root / "dicom_ras")
    seg = client.post(f"/api/sessions/{sid}/export", json={"format": "dicom-seg"})
    rt = client.post(f"/api/sessions/{sid}/export", json={"format": "rtstruct"})
    assert seg.status_code == 201 and rt.status_code == 201, (seg.text, rt.text)
    uids = list(volume.metadata["dicom"].sop_instance_uids)
    back = hd.seg.segread(seg.json()["path"]).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    assert np.array_equal(back, expected)
    labels, names = read_rtstruct_labels(rt.json()["path"], volume)
    assert names == {1: "body"} and np.array_equal(labels, expected)


def test_orientation_is_recorded_and_reopened(make_client, ras_root, tmp_path):
    first = make_client()
    sid = open_session(first, "ball_ras.nii.gz")["id"]
    stored = open_session(first, "ball_ras.nii.gz", orientation="stored")
    assert stored["orientation"]["name"] == "stored" and stored["orientation"]["description"] == "as stored"
    raw = png_array(first.get(f"/api/sessions/{stored['id']}/slices/4/image").content)
    view = png_array(first.get(f"/api/sessions/{sid}/slices/4/image").content)
    assert np.array_equal(raw, view[::-1, ::-1])
    mask = prompt(first, sid, 4, box=[18, 12, 42, 36])
    first.post(f"/api/sessions/{sid}/slices/4/accept", json={"label": "ball"})
    folder = tmp_path / "sessions" / sid
    record = json.loads((folder / "session.json").read_text())
    assert record["orientation"] == "canonical" and record["reorientation"]["flip"] == list(RAS_FLIP)
    first.app.state.medsam.close()

    second = make_client()
    info = second.get(f"/api/sessions/{sid}").json()
    assert info["orientation"]["description"] == "stored x flipped, y flipped"
    plane = png_array(second.get(f"/api/sessions/{sid}/slices/4/labels").content)
    assert np.array_equal(plane == 1, mask)
    second.app.state.medsam.close()

    # a record from before orientations: its labels were drawn on the stored arrays, so it reopens stored
    del record["orientation"], record["reorientation"]
    (folder / "session.json").write_text(json.dumps(record))
    third = make_client()
    assert third.get(f"/api/sessions/{sid}").json()["orientation"]["name"] == "stored"
    third.app.state.medsam.close()

    # the file's geometry changed under the session: refused, the labels are kept
    record["orientation"] = "canonical"
    record["reorientation"] = AxisReorientation((8, 48, 64), flip=(False, False, True), name="canonical").to_dict()
    (folder / "session.json").write_text(json.dumps(record))
    fourth = make_client()
    r = fourth.get(f"/api/sessions/{sid}")
    assert r.status_code == 409 and "file changed" in r.json()["detail"]
    assert (folder / "labels.npz").is_file()


def test_open_rejects_an_unknown_orientation(client, ras_root):
    r = client.post("/api/sessions", json={"path": "ball_ras.nii.gz", "orientation": "ras"})
    assert r.status_code == 422
    r = client.post("/api/sessions/upload", files={"file": ("b.nii.gz", (ras_root / "ball_ras.nii.gz").read_bytes())},
                    data={"orientation": "lps"})
    assert r.status_code == 201 and r.json()["orientation"]["name"] == "lps"
