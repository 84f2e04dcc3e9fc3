"""CVPR24 and MedSAM2 npz cases: spacing order, geometry, ground truth and boxes as typed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.io.npz import read_npz_case, write_npz_segs
from medsam.io.volume import read_volume
from medsam.types import Box, Box3D

SHARED = Path(__file__).resolve().parents[2].parent / "shared"  # ../shared beside the project
LESIONS = SHARED / "data" / "ct_lesions_3d"


def _lesion_files() -> list[Path]:
    files = sorted(LESIONS.glob("*.npz")) if LESIONS.is_dir() else []
    if not files:
        pytest.skip(f"{LESIONS} is absent")
    return files


def test_medsam2_real_files_spacing_is_reversed_to_zyx():
    for path in _lesion_files():
        with np.load(path) as raw:
            stored, imgs, gts = raw["spacing"], raw["imgs"], raw["gts"]
            direction, origin = raw["direction"], raw["origin"]
        case = read_npz_case(path)
        assert case.layout == "medsam2" and case.is_3d
        v = case.volume
        # stored (x, y, z) = (0.3..0.98, same, 5.0) beside (D, H, W) arrays of 13-16 slices
        assert stored[2] == 5.0 and stored[0] == stored[1] < 1.0
        assert v.spacing_mm == pytest.approx((stored[2], stored[1], stored[0]))
        assert v.spacing_mm[0] == 5.0  # the slice axis (z, first array axis) is 5 mm apart
        assert v.shape == imgs.shape and v.shape[0] in range(13, 17)
        assert np.array_equal(case.gts, gts) and case.gts.shape == v.shape
        assert np.allclose(v.direction, direction.reshape(3, 3)) and v.origin_mm == tuple(origin)
        assert v.modality == "CT" and v.array.dtype == np.uint8
        assert "reversed" in v.metadata["spacing_rule"]
        assert read_volume(path).spacing_mm == v.spacing_mm


def _save(path: Path, **arrays) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_cvpr24_3d_case_with_boxes_and_xyz_spacing(tmp_path):
    imgs = np.zeros((5, 20, 30), np.uint8)
    gts = np.zeros_like(imgs)
    gts[1:4, 5:9, 10:20] = 1
    path = _save(
        tmp_path / "3DBox_MR_0001.npz", imgs=imgs, gts=gts, spacing=np.array([0.7, 0.7, 3.0]),
        boxes=np.array([[10, 5, 1, 19, 8, 3]]),
    )
    case = read_npz_case(path)
    assert case.layout == "cvpr24" and case.is_3d
    assert case.volume.spacing_mm == (3.0, 0.7, 0.7)
    assert case.boxes == (Box3D(10, 5, 1, 19, 8, 3),)
    assert case.boxes[0] == Box3D.from_mask(gts)
    assert case.volume.modality == "MR"
    assert np.allclose(case.volume.direction, np.eye(3)) and case.volume.origin_mm == (0.0, 0.0, 0.0)


def test_cvpr24_spacing_already_in_array_order_is_kept(tmp_path):
    imgs = np.zeros((4, 8, 8), np.uint8)
    case = read_npz_case(_save(tmp_path / "a.npz", imgs=imgs, spacing=np.array([2.5, 0.8, 0.8])))
    assert case.volume.spacing_mm == (2.5, 0.8, 0.8) and "kept" in case.spacing_rule
    iso = read_npz_case(_save(tmp_path / "b.npz", imgs=imgs, spacing=np.array([1.0, 1.0, 1.0])))
    assert iso.volume.spacing_mm == (1.0, 1.0, 1.0)
    none = read_npz_case(_save(tmp_path / "c.npz", imgs=imgs))
    assert none.volume.spacing_mm == (1.0, 1.0, 1.0) and "assumed" in none.spacing_rule


def test_cvpr24_2d_case(tmp_path):
    imgs = np.zeros((40, 50, 3), np.uint8)
    gts = np.zeros((40, 50), np.uint8)
    gts[10:20, 5:15] = 1
    path = _save(tmp_path / "2DBox_US_0001.npz", imgs=imgs, gts=gts, boxes=np.array([[5, 10, 14, 19]]))
    case = read_npz_case(path)
    assert not case.is_3d and case.volume is None and case.image.shape == (40, 50, 3)
    assert case.boxes == (Box(5, 10, 14, 19),)
    with pytest.raises(InputError, match="2D image"):
        read_volume(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((3, 4, 4), np.uint8)}, "no 'imgs'"),
        ({"imgs": np.zeros((3, 4, 4), np.uint8), "gts": np.zeros((3, 4, 5), np.uint8)}, "'gts' has shape"),
        ({"imgs": np.zeros((3, 4, 4), np.uint8), "boxes": np.zeros((1, 4))}, "'boxes' has shape"),
        ({"imgs": np.zeros((3, 4, 4), np.uint8), "spacing": np.array([1.0, -1.0, 2.0])}, "positive"),
        ({"imgs": np.zeros((3, 4, 4), np.uint8), "origin": np.zeros(3), "direction": np.zeros(9)}, "rotation"),
        ({"imgs": np.zeros((2, 3, 4, 4), np.uint8)}, "imgs' has shape"),
    ],
)
def test_bad_npz_cases(tmp_path, arrays, message):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message):
        read_npz_case(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_corrupt_and_pickled_npz(tmp_path):
    good = _save(tmp_path / "good.npz", imgs=np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:40])
    with pytest.raises(InputError, match="cut.npz"):
        read_npz_case(tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", imgs=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled"):
        read_npz_case(tmp_path / "obj.npz")


def test_write_npz_segs(tmp_path):
    segs = np.zeros((3, 4, 4), np.int64)
    segs[1, 1, 1] = 2
    out = write_npz_segs(segs, tmp_path / "case.npz")
    with np.load(out) as data:
        assert data.files == ["segs"] and data["segs"].dtype == np.uint8 and data["segs"][1, 1, 1] == 2
