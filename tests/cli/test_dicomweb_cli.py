"""`medsam segment-volume dicomweb://... [--store]` end to end against a real Orthanc (tests/orthanc_server.py).

A synthetic CT series holding a ball is uploaded with Orthanc's own REST API; it is segmented from DICOMweb
three times (NIfTI, DICOM-SEG stored back, RT-STRUCT stored back); the stored objects are downloaded again with
Orthanc's REST API, their masks must land on the NIfTI output's voxels, their references must point at the
source series, and dciodvfy (dicom3tools) must report no error. The model is the oracle stand-in of
tests/inference/oracle_model.py (it segments the bright voxels in the box), so the run is fast and exact.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam.cli import main

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "inference"))
sys.path.insert(0, str(TESTS / "io"))
import dicom_synth  # noqa: E402
from oracle_model import OracleModel  # noqa: E402

pytestmark = pytest.mark.orthanc
SHAPE, CENTRE, RADIUS = (10, 32, 32), (5, 16, 15), 4
BOX = ["--box3d", "9,9,1,22,22,9"]


@pytest.fixture(autouse=True)
def oracle_model(monkeypatch):
    import medsam.cli.segment_volume
    from medsam.inference.predictor import Predictor

    monkeypatch.setattr(medsam.cli.segment_volume, "load_predictor", lambda args, **kw: Predictor(OracleModel(), **kw))


@pytest.fixture
def pacs_series(tmp_path, monkeypatch, pacs_env):
    z, y, x = np.indices(SHAPE)
    ball = (z - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (x - CENTRE[2]) ** 2 <= RADIUS**2
    monkeypatch.setattr(dicom_synth, "hu_pattern", lambda shape: np.where(ball, 60.0, -1000.0))
    series = dicom_synth.write_ct_series(tmp_path / "series", num_slices=SHAPE[0], rows=SHAPE[1], cols=SHAPE[2])
    pacs_env.upload(sorted(series.folder.glob("*.dcm")))
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    return series, pacs_env.series_uri(series.study_uid, series.series_uid), ball


def _download(orthanc, sop_uid: str, path: Path) -> Path:
    ((level, oid),) = orthanc.lookup(sop_uid)
    assert level == "Instance"
    path.write_bytes(orthanc.get(f"/instances/{oid}/file"))
    return path


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's warnings for ``path``; its errors fail the test. Skips when dicom3tools is absent."""
    validator = shutil.which("dciodvfy")
    if validator is None:
        pytest.skip("dciodvfy (apt-get install dicom3tools) is not installed")
    result = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert errors == [], f"dciodvfy {path.name}: {errors}"
    return [ln for ln in lines if ln.startswith("Warning")]


def _stored_uid(out: str, kind: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"stored {kind} "))
    return line.split()[2]


def test_segment_from_dicomweb_store_seg_and_rtstruct_and_read_them_back(tmp_path, pacs_series, pacs_env, capsys):
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    from medsam.io.rtstruct import read_rtstruct_labels
    from medsam.io.volume import read_volume

    series, uri, ball = pacs_series
    assert main(["segment-volume", uri, *BOX, "-o", str(tmp_path / "ball.nii.gz"), "--no-progress"]) == 0
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ball.nii.gz")))
    assert nifti.shape == SHAPE and 2 * (nifti.astype(bool) & ball).sum() / (nifti.astype(bool).sum() + ball.sum()) > 0.85
    capsys.readouterr()

    assert main(["segment-volume", uri, *BOX, "-o", str(tmp_path / "ball_seg.dcm"), "--label", "ball", "--store",
                 "--no-progress"]) == 0
    seg_uid = _stored_uid(capsys.readouterr().out, "DICOM-SEG")
    assert main(["segment-volume", uri, *BOX, "-o", str(tmp_path / "ball_rs.dcm"), "--format", "rtstruct", "--label",
                 "ball", "--store", "--no-progress"]) == 0
    out = capsys.readouterr().out
    rs_uid = _stored_uid(out, "RT-STRUCT")
    assert f"references series {series.series_uid} (10 images)" in out

    seg_path = _download(pacs_env, seg_uid, tmp_path / "from_pacs_seg.dcm")
    rs_path = _download(pacs_env, rs_uid, tmp_path / "from_pacs_rs.dcm")
    local_source = read_volume(series.folder)  # the series as uploaded, not the DICOMweb copy

    seg = hd.seg.segread(seg_path)
    assert seg.SOPInstanceUID == seg_uid and seg.StudyInstanceUID == series.study_uid
    assert seg.FrameOfReferenceUID == series.frame_uid
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == [series.series_uid]
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(series.sop_uids)
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=series.sop_uids, combine_segments=True, relabel=False)
    assert np.array_equal(back.astype(np.uint8), nifti)  # the same voxels as the NIfTI output

    rs = pydicom.dcmread(rs_path)
    assert rs.SOPInstanceUID == rs_uid and rs.StudyInstanceUID == series.study_uid
    frame = rs.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_uid
    ref_series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert [s.SeriesInstanceUID for s in ref_series] == [series.series_uid]
    contour_refs = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in rs.ROIContourSequence[0].ContourSequence}
    assert contour_refs == {series.sop_uids[k] for k in range(SHAPE[0]) if nifti[k].any()}
    labels, names = read_rtstruct_labels(rs_path, local_source)
    assert names == {1: "ball"}
    assert np.array_equal(labels, nifti)

    warnings = {"DICOM-SEG": dciodvfy(seg_path), "RT-STRUCT": dciodvfy(rs_path)}
    print("dciodvfy warnings:", warnings)


def _expect_error(args, root: Path, capsys, *messages):
    before = sorted(p.name for p in root.iterdir())
    assert main(args + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written


def test_bad_dicomweb_inputs_and_store_options(tmp_path, pacs_series, pacs_env, capsys, monkeypatch):
    series, uri, _ = pacs_series
    out = tmp_path / "out"
    out.mkdir()
    _expect_error(["segment-volume", str(series.folder), *BOX, "-o", str(out / "a.dcm"), "--store"], out, capsys,
                  "--store sends the result back", "is a local path")
    _expect_error(["segment-volume", uri, *BOX, "-o", str(out / "a.nii.gz"), "--store"], out, capsys,
                  "--store stores DICOM objects", "is nifti")
    missing = pacs_env.series_uri(series.study_uid, "1.2.826.0.1.3680043.8.498.12345")
    _expect_error(["segment-volume", missing, *BOX, "-o", str(out / "b.dcm"), "--store"], out, capsys,
                  "has no series 1.2.826.0.1.3680043.8.498.12345", series.series_uid)
    _expect_error(["segment-volume", uri.replace(str(pacs_env.port), str(_closed_port())), *BOX, "-o", str(out / "c.dcm")],
                  out, capsys, "cannot be reached", "Connection refused")
    _expect_error(["segment-volume", uri.replace("dicomweb://", f"dicomweb://{pacs_env.user}:{pacs_env.password}@"), *BOX,
                   "-o", str(out / "d.dcm")], out, capsys, "credentials in the address")
    monkeypatch.setenv("MEDSAM_DICOMWEB_PASSWORD", "wrong")
    _expect_error(["segment-volume", uri, *BOX, "-o", str(out / "e.dcm"), "--store"], out, capsys, "answered 401")
    assert pacs_env.password not in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
