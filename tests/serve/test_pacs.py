"""`medsam serve --dicomweb URL` against a real Orthanc: list studies and series, open a series, accept a mask,
store it back as DICOM-SEG and RT-STRUCT (read back from Orthanc and compared), and the errors of each step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ._helpers import png_array
from .conftest import _dicom_synth

pytestmark = pytest.mark.orthanc
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from oracle_model import OracleModel  # noqa: E402

SHAPE = (8, 32, 32)


@pytest.fixture
def pacs_ct(tmp_path, pacs_env, monkeypatch):
    """A CT series with a bright block on slices 2..5, uploaded to Orthanc with its own REST API."""
    synth = _dicom_synth()
    block = np.zeros(SHAPE, bool)
    block[2:6, 10:20, 8:22] = True
    monkeypatch.setattr(synth, "hu_pattern", lambda shape: np.where(block, 200.0, -1000.0))
    series = synth.write_ct_series(tmp_path / "pacs_ct", num_slices=SHAPE[0], rows=SHAPE[1], cols=SHAPE[2],
                                   description="block CT")
    pacs_env.upload(sorted(series.folder.glob("*.dcm")))
    return series, block


@pytest.fixture
def pacs_client(make_client, pacs_env):
    return make_client(dicomweb_url=pacs_env.dicomweb_url, model=OracleModel())


def test_browse_open_accept_and_store_back(pacs_client, pacs_ct, pacs_env, tmp_path):
    import highdicom as hd
    import pydicom

    from medsam.io.rtstruct import read_rtstruct_labels
    from medsam.io.volume import read_volume

    series, block = pacs_ct
    client = pacs_client
    assert client.get("/api/pacs").json() == {"enabled": True, "url": pacs_env.dicomweb_url}
    studies = client.get("/api/pacs/studies", params={"patient": "phantom"}).json()
    study = next(s for s in studies if s["study_instance_uid"] == series.study_uid)
    assert study["patient_name"] == "Synthetic^Phantom" and study["modalities"] == ["CT"] and study["instances"] == SHAPE[0]
    listed = client.get(f"/api/pacs/studies/{series.study_uid}/series").json()
    assert [(s["series_instance_uid"], s["modality"], s["image"], s["instances"]) for s in listed] == [
        (series.series_uid, "CT", True, SHAPE[0])
    ]

    r = client.post("/api/pacs/open", json={"study_instance_uid": series.study_uid, "series_instance_uid": series.series_uid})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["shape"] == list(SHAPE) and info["modality"] == "CT" and info["name"] == "CT block CT"
    sid = info["id"]
    assert client.get(f"/api/sessions/{sid}/pacs").json()["series_instance_uid"] == series.series_uid

    for z in (2, 3, 4, 5):
        r = client.post(f"/api/sessions/{sid}/slices/{z}/prompts", json={"box": [6, 8, 24, 22]})
        assert r.status_code == 200 and r.json()["area_px"] > 0, r.text
        assert client.post(f"/api/sessions/{sid}/slices/{z}/accept", json={"label": "block"}).status_code == 200
    labels = np.stack([png_array(client.get(f"/api/sessions/{sid}/slices/{z}/labels").content) for z in range(SHAPE[0])])
    assert np.array_equal(labels > 0, block)  # the stand-in model segments the bright block exactly

    stored = {}
    for fmt in ("dicom-seg", "rtstruct"):
        r = client.post(f"/api/sessions/{sid}/pacs/store", json={"format": fmt})
        assert r.status_code == 201, r.text
        stored[fmt] = r.json()
        assert stored[fmt]["verified"] and stored[fmt]["source_series_instance_uid"] == series.series_uid
        assert stored[fmt]["export"] in [e["name"] for e in client.get(f"/api/sessions/{sid}/exports").json()["exports"]]

    def download(uid, name):
        ((level, oid),) = pacs_env.lookup(uid)
        path = tmp_path / name
        path.write_bytes(pacs_env.get(f"/instances/{oid}/file"))
        return path

    seg = hd.seg.segread(download(stored["dicom-seg"]["sop_instance_uid"], "seg.dcm"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["block"]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=series.sop_uids, combine_segments=True, relabel=False)
    assert np.array_equal(back > 0, block)
    rs_path = download(stored["rtstruct"]["sop_instance_uid"], "rs.dcm")
    assert pydicom.dcmread(rs_path).StructureSetROISequence[0].ROIName == "block"
    rs_labels, _ = read_rtstruct_labels(rs_path, read_volume(series.folder))
    assert np.array_equal(rs_labels > 0, block)

    # the stored objects now show in the study, flagged as not openable
    listed = client.get(f"/api/pacs/studies/{series.study_uid}/series").json()
    assert [(s["modality"], s["image"]) for s in listed] == [("CT", True), ("SEG", False), ("RTSTRUCT", False)]
    seg_series = listed[1]["series_instance_uid"]
    r = client.post("/api/pacs/open", json={"study_instance_uid": series.study_uid, "series_instance_uid": seg_series})
    assert r.status_code == 400 and "not an image series" in r.json()["detail"]


def test_pacs_errors_are_clear(make_client, pacs_client, pacs_ct, pacs_env, client, monkeypatch):
    series, _ = pacs_ct
    r = client.get("/api/pacs/studies")  # a server started without --dicomweb
    assert r.status_code == 404 and "--dicomweb" in r.json()["detail"]
    assert client.get("/api/pacs").json() == {"enabled": False, "url": None}

    missing = {"study_instance_uid": series.study_uid, "series_instance_uid": "1.2.826.0.1.3680043.8.498.4242"}
    r = pacs_client.post("/api/pacs/open", json=missing)
    assert r.status_code == 400 and "has no series 1.2.826.0.1.3680043.8.498.4242" in r.json()["detail"]
    r = pacs_client.post("/api/pacs/open", json={"study_instance_uid": "../../etc", "series_instance_uid": "1.2"})
    assert r.status_code == 400 and "not a DICOM UID" in r.json()["detail"]
    r = pacs_client.post("/api/sessions", json={"path": "disc.png"})
    r = pacs_client.post(f"/api/sessions/{r.json()['id']}/pacs/store", json={"format": "dicom-seg"})
    assert r.status_code == 404 and "not opened from the PACS" in r.json()["detail"]
    opened = pacs_client.post("/api/pacs/open", json={"study_instance_uid": series.study_uid,
                                                       "series_instance_uid": series.series_uid}).json()
    r = pacs_client.post(f"/api/sessions/{opened['id']}/pacs/store", json={"format": "dicom-seg"})
    assert r.status_code == 409 and "empty" in r.json()["detail"]  # nothing accepted yet
    r = pacs_client.post(f"/api/sessions/{opened['id']}/pacs/store", json={"format": "nifti"})
    assert r.status_code == 422

    monkeypatch.setenv("MEDSAM_DICOMWEB_PASSWORD", "wrong")
    r = pacs_client.get("/api/pacs/studies")
    assert r.status_code == 502 and "401" in r.json()["detail"] and "wrong" not in r.json()["detail"]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = make_client(dicomweb_url=f"http://127.0.0.1:{port}/dicom-web")
    r = down.get("/api/pacs/studies")
    assert r.status_code == 502 and "cannot be reached" in r.json()["detail"]
