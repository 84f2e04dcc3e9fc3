"""DSC and IoU on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.metrics import dice, iou

from ._shapes import square


def test_squares_offset_by_two_pixels_in_x():
    # 10x10 squares, columns 10..19 and 12..21: overlap 10 x 8 = 80, union 120.
    ref, pred = square(10, 10), square(10, 12)
    assert dice(pred, ref) == pytest.approx(2 * 80 / 200)  # 0.8
    assert iou(pred, ref) == pytest.approx(80 / 120)


def test_squares_offset_diagonally():
    # offset (2, 2): overlap 8 x 8 = 64, union 200 - 64 = 136.
    ref, pred = square(10, 10), square(12, 12)
    assert dice(pred, ref) == pytest.approx(128 / 200)
    assert iou(pred, ref) == pytest.approx(64 / 136)


def test_cubes_3d_and_any_nonzero_dtype():
    ref = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros((6, 6, 6), np.uint8)
    ref[1:5, 1:5, 1:5] = 255  # 64 voxels
    pred[1:5, 1:5, 2:6] = 1  # 64 voxels, overlap 4 x 4 x 3 = 48
    assert dice(pred, ref) == pytest.approx(96 / 128)
    assert iou(pred, ref) == pytest.approx(48 / 80)


def test_symmetric():
    ref, pred = square(10, 10), square(13, 11, size=7)
    assert dice(pred, ref) == dice(ref, pred)
    assert iou(pred, ref) == iou(ref, pred)


@pytest.mark.parametrize("dims", [2, 3])
def test_empty_masks(dims):
    empty = np.zeros((8,) * dims, bool)
    full = empty.copy()
    full[(slice(2, 5),) * dims] = True
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and iou(full, empty) == 0.0


def test_bad_shapes_are_input_errors():
    with pytest.raises(InputError, match="differ"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="2D .* or 3D"):
        iou(np.zeros(4), np.zeros(4))
    with pytest.raises(InputError, match="dimensions"):
        dice(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))
