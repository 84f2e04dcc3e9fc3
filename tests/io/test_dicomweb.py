"""medsam.io.dicomweb against a real Orthanc (tests/orthanc_server.py): fetching a series, the cache, partial
downloads, missing / non-image / mixed series, credentials, and storing DICOM-SEG / RT-STRUCT with verification."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError, OutputError, RemoteServiceError
from medsam.io import dicomweb
from medsam.io.dicom_seg import write_dicom_seg
from medsam.io.dicomweb import DicomwebServer, fetch_series, read_series, store_result
from medsam.io.rtstruct import write_rtstruct
from medsam.io.volume import read_volume

from dicom_synth import write_ct_series

pytestmark = pytest.mark.orthanc


@pytest.fixture
def uploaded(tmp_path, pacs_env):
    """A fresh synthetic CT series uploaded to Orthanc through its own REST API."""
    series = write_ct_series(tmp_path / "ct", num_slices=6)
    pacs_env.upload(sorted(series.folder.glob("*.dcm")))
    return series, pacs_env.series_uri(series.study_uid, series.series_uid)


def _labels(shape):
    labels = np.zeros(shape, np.uint8)
    labels[1:5, 8:20, 10:24] = 1
    labels[2:4, 22:28, 4:9] = 2
    return labels


def test_a_series_fetched_by_dicomweb_reads_as_the_local_copy(tmp_path, uploaded, monkeypatch, pacs_env):
    pacs = pacs_env
    series, uri = uploaded
    volume = read_series(uri, cache_dir=tmp_path / "cache", progress=False)
    local = read_volume(series.folder)
    assert np.array_equal(volume.array, local.array) and volume.spacing_mm == pytest.approx(local.spacing_mm)
    assert np.allclose(volume.direction, local.direction) and volume.origin_mm == pytest.approx(local.origin_mm)
    assert list(volume.metadata["dicom"].sop_instance_uids) == series.sop_uids
    assert volume.metadata["dicomweb_uri"] == uri

    # the cache is reused while the server lists the same instances: no instance is downloaded again
    calls = []
    original = DicomwebServer.retrieve_instance
    monkeypatch.setattr(DicomwebServer, "retrieve_instance", lambda self, *a: calls.append(a) or original(self, *a))
    folder = fetch_series(uri, cache_dir=tmp_path / "cache", progress=False)
    assert calls == [] and len(list(folder.glob("*.dcm"))) == 6
    # ... and fetched again when the series changed on the server (a slice deleted there)
    pacs.delete_instance(series.sop_uids[0])
    folder = fetch_series(uri, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 5 and sorted(p.stem for p in folder.glob("*.dcm")) == sorted(series.sop_uids[1:])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_a_broken_download_leaves_nothing_behind(tmp_path, uploaded, monkeypatch):
    series, uri = uploaded
    cache = tmp_path / "cache"
    original = DicomwebServer.retrieve_instance
    count = {"n": 0}

    def flaky(self, *args):
        count["n"] += 1
        if count["n"] == 4:
            raise RemoteServiceError("connection dropped (simulated)")
        return original(self, *args)

    monkeypatch.setattr(DicomwebServer, "retrieve_instance", flaky)
    with pytest.raises(RemoteServiceError, match="simulated"):
        fetch_series(uri, cache_dir=cache, progress=False)
    assert not list(cache.rglob("*.dcm"))  # the three instances already fetched were thrown away

    def truncated(self, *args):
        ds = original(self, *args)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        return ds

    monkeypatch.setattr(DicomwebServer, "retrieve_instance", truncated)
    with pytest.raises(RemoteServiceError, match=r"arrived incomplete \(1024 of 2048 pixel bytes\)"):
        fetch_series(uri, cache_dir=cache, progress=False)
    assert not list(cache.rglob("*.dcm"))
    monkeypatch.setattr(DicomwebServer, "retrieve_instance", original)
    assert len(list(fetch_series(uri, cache_dir=cache, progress=False).glob("*.dcm"))) == 6


def test_missing_series_names_the_image_series_of_the_study(tmp_path, uploaded, pacs_env):
    series, _ = uploaded
    uri = pacs_env.series_uri(series.study_uid, "1.2.826.0.1.3680043.8.498.999")
    with pytest.raises(InputError, match=rf"has no series 1.2.826.0.1.3680043.8.498.999.*Image series of this study: {series.series_uid}"):
        fetch_series(uri, cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="has no series"):
        fetch_series(pacs_env.series_uri("1.2.826.0.1.3680043.8.498.998", series.series_uid), cache_dir=tmp_path, progress=False)


def test_non_image_series_are_refused_before_any_download(tmp_path, uploaded, pacs_env):
    series, _ = uploaded
    volume = read_volume(series.folder)
    write_dicom_seg(_labels(volume.shape), volume, tmp_path / "seg.dcm")
    write_rtstruct(_labels(volume.shape), volume, tmp_path / "rs.dcm")
    pacs_env.upload([tmp_path / "seg.dcm", tmp_path / "rs.dcm"])
    import pydicom

    for name, what in (("seg.dcm", "DICOM SEG (Segmentation)"), ("rs.dcm", "DICOM RTSTRUCT (RT Structure Set)")):
        ds = pydicom.dcmread(tmp_path / name)
        with pytest.raises(InputError, match=rf"is a {what[:10]}.*not an image series.*Image series of this study: {series.series_uid}"):
            fetch_series(pacs_env.series_uri(series.study_uid, ds.SeriesInstanceUID), cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.dcm"))


def test_mixed_series_are_refused(tmp_path, pacs_env):
    import pydicom
    from pydicom.uid import generate_uid

    # CT slices and a secondary-capture image under one series UID: two kinds of objects
    a = write_ct_series(tmp_path / "a", num_slices=4)
    sc = pydicom.dcmread(sorted(a.folder.glob("*.dcm"))[0])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sc.Modality = "OT"
    sc.save_as(tmp_path / "sc.dcm")
    pacs_env.upload(sorted(a.folder.glob("*.dcm")) + [tmp_path / "sc.dcm"])
    with pytest.raises(InputError, match=r"mixes kinds of objects \(4 x CT Image Storage \(CT\); 1 x Secondary Capture Image Storage \(OT\)\)"):
        fetch_series(pacs_env.series_uri(a.study_uid, a.series_uid), cache_dir=tmp_path / "c", progress=False)

    # CT slices of two sizes under one series UID: the volume reader's check, with the address in front
    b = write_ct_series(tmp_path / "b", num_slices=3, rows=32)
    write_ct_series(tmp_path / "b2", num_slices=3, rows=24, series_uid=b.series_uid, study_uid=b.study_uid,
                    frame_uid=b.frame_uid, slice_step_mm=2.0, origin=(0, 0, 300))
    pacs_env.upload(sorted((tmp_path / "b").glob("*.dcm")) + sorted((tmp_path / "b2").glob("*.dcm")))
    uri = pacs_env.series_uri(b.study_uid, b.series_uid)
    with pytest.raises(InputError, match=rf"^{uri}: series {b.series_uid} mixes image sizes"):
        read_series(uri, cache_dir=tmp_path / "c", progress=False)


def test_wrong_or_missing_credentials_say_what_to_set(tmp_path, uploaded, monkeypatch):
    _, uri = uploaded
    monkeypatch.setenv("MEDSAM_DICOMWEB_PASSWORD", "wrong")
    with pytest.raises(RemoteServiceError, match="answered 401 .*the credentials were refused.*MEDSAM_DICOMWEB_USERNAME"):
        fetch_series(uri, cache_dir=tmp_path, progress=False)
    monkeypatch.delenv("MEDSAM_DICOMWEB_PASSWORD")
    monkeypatch.delenv("MEDSAM_DICOMWEB_USERNAME")
    with pytest.raises(RemoteServiceError, match="answered 401 .*no credentials were given"):
        fetch_series(uri, cache_dir=tmp_path, progress=False)


def test_credentials_file(tmp_path, uploaded, monkeypatch, pacs_env):
    import json

    _, uri = uploaded
    monkeypatch.delenv("MEDSAM_DICOMWEB_PASSWORD")
    monkeypatch.delenv("MEDSAM_DICOMWEB_USERNAME")
    creds = tmp_path / "pacs.json"
    creds.write_text(json.dumps({"username": pacs_env.user, "password": pacs_env.password}))
    creds.chmod(0o600)
    monkeypatch.setenv("MEDSAM_DICOMWEB_CREDENTIALS", str(creds))
    assert len(list(fetch_series(uri, cache_dir=tmp_path / "c", progress=False).glob("*.dcm"))) == 6


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_store_then_verify(tmp_path, uploaded, pacs_env, kind):
    import pydicom

    series, uri = uploaded
    volume = read_series(uri, cache_dir=tmp_path / "cache", progress=False)
    labels = _labels(volume.shape)
    path = tmp_path / f"{kind}.dcm"
    (write_dicom_seg if kind == "seg" else write_rtstruct)(labels, volume, path)
    stored = store_result(path, uri)
    local = pydicom.dcmread(path)
    assert stored.sop_instance_uid == local.SOPInstanceUID and stored.series_instance_uid == local.SeriesInstanceUID
    assert stored.source_series_instance_uid == series.series_uid and stored.study_instance_uid == series.study_uid
    assert stored.kind == {"seg": "DICOM-SEG", "rtstruct": "RT-STRUCT"}[kind]
    assert stored.referenced_instances == len(series.sop_uids)  # both list every source image of the series
    # Orthanc's own REST API (not our client) finds it in the source study
    hits = pacs_env.lookup(stored.sop_instance_uid)
    assert [level for level, _ in hits] == ["Instance"]
    tags = pacs_env.get(f"/instances/{hits[0][1]}/simplified-tags")
    assert tags["StudyInstanceUID"] == series.study_uid


def test_store_refuses_an_object_of_another_series(tmp_path, uploaded, pacs_env):
    _, uri = uploaded
    other = write_ct_series(tmp_path / "other", num_slices=6)
    volume = read_volume(other.folder)
    write_dicom_seg(_labels(volume.shape), volume, tmp_path / "seg.dcm")
    before = pacs_env.instance_count()
    with pytest.raises(OutputError, match="belongs to study .* not to the source study"):
        store_result(tmp_path / "seg.dcm", uri)
    with pytest.raises(OutputError, match="not a DICOM-SEG or RT-STRUCT"):
        store_result(sorted(other.folder.glob("*.dcm"))[0], uri)
    with pytest.raises(OutputError, match="does not exist; nothing was stored"):
        store_result(tmp_path / "missing.dcm", uri)
    assert pacs_env.instance_count() == before  # nothing was sent


def test_store_notices_a_copy_that_does_not_read_back(tmp_path, uploaded, monkeypatch):
    series, uri = uploaded
    volume = read_series(uri, cache_dir=tmp_path / "cache", progress=False)
    write_dicom_seg(_labels(volume.shape), volume, tmp_path / "seg.dcm")
    original = DicomwebServer.retrieve_instance

    def tampered(self, *args):
        ds = original(self, *args)
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"
        return ds

    monkeypatch.setattr(DicomwebServer, "retrieve_instance", tampered)
    with pytest.raises(OutputError, match=r"the stored copy of seg.dcm .* references 1.2.3.4, not the source series"):
        store_result(tmp_path / "seg.dcm", uri)
    monkeypatch.setattr(dicomweb, "_content_matches", lambda a, b: False)
    monkeypatch.setattr(DicomwebServer, "retrieve_instance", original)
    with pytest.raises(RemoteServiceError, match="differs from the file that was sent"):
        store_result(tmp_path / "seg.dcm", uri)
