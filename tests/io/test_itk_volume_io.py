"""NIfTI / NRRD / MHA: geometry survives reading, and label volumes land on the same physical voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam.errors import OutputError
from medsam.io.volume import read_volume
from medsam.io.volume_writers import write_label_volume

from dicom_synth import rotation

SHARED = Path(__file__).resolve().parents[2].parent / "shared"  # ../shared beside the project


def _write_source(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple]:
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1500, size=(7, 11, 13)).astype(np.int16)
    spacing_xyz = (0.6, 0.9, 2.5)
    origin = (-12.5, 40.25, 101.0)
    direction = tuple(rotation(10.0, -25.0, 40.0).reshape(-1))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return array, spacing_xyz, origin, direction


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_volume_round_trip_keeps_voxels_and_geometry(tmp_path, suffix):
    import SimpleITK as sitk

    src = tmp_path / f"ct{suffix}"
    array, spacing_xyz, origin, direction = _write_source(src)
    volume = read_volume(src)
    assert volume.shape == (7, 11, 13)
    assert np.array_equal(volume.array, array)
    assert volume.spacing_mm == pytest.approx(tuple(reversed(spacing_xyz)), abs=1e-5)
    assert volume.origin_mm == pytest.approx(origin, abs=1e-4)
    assert np.allclose(volume.direction.reshape(-1), direction, atol=1e-5)
    assert volume.modality is None and volume.metadata["source_path"] == str(src)

    labels = np.zeros(volume.shape, np.uint8)
    labels[2:5, 3:7, 4:9] = 1
    labels[6, 10, 12] = 2  # the far corner: an axis mix-up would move it
    out = tmp_path / f"labels{suffix}"
    assert write_label_volume(labels, volume, out) == out
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    assert back.GetSpacing() == pytest.approx(spacing_xyz, abs=1e-5)
    assert back.GetOrigin() == pytest.approx(origin, abs=1e-4)
    assert np.allclose(back.GetDirection(), direction, atol=1e-5)
    ref = sitk.ReadImage(str(src))
    for index in [(12, 10, 6), (4, 3, 2), (0, 0, 0)]:  # (x, y, z) index -> same physical point
        assert back.TransformIndexToPhysicalPoint(index) == pytest.approx(ref.TransformIndexToPhysicalPoint(index), abs=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])  # no temporary left


def test_label_volume_refuses_overwrite_bad_shape_and_format(tmp_path):
    src = tmp_path / "ct.nii.gz"
    _write_source(src)
    volume = read_volume(src)
    labels = np.zeros(volume.shape, np.uint8)
    out = tmp_path / "seg.nii.gz"
    write_label_volume(labels, volume, out)
    with pytest.raises(OutputError, match="exists"):
        write_label_volume(labels, volume, out)
    write_label_volume(labels, volume, out, overwrite=True)
    with pytest.raises(OutputError, match="shape"):
        write_label_volume(labels[:-1], volume, tmp_path / "bad.nii.gz")
    with pytest.raises(OutputError, match="format"):
        write_label_volume(labels, volume, tmp_path / "bad.png")
    with pytest.raises(OutputError, match="negative"):
        write_label_volume(labels.astype(np.int16) - 1, volume, tmp_path / "neg.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "seg.nii.gz"]


def test_wide_labels_are_stored_as_uint16(tmp_path):
    import SimpleITK as sitk

    src = tmp_path / "ct.mha"
    _write_source(src)
    volume = read_volume(src)
    labels = np.zeros(volume.shape, np.int32)
    labels[1, 1, 1] = 300
    write_label_volume(labels, volume, tmp_path / "seg.mha")
    back = sitk.ReadImage(str(tmp_path / "seg.mha"))
    assert back.GetPixelIDValue() == sitk.sitkUInt16 and sitk.GetArrayFromImage(back)[1, 1, 1] == 300


def test_mri_nrrd_from_shared_data_reads():
    folder = SHARED / "data" / "mri_3d"
    if not (folder / "brain1_image.nrrd").is_file():
        pytest.skip(f"{folder} is absent")
    image = read_volume(folder / "brain1_image.nrrd")
    label = read_volume(folder / "brain1_label.nrrd")
    assert image.shape == label.shape == (25, 256, 256)
    assert image.spacing_mm == pytest.approx((6.5, 0.78125, 0.78125), abs=1e-6)
    assert np.allclose(image.direction, np.diag([1.0, -1.0, 1.0]))
    assert image.origin_mm == label.origin_mm
    assert image.metadata["format"] == "nrrd" and image.array.dtype == np.int16
    breast = read_volume(folder / "breast1_image.nrrd")
    assert breast.shape == (21, 120, 45) and breast.spacing_mm == pytest.approx((2.1, 0.664062, 0.664062))
