"""Surfel areas and the challenge-compatible NSD on hand-computed cases.

Surfels are the marching-cubes pieces of the level-1/2 surface in each 2x2x2 block of voxel centres.
Hand values at unit spacing: one cut-off corner is a triangle with sides sqrt(2)/2, area sqrt(3)/8; two
neighbouring corners give a rectangle 1 x sqrt(2)/2; a full face gives a unit square.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.metrics import dice, nsd, nsd_challenge, surfel_distances
from medsam.metrics.surfels import _surfel_area_table, neighbour_codes

from ._shapes import square


def _code(corners):
    return sum(1 << (4 * a + 2 * b + c) for a, b, c in corners)


def test_unit_spacing_class_areas():
    table = _surfel_area_table((1.0, 1.0, 1.0))
    assert table[0] == 0.0 and table[255] == 0.0
    assert table[_code([(0, 0, 0)])] == pytest.approx(math.sqrt(3) / 8)
    assert table[_code([(0, 0, 0), (0, 0, 1)])] == pytest.approx(math.sqrt(2) / 2)
    assert table[_code([(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)])] == pytest.approx(1.0)
    # a corner and its three neighbours: a regular hexagon of side sqrt(2)/2
    assert table[_code([(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)])] == pytest.approx(3 * math.sqrt(3) / 4)
    # four corners, no two neighbours: four separate corner triangles
    assert table[_code([(0, 0, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1)])] == pytest.approx(math.sqrt(3) / 2)


def test_table_is_complement_symmetric_and_rotation_invariant():
    table = _surfel_area_table((1.0, 1.0, 1.0))
    for code in range(256):
        assert table[code] == pytest.approx(table[255 - code])
        corners = [(k >> 2 & 1, k >> 1 & 1, k & 1) for k in range(8) if code >> k & 1]
        for perm in itertools.permutations(range(3)):
            assert table[_code([tuple(c[p] for p in perm) for c in corners])] == pytest.approx(table[code])


def _box_surface(n, s):
    """Surfel area of an n0 x n1 x n2 voxel box at spacing s: faces, edges, corners of the surfel surface."""
    (n0, n1, n2), (s0, s1, s2) = n, s
    faces = 2 * ((n1 - 1) * (n2 - 1) * s1 * s2 + (n0 - 1) * (n2 - 1) * s0 * s2 + (n0 - 1) * (n1 - 1) * s0 * s1)
    edges = 4 * (
        (n0 - 1) * s0 * math.hypot(s1, s2) / 2 + (n1 - 1) * s1 * math.hypot(s0, s2) / 2
        + (n2 - 1) * s2 * math.hypot(s0, s1) / 2
    )
    corners = 8 * math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8
    return faces + edges + corners


@pytest.mark.parametrize("n", [(1, 1, 1), (3, 4, 5)])
@pytest.mark.parametrize("s", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.7)])
def test_surface_area_of_a_box(n, s):
    mask = np.zeros(tuple(k + 4 for k in n), bool)
    mask[2 : 2 + n[0], 2 : 2 + n[1], 2 : 2 + n[2]] = True
    d = surfel_distances(mask, mask, s)
    assert d.areas_ref_mm2.sum() == pytest.approx(_box_surface(n, s))
    assert np.all(d.distances_ref_to_pred_mm == 0)


def test_neighbour_codes_of_one_voxel():
    codes = neighbour_codes(np.ones((1, 1, 1), bool))
    assert codes.shape == (2, 2, 2)
    # each of the 8 cubes around the voxel has exactly one inside corner, a different one each
    assert sorted(codes.ravel().tolist()) == [1 << k for k in range(8)]


def test_single_pixels_three_apart_as_one_slice_volumes():
    # Each pixel becomes 8 corner surfels of equal area at x = x0 - 0.5 and x0 + 0.5 (four each).
    # pred at x0 + 3: its surfels at x0 + 2.5 are 2 from ref's at x0 + 0.5, those at x0 + 3.5 are 3 away.
    ref = np.zeros((5, 9), bool)
    pred = ref.copy()
    ref[2, 2] = True
    pred[2, 5] = True
    assert nsd_challenge(pred, ref, 1.0) == 0.0
    assert nsd_challenge(pred, ref, 2.0) == pytest.approx(0.5)
    assert nsd_challenge(pred, ref, 3.0) == pytest.approx(1.0)


def test_shifted_squares_challenge_vs_boundary():
    # 10x10 squares shifted 3 px in x as one-slice volumes (spacing 1). Surface cubes lie on two layers
    # z = -1/2, +1/2, at x, y = 9.5 .. 19.5 (ref) and x = 12.5 .. 22.5 (pred): per layer 81 unit face
    # cubes, 36 edge cubes (sqrt(2)/2), 4 corner cubes (sqrt(3)/8). Every pred cube with x <= 19.5 sits on
    # a ref cube; x = 20.5, 21.5, 22.5 are 1, 2, 3 away. At tolerance 2 only the column x = 22.5 misses:
    # per layer 9 edge cubes and 2 corner cubes. Symmetric for ref.
    ref, pred = square(10, 10), square(10, 13)
    total = 2 * (81 + 36 * math.sqrt(2) / 2 + 4 * math.sqrt(3) / 8)
    miss2 = 2 * (9 * math.sqrt(2) / 2 + 2 * math.sqrt(3) / 8)
    miss1 = miss2 + 2 * (9 * 1.0 + 2 * math.sqrt(2) / 2)  # plus the column x = 21.5
    assert nsd_challenge(pred, ref, 2.0) == pytest.approx((total - miss2) / total)
    assert nsd_challenge(pred, ref, 1.0) == pytest.approx((total - miss1) / total)
    assert nsd_challenge(pred, ref, 3.0) == pytest.approx(1.0)
    assert nsd(pred, ref, 2.0) == pytest.approx(44 / 72)


@pytest.mark.parametrize("shift", [10, 30])
def test_challenge_nsd_reads_like_overlap_for_a_shifted_ellipse(shift):
    # The notes: the official 2D score behaves almost like an area overlap, far above the boundary NSD.
    yy, xx = np.mgrid[:540, :800]
    ref = ((yy - 270) / 150) ** 2 + ((xx - 400) / 220) ** 2 <= 1
    pred = ((yy - 270) / 150) ** 2 + ((xx - 400 - shift) / 220) ** 2 <= 1
    boundary_nsd, challenge = nsd(pred, ref), nsd_challenge(pred, ref)
    assert boundary_nsd < 0.3
    assert challenge > boundary_nsd + 0.6
    assert challenge == pytest.approx(dice(pred, ref), abs=0.03)


@pytest.mark.parametrize("dims", [2, 3])
def test_challenge_empty_cases(dims):
    empty = np.zeros((7,) * dims, bool)
    obj = empty.copy()
    obj[(slice(2, 5),) * dims] = True
    assert nsd_challenge(empty, empty) == 1.0
    assert nsd_challenge(obj, empty) == 0.0 and nsd_challenge(empty, obj) == 0.0


def test_surfel_distances_need_3d():
    with pytest.raises(InputError, match="3D"):
        surfel_distances(np.ones((4, 4)), np.ones((4, 4)))
