"""CVPR25 npz cases: class boxes read from their object array without running arbitrary pickles."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.io.cvpr25 import is_cvpr25_case, read_cvpr25_case
from medsam.types import Box


def cvpr25_case(path, boxes, imgs=None):
    imgs = np.zeros((10, 32, 40), np.uint8) if imgs is None else imgs
    np.savez_compressed(path, imgs=imgs, spacing=np.array([1.0, 0.8, 0.8]), boxes=np.array(boxes, dtype=object))
    return path


def test_boxes_of_every_class_with_numpy_scalars(tmp_path):
    path = cvpr25_case(tmp_path / "CT_case.npz", [
        {"z_min": np.int64(2), "z_max": np.int64(7), "z_mid": np.int64(4), "z_mid_x_min": np.int64(5),
         "z_mid_y_min": np.int64(6), "z_mid_x_max": np.int64(20), "z_mid_y_max": np.int64(22)},
        {"z_min": 0, "z_max": 9, "z_mid_x_min": 1, "z_mid_y_min": 2, "z_mid_x_max": 3, "z_mid_y_max": 4},
    ])
    assert is_cvpr25_case(path)
    case = read_cvpr25_case(path)
    assert case.imgs.shape == (10, 32, 40) and case.spacing == (1.0, 0.8, 0.8)
    first, second = case.boxes
    assert (first.z_min, first.z_max, first.z_mid, first.box) == (2, 7, 4, Box(5, 6, 20, 22))
    assert (second.z_mid, second.box) == (4, Box(1, 2, 3, 4))  # no z_mid: the middle of the extent


def test_a_cvpr24_case_is_not_taken_for_one(tmp_path):
    np.savez(tmp_path / "c24.npz", imgs=np.zeros((4, 8, 8), np.uint8), boxes=np.array([[1, 1, 0, 5, 5, 3]]))
    assert not is_cvpr25_case(tmp_path / "c24.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert not is_cvpr25_case(tmp_path / "junk.npz")


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    array = np.array([{"z_min": 0}, None], dtype=object)
    array[1] = Evil()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as archive:
        archive.writestr("imgs.npy", _npy(np.zeros((2, 4, 4), np.uint8)))
        archive.writestr("boxes.npy", buffer.getvalue())
    assert is_cvpr25_case(tmp_path / "evil.npz")
    with pytest.raises(InputError, match="posix.system is not allowed|os.system is not allowed"):
        read_cvpr25_case(tmp_path / "evil.npz")


def test_malformed_boxes_name_the_file_and_the_box(tmp_path):
    path = cvpr25_case(tmp_path / "bad.npz", [{"z_min": 0, "z_max": 3}])
    with pytest.raises(InputError, match=r"bad.npz: box 1 should be a dict with z_min"):
        read_cvpr25_case(path)
    path = cvpr25_case(tmp_path / "mid.npz", [{"z_min": 2, "z_max": 3, "z_mid": 8, "z_mid_x_min": 1,
                                               "z_mid_y_min": 1, "z_mid_x_max": 5, "z_mid_y_max": 5}])
    with pytest.raises(InputError, match="z_mid 8 lies outside"):
        read_cvpr25_case(path)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
