"""DICOM series in (order, spacing, HU, geometry, series choice) and DICOM-SEG / RT-STRUCT out."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError, OutputError
from medsam.io.dicom import DicomSeriesInfo, find_dicom_series
from medsam.io.dicom_seg import write_dicom_seg
from medsam.io.rtstruct import read_rtstruct_labels, write_rtstruct
from medsam.io.volume import read_volume

from dicom_synth import write_ct_series


@pytest.fixture
def series(tmp_path):
    return write_ct_series(tmp_path / "ct")


@pytest.fixture
def volume(series):
    return read_volume(series.folder)


def _object_labels(shape):
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    labels[((y - 14) ** 2 + (x - 15) ** 2 <= 49) & (z >= 1) & (z <= 4)] = 1
    labels[(y >= 22) & (y <= 27) & (x >= 3) & (x <= 9) & (z >= 2)] = 2
    return labels


def test_series_reads_with_order_spacing_hu_and_geometry(series, volume):
    assert volume.shape == (6, 32, 32)
    assert np.array_equal(volume.array, series.hu.astype(np.float32))  # slope 2, intercept -1000 applied
    assert volume.array.dtype == np.float32
    # z from the positions (3 mm), not SliceThickness (5 mm); in-plane (row spacing, column spacing)
    assert volume.spacing_mm == pytest.approx((3.0, 0.8, 0.7), abs=1e-5)
    assert volume.origin_mm == pytest.approx(tuple(series.origin), abs=1e-5)
    assert np.allclose(volume.direction, series.direction, atol=1e-5)
    assert volume.modality == "CT"
    info = volume.metadata["dicom"]
    assert isinstance(info, DicomSeriesInfo)
    assert list(info.sop_instance_uids) == series.sop_uids  # slice order, not file or InstanceNumber order
    assert info.frame_of_reference_uid == series.frame_uid and info.study_instance_uid == series.study_uid
    assert info.series_instance_uid == series.series_uid == volume.metadata["series_instance_uid"]
    assert all("PixelData" not in ds for ds in info.datasets)


def test_reader_agrees_with_simpleitk_series_reader(series, volume):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series.folder)))
    image = reader.Execute()
    assert np.allclose(sitk.GetArrayFromImage(image), volume.array)
    assert tuple(reversed(image.GetSpacing())) == pytest.approx(volume.spacing_mm, abs=1e-5)
    assert image.GetOrigin() == pytest.approx(volume.origin_mm, abs=1e-5)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), volume.direction, atol=1e-5)


def test_integer_rescale_gives_int16(tmp_path):
    s = write_ct_series(tmp_path / "ct", slope=1.0, intercept=-1024.0, angles_deg=(0, 0, 0), bits_stored=12)
    v = read_volume(s.folder)
    assert v.array.dtype == np.int16  # 12 stored bits - 1024 fit in int16
    assert np.array_equal(v.array, s.hu)
    assert np.allclose(v.direction, np.eye(3))


def test_single_file_reads_its_whole_series(series):
    v = read_volume(series.folder / "img002.dcm")
    assert v.shape == (6, 32, 32)
    assert "belongs to" in v.metadata["series_choice"]


def test_folder_with_several_series_picks_the_largest_and_says_so(tmp_path):
    big = write_ct_series(tmp_path / "study" / "a", num_slices=6, description="big")
    small = write_ct_series(tmp_path / "study" / "b", num_slices=3, study_uid=big.study_uid, description="small")
    (tmp_path / "study" / "notes.txt").write_text("not dicom")
    found = find_dicom_series(tmp_path / "study")
    assert [s.num_files for s in found] == [6, 3]
    with pytest.warns(UserWarning, match="most slices"):
        v = read_volume(tmp_path / "study")
    assert v.metadata["series_instance_uid"] == big.series_uid
    assert small.series_uid in v.metadata["other_series"][0]
    assert "most slices" in v.metadata["series_choice"]
    chosen = read_volume(tmp_path / "study", series_uid=small.series_uid)
    assert chosen.shape[0] == 3
    with pytest.raises(InputError, match="no series 1.2.3"):
        read_volume(tmp_path / "study", series_uid="1.2.3")


def test_dicom_seg_reads_back_with_frame_references(tmp_path, series, volume):
    import highdicom as hd

    labels = _object_labels(volume.shape)
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, volume, out, label_names={1: "ball", 2: "box"})
    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == series.frame_uid
    assert seg.StudyInstanceUID == series.study_uid
    assert [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence] == [(1, "ball"), (2, "box")]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(series.sop_uids)
    frame_refs = set()  # (segment number, source slice) of every stored frame
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frame_refs.add((int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber), source))
    expected = {(v, series.sop_uids[k]) for v in (1, 2) for k in range(6) if (labels[k] == v).any()}
    assert frame_refs == expected
    back = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_uids, combine_segments=True, relabel=False
    )
    assert np.array_equal(back, labels)


def test_dicom_seg_renumbers_sparse_labels(tmp_path, volume):
    import highdicom as hd

    labels = np.zeros(volume.shape, np.uint8)
    labels[2, 5:9, 5:9] = 7
    write_dicom_seg(labels, volume, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence] == [(1, "label 7")]


def test_rtstruct_reads_back_with_references_and_rasterises(tmp_path, series, volume):
    import pydicom

    labels = _object_labels(volume.shape)
    out = tmp_path / "rs.dcm"
    write_rtstruct(labels, volume, out, label_names=["ball", "box"])
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.StudyInstanceUID == series.study_uid and ds.PatientID == "SYN001"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_uid
    ref_series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == series.series_uid
    assert [i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence] == series.sop_uids
    assert [(r.ROINumber, r.ROIName) for r in ds.StructureSetROISequence] == [(1, "ball"), (2, "box")]
    assert all(r.ReferencedFrameOfReferenceUID == series.frame_uid for r in ds.StructureSetROISequence)
    ball = ds.ROIContourSequence[0]
    contour_slices = [c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ball.ContourSequence]
    assert contour_slices == [series.sop_uids[k] for k in (1, 2, 3, 4)]
    # every contour point lies in its slice's plane
    for c in ball.ContourSequence:
        k = series.sop_uids.index(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        plane_offset = (pts - (series.origin + 3.0 * k * series.direction[:, 2])) @ series.direction[:, 2]
        assert np.abs(plane_offset).max() < 1e-3
    back, names = read_rtstruct_labels(out, volume)
    assert names == {1: "ball", 2: "box"}
    for value in (1, 2):
        a, b = labels == value, back == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
    assert np.array_equal(back, labels)  # with this module's contour convention the round trip is exact


def test_rtstruct_holes_and_single_pixels_round_trip(tmp_path, volume):
    z, y, x = np.indices(volume.shape)
    labels = np.zeros(volume.shape, np.uint8)
    labels[((y - 14) ** 2 + (x - 15) ** 2 <= 64) & (z >= 1) & (z <= 4)] = 1
    labels[((y - 14) ** 2 + (x - 15) ** 2 <= 9) & (z == 2)] = 0  # a hole
    labels[0, 5, 5] = 2  # one pixel
    labels[5, 20, 20:22] = 2  # two pixels
    write_rtstruct(labels, volume, tmp_path / "rs.dcm")
    back, _ = read_rtstruct_labels(tmp_path / "rs.dcm", volume)
    assert np.array_equal(back, labels)


def test_dicom_writers_need_a_dicom_reference(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16)), str(tmp_path / "v.nii.gz"))
    v = read_volume(tmp_path / "v.nii.gz")
    labels = np.ones(v.shape, np.uint8)
    with pytest.raises(OutputError, match="DICOM source"):
        write_dicom_seg(labels, v, tmp_path / "seg.dcm")
    with pytest.raises(OutputError, match="DICOM source"):
        write_rtstruct(labels, v, tmp_path / "rs.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]


def test_dicom_writers_refuse_empty_labels_and_existing_files(tmp_path, volume):
    empty = np.zeros(volume.shape, np.uint8)
    with pytest.raises(OutputError, match="empty"):
        write_dicom_seg(empty, volume, tmp_path / "seg.dcm")
    with pytest.raises(OutputError, match="empty"):
        write_rtstruct(empty, volume, tmp_path / "rs.dcm")
    labels = _object_labels(volume.shape)
    write_rtstruct(labels, volume, tmp_path / "rs.dcm")
    with pytest.raises(OutputError, match="exists"):
        write_rtstruct(labels, volume, tmp_path / "rs.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_outputs_saved_in_the_series_folder_do_not_disturb_reading_it(series, volume):
    labels = _object_labels(volume.shape)
    write_dicom_seg(labels, volume, series.folder / "seg.dcm")
    write_rtstruct(labels, volume, series.folder / "rs.dcm")
    with pytest.raises(InputError, match="RTSTRUCT object, not an image"):
        read_volume(series.folder / "rs.dcm")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second "series" would warn
        again = read_volume(series.folder)
    assert np.array_equal(again.array, volume.array) and again.metadata["other_series"] == []


def test_missing_slice_warns_and_dicom_outputs_keep_each_slice_position(tmp_path):
    import pydicom

    s = write_ct_series(tmp_path / "ct", num_slices=6, shuffle_seed=None)
    (s.folder / "img003.dcm").unlink()  # slice k=3: the steps become 3, 3, 3, 6, 3 mm
    with pytest.warns(UserWarning, match="slice distances vary"):
        v = read_volume(s.folder)
    assert v.shape[0] == 5 and v.metadata["nonuniform_slice_spacing"]
    assert v.spacing_mm[0] == pytest.approx(15.0 / 4)
    labels = np.zeros(v.shape, np.uint8)
    labels[3, 10:20, 10:20] = 1  # the slice after the gap: k=4 of the series
    write_rtstruct(labels, v, tmp_path / "rs.dcm")
    contour = pydicom.dcmread(tmp_path / "rs.dcm").ROIContourSequence[0].ContourSequence[0]
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == s.sop_uids[4]
    pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
    assert np.abs((pts - s.origin) @ s.direction[:, 2] - 12.0).max() < 1e-3


def test_dicom_outputs_pass_the_dicom3tools_validator(tmp_path, volume):
    """dciodvfy (Debian package dicom3tools) checks each IOD's required attributes; skipped when absent."""
    import shutil
    import subprocess

    validator = shutil.which("dciodvfy")
    if validator is None:
        pytest.skip("dciodvfy (apt-get install dicom3tools) is not installed")
    labels = _object_labels(volume.shape)
    write_dicom_seg(labels, volume, tmp_path / "seg.dcm")
    write_rtstruct(labels, volume, tmp_path / "rs.dcm")
    for name in ("seg.dcm", "rs.dcm"):
        result = subprocess.run([validator, str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{name}: {errors}"


def test_enhanced_multiframe_ct_reads_in_spatial_order(tmp_path):
    from dicom_synth import write_enhanced_ct

    s, frame_of_slice = write_enhanced_ct(tmp_path / "enh" / "ct.dcm")
    v = read_volume(tmp_path / "enh" / "ct.dcm")
    assert v.shape == (5, 24, 20) and np.array_equal(v.array, s.hu)
    assert v.spacing_mm == pytest.approx((2.5, 0.9, 0.6), abs=1e-5)
    assert v.origin_mm == pytest.approx(tuple(s.origin), abs=1e-5)
    assert np.allclose(v.direction, s.direction, atol=1e-5)
    info = v.metadata["dicom"]
    assert list(info.frame_numbers) == frame_of_slice and len(info.datasets) == 1
    assert read_volume(tmp_path / "enh").shape == v.shape  # the folder gives the same volume


def test_enhanced_multiframe_outputs_reference_frames(tmp_path):
    import highdicom as hd
    import pydicom

    from dicom_synth import write_enhanced_ct

    s, frame_of_slice = write_enhanced_ct(tmp_path / "enh" / "ct.dcm")
    v = read_volume(s.folder / "ct.dcm")
    labels = np.zeros(v.shape, np.uint8)
    labels[1:4, 5:15, 4:12] = 1
    labels[3, 2:4, 2:4] = 2
    write_dicom_seg(labels, v, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    refs = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == s.sop_uids[0]
        refs.add((int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber), int(source.ReferencedFrameNumber)))
    assert refs == {(1, frame_of_slice[k]) for k in (1, 2, 3)} | {(2, frame_of_slice[3])}

    write_rtstruct(labels, v, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(tmp_path / "rs.dcm")
    first = ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    assert int(first.ReferencedFrameNumber) == frame_of_slice[1]
    back, _ = read_rtstruct_labels(tmp_path / "rs.dcm", v)
    assert np.array_equal(back, labels)


def test_multiframe_file_mixed_with_slices_is_refused(tmp_path):
    from dicom_synth import write_enhanced_ct

    s, _ = write_enhanced_ct(tmp_path / "mix" / "enh.dcm")
    write_ct_series(tmp_path / "mix", num_slices=3, series_uid=s.series_uid)
    with pytest.raises(InputError, match="mixes a multi-frame file"):
        read_volume(tmp_path / "mix")
