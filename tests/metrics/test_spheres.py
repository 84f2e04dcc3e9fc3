"""3D spheres with anisotropic spacing (z, y, x) = (2, 0.5, 0.5) mm against analytic surface distances.

Two concentric spheres of radii r and r + delta are delta apart everywhere: NSD steps from 0 to 1 at
tau = delta and HD95 = delta. For a sphere of radius r and its copy shifted by d, a point of the first at
angle theta to the shift lies |sqrt(r^2 - 2 r d cos(theta) + d^2) - r| from the second; cos(theta) is
uniform on [-1, 1] over the sphere's area (Archimedes), which gives the area-weighted distance distribution.
Discretisation on a 2 mm grid moves distances by up to about a voxel, hence the tolerances below.
"""

from __future__ import annotations

import numpy as np
import pytest

from medsam.metrics import hd95, nsd, nsd_challenge

SPACING = (2.0, 0.5, 0.5)
R = 20.0
SHIFT = 10.0
SHAPE = (28, 100, 140)
CENTRE = (27.0, 25.0, 25.0)


def _ball(radius, shift=(0.0, 0.0, 0.0), spacing=SPACING, shape=SHAPE, centre=CENTRE):
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij", sparse=True)
    return (z - centre[0] - shift[0]) ** 2 + (y - centre[1] - shift[1]) ** 2 + (
        x - centre[2] - shift[2]
    ) ** 2 <= radius**2


def _shifted_distances(r=R, d=SHIFT):
    u = np.linspace(-1.0, 1.0, 200_001)
    return np.abs(np.sqrt(r * r - 2 * r * d * u + d * d) - r)


@pytest.fixture(scope="module")
def ref():
    return _ball(R)


def test_concentric_spheres(ref):
    pred = _ball(R + 3.0)
    assert hd95(pred, ref, SPACING) == pytest.approx(3.0, abs=0.5)
    for metric in (nsd, nsd_challenge):
        assert metric(pred, ref, 4.0, SPACING) >= 0.99
        assert metric(pred, ref, 1.0, SPACING) <= 0.05


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_sphere_hd95_and_surface_dice(ref, axis):
    shift = [0.0, 0.0, 0.0]
    shift[axis] = SHIFT
    pred = _ball(R, tuple(shift))
    analytic = _shifted_distances()
    # HD95 within half the coarsest voxel side of the analytic 95th percentile (9.5 mm)
    assert hd95(pred, ref, SPACING) == pytest.approx(np.percentile(analytic, 95), abs=1.0)
    # the surfel-area surface Dice follows the area-weighted distribution whatever the shift's axis
    for tol in (2.0, 5.0):
        assert nsd_challenge(pred, ref, tol, SPACING) == pytest.approx((analytic <= tol).mean(), abs=0.1)


def test_boundary_nsd_counts_voxels_so_anisotropy_weights_faces_unevenly(ref):
    # Documented limit of the boundary-voxel NSD: a boundary voxel on a z-facing surface covers
    # 0.5 x 0.5 mm^2, on an x-facing one 2 x 0.5 mm^2. Shifting along z puts the far-apart parts of the
    # surfaces on z-facing poles, which get 4x the weight, so the count-based NSD reads below the area-based.
    pred_z = _ball(R, (SHIFT, 0.0, 0.0))
    expected = (_shifted_distances() <= 5.0).mean()
    assert nsd(pred_z, ref, 5.0, SPACING) < expected < nsd_challenge(pred_z, ref, 5.0, SPACING) + 0.05


def test_isotropic_spheres_both_conventions_agree_with_analytic():
    spacing, shape, centre = (1.0, 1.0, 1.0), (50, 50, 64), (24.5, 24.5, 24.5)
    ref = _ball(R, spacing=spacing, shape=shape, centre=centre)
    pred = _ball(R, (0.0, 0.0, SHIFT), spacing=spacing, shape=shape, centre=centre)
    analytic = _shifted_distances()
    for tol in (2.0, 5.0):
        a = nsd(pred, ref, tol, spacing)
        b = nsd_challenge(pred, ref, tol, spacing)
        assert a == pytest.approx((analytic <= tol).mean(), abs=0.06)
        assert a == pytest.approx(b, abs=0.05)
    assert hd95(pred, ref, spacing) == pytest.approx(np.percentile(analytic, 95), abs=0.5)
