"""Bad volume inputs: each is an InputError that names the file and says what to do, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.io.volume import read_volume

from dicom_synth import write_ct_series


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _expect_input_error(path: Path, root: Path, *patterns: str, **kwargs) -> str:
    before = _listing(root)
    with pytest.raises(InputError) as err:
        read_volume(path, **kwargs)
    message = str(err.value)
    for pattern in patterns:
        assert pattern in message, message
    assert _listing(root) == before  # nothing written beside the input
    return message


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "empty_study"
    (folder / "sub").mkdir(parents=True)
    (folder / "readme.txt").write_text("no images here")
    (folder / "sub" / "fake.dcm").write_bytes(b"not really dicom" * 20)
    _expect_input_error(folder, tmp_path, str(folder), "no DICOM", "NIfTI")


def test_series_mixing_sizes(tmp_path):
    a = write_ct_series(tmp_path / "mixed", num_slices=4, rows=32, cols=32)
    write_ct_series(tmp_path / "mixed", num_slices=2, rows=16, cols=16, series_uid=a.series_uid, name_prefix="b_")
    _expect_input_error(tmp_path / "mixed", tmp_path, a.series_uid, "mixes image sizes", "export each part")


def test_series_mixing_orientations(tmp_path):
    a = write_ct_series(tmp_path / "mixed", num_slices=4, angles_deg=(0, 0, 0))
    write_ct_series(
        tmp_path / "mixed", num_slices=1, angles_deg=(90, 0, 0), series_uid=a.series_uid, name_prefix="loc_"
    )
    _expect_input_error(tmp_path / "mixed", tmp_path, "mixes slice orientations", "localizer")


def test_series_with_repeated_positions(tmp_path):
    a = write_ct_series(tmp_path / "echoes", num_slices=3)
    write_ct_series(tmp_path / "echoes", num_slices=3, series_uid=a.series_uid, name_prefix="e2_")
    _expect_input_error(tmp_path / "echoes", tmp_path, "same slice position", "its own series")


def test_single_dicom_slice_is_2d(tmp_path):
    s = write_ct_series(tmp_path / "one", num_slices=1)
    _expect_input_error(s.folder / "img000.dcm", tmp_path, "img000.dcm", "2D", "series folder")
    _expect_input_error(s.folder, tmp_path, "single slice", "medsam segment")


def test_4d_nifti(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(path))
    _expect_input_error(path, tmp_path, str(path), "4D", "one 3D volume")


def test_2d_files_given_as_volume(tmp_path):
    import SimpleITK as sitk
    from PIL import Image

    nii = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.int16)), str(nii))
    _expect_input_error(nii, tmp_path, str(nii), "2D image", "medsam segment")
    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(png)
    _expect_input_error(png, tmp_path, str(png), "2D image", "medsam segment")


def test_corrupt_gzip(tmp_path):
    import SimpleITK as sitk

    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4000, dtype=np.int16).reshape(10, 20, 20)), str(good))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_input_error(truncated, tmp_path, str(truncated), "damaged gzip", "Copy it again")
    garbled = tmp_path / "garbled.nii.gz"
    garbled.write_bytes(data[:20] + bytes(200) + data[220:])
    _expect_input_error(garbled, tmp_path, str(garbled), "damaged gzip")


def test_missing_and_unknown_files(tmp_path):
    _expect_input_error(tmp_path / "nowhere.nii.gz", tmp_path, "does not exist")
    odd = tmp_path / "volume.xyz"
    odd.write_text("?")
    _expect_input_error(odd, tmp_path, str(odd), "unknown volume format")
    nii = tmp_path / "v.nii"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 4), np.int16)), str(nii))
    _expect_input_error(nii, tmp_path, "not DICOM", series_uid="1.2.3")
