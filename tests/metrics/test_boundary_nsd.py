"""Boundary-voxel NSD and HD95 on hand-computed 2D cases.

Convention: boundary = mask minus its face-connectivity erosion; distances between pixel centres.
A 10x10 square's boundary is its 36-pixel outer ring.

Squares at columns 10..19 (ref) and 12..21 (pred, shifted 2 px in x), rows 10..19 for both.
Distances from the pred ring to the ref ring:
  top and bottom rows: columns 12..19 lie on the ref ring (0) x 16; column 20 -> 1, 21 -> 2 (x 2 rows)
  left column 12, rows 11..18: min(distance to ref top/bottom row, 2 to ref column 10) = 1,2,2,2,2,2,2,1
  right column 21, rows 11..18: 2 to ref column 19 (x 8)
  => 16 zeros, 4 ones, 16 twos; by mirror symmetry the same from ref to pred (72 boundary pixels).
  NSD(0) = 32/72, NSD(1) = 40/72, NSD(2) = NSD(3) = 1; HD95 = 2.
Shift 3 px (pred columns 13..22): top/bottom 7 zeros, then 1, 2, 3; left column 1,2,3,3,3,3,2,1; right 3 x 8
  => 14 zeros, 4 ones, 4 twos, 14 threes per side.
  NSD(0) = 28/72, NSD(1) = 36/72, NSD(2) = 44/72, NSD(3) = 1; HD95 = 3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.metrics import boundary, boundary_distances, hd95, nsd

from ._shapes import square


def test_boundary_of_square_is_its_ring():
    b = boundary(square(10, 10))
    assert b.sum() == 36
    assert b[10, 10:20].all() and b[19, 10:20].all() and b[10:20, 10].all() and b[10:20, 19].all()
    assert not b[11:19, 11:19].any()


def test_object_touching_image_edge_has_a_boundary_there():
    assert boundary(square(0, 0)).sum() == 36


@pytest.mark.parametrize(
    "shift, expected",
    [
        (2, {0: 32 / 72, 1: 40 / 72, 2: 1.0, 3: 1.0}),
        (3, {0: 28 / 72, 1: 36 / 72, 2: 44 / 72, 3: 1.0}),
    ],
)
def test_nsd_of_shifted_squares(shift, expected):
    ref, pred = square(10, 10), square(10, 10 + shift)
    for tol, value in expected.items():
        assert nsd(pred, ref, tolerance_mm=tol) == pytest.approx(value), tol
        assert nsd(ref, pred, tolerance_mm=tol) == pytest.approx(value), tol
    assert hd95(pred, ref) == pytest.approx(float(shift))


def test_distance_histogram_of_two_pixel_shift():
    d = boundary_distances(square(10, 12), square(10, 10))
    values, counts = np.unique(d.pred_to_ref_mm, return_counts=True)
    assert values.tolist() == [0.0, 1.0, 2.0] and counts.tolist() == [16, 4, 16]


def test_anisotropic_pixel_spacing():
    # Same 2 px shift with pixels 1.0 mm tall and 0.5 mm wide: the shift is 1 mm.
    # pred -> ref: 16 zeros; column 20 on top/bottom rows 0.5 mm (2); every other ring pixel 1.0 mm (18):
    # left column pixels are 1 mm from ref column 10 (2 px x 0.5) and >= 1 mm from the ref rows.
    ref, pred = square(10, 10), square(10, 12)
    spacing = (1.0, 0.5)
    assert nsd(pred, ref, 0.5, spacing) == pytest.approx((18 + 18) / 72)
    assert nsd(pred, ref, 1.0, spacing) == pytest.approx(1.0)
    assert hd95(pred, ref, spacing) == pytest.approx(1.0)


def test_identical_masks():
    m = square(5, 7, size=12)
    assert nsd(m, m, tolerance_mm=0) == 1.0
    assert hd95(m, m) == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_empty_cases_are_defined(dims):
    empty = np.zeros((9,) * dims, bool)
    obj = empty.copy()
    obj[(slice(2, 6),) * dims] = True
    assert nsd(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert nsd(empty, obj) == 0.0 and nsd(obj, empty) == 0.0
    assert hd95(empty, obj) == math.inf and hd95(obj, empty) == math.inf
    assert hd95(obj, empty, empty_value=12.5) == 12.5


def test_result_does_not_depend_on_image_size():
    small = nsd(square(10, 13, shape=(40, 40)), square(10, 10, shape=(40, 40)), 1.0)
    large = nsd(square(10, 13, shape=(300, 200)), square(10, 10, shape=(300, 200)), 1.0)
    assert small == large


def test_bad_spacing_and_tolerance():
    a = square(10, 10)
    with pytest.raises(InputError, match="one spacing per array axis"):
        nsd(a, a, 2.0, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="positive"):
        hd95(a, a, (1.0, -1.0))
    with pytest.raises(InputError, match="tolerance"):
        nsd(a, a, -1.0)


@pytest.mark.parametrize("dims, sampling", [(2, (1.0, 1.0)), (2, (0.7, 1.3)), (3, (2.5, 0.6, 0.8))])
def test_nearest_distances_equal_the_distance_transform(dims, sampling):
    from scipy import ndimage

    from medsam.metrics._checks import nearest_distances

    rng = np.random.default_rng(dims)
    shape = (30, 40) if dims == 2 else (9, 20, 17)
    sources, targets = rng.random(shape) > 0.7, rng.random(shape) > 0.97
    expected = ndimage.distance_transform_edt(~targets, sampling=sampling)[sources]
    assert np.array_equal(nearest_distances(sources, targets, sampling), np.round(expected, 9))
    assert np.all(np.isinf(nearest_distances(sources, np.zeros(shape, bool), sampling)))


def test_ties_along_different_axes_meet_the_tolerance_alike():
    # 4 x 0.6 mm in y and 3 x 0.8 mm in x are both 2.4 mm, though 3 * 0.8 == 2.4000000000000004 in floats
    ref = np.zeros((12, 12), bool)
    ref[6, 6] = True
    pred = ref.copy()
    pred[6, 6] = False
    pred[2, 6] = pred[6, 9] = True
    assert nsd(pred, ref, tolerance_mm=2.4, spacing_mm=(0.6, 0.8)) == 1.0


def test_both_distance_paths_agree():
    # dense voxels take the distance transform, sparse ones the k-d tree: same values either way
    from medsam.metrics._checks import nearest_distances

    rng = np.random.default_rng(9)
    sampling = (2.5, 0.6, 0.8)
    dense_s, dense_t = rng.random((9, 20, 17)) > 0.5, rng.random((9, 20, 17)) > 0.6
    sparse_s = np.zeros((30, 60, 60), bool)
    sparse_t = np.zeros_like(sparse_s)
    sparse_s[dense_s.nonzero()] = True
    sparse_t[dense_t.nonzero()] = True
    assert 8 * (dense_s.sum() + dense_t.sum()) >= dense_s.size
    assert 8 * (sparse_s.sum() + sparse_t.sum()) < sparse_s.size
    dense = nearest_distances(dense_s, dense_t, sampling)
    assert np.array_equal(dense, nearest_distances(sparse_s, sparse_t, sampling))
