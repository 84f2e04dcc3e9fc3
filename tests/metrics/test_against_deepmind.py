"""The challenge NSD against DeepMind's surface-distance package, the one the CVPR 2024 evaluation uses.

Skips when the package (PyPI ``surface-distance``) is not installed; it is only a test dependency.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from medsam.metrics import nsd_challenge

sd = pytest.importorskip("surface_distance", reason="DeepMind's surface-distance is not installed")


def _reference(pred, ref, tol, spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package uses deprecated scipy namespaces
        try:
            d = sd.compute_surface_distances(ref.astype(bool), pred.astype(bool), list(spacing))
        except AttributeError as exc:  # a numpy/scipy name the package relies on was removed
            pytest.skip(f"surface-distance does not run with this numpy/scipy: {exc}")
        return float(sd.compute_surface_dice_at_tolerance(d, tol))


def _masks(rng, shape):
    a = ndimage.binary_opening(rng.random(shape) > 0.35)
    b = rng.random(shape) > 0.6
    a[(slice(1, 3),) * len(shape)] = True  # never empty: the package divides by zero there
    b[(slice(0, 2),) * len(shape)] = True
    return a, b


@pytest.mark.parametrize("seed", range(6))
def test_random_3d_masks_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    pred, ref = _masks(rng, (7, 11, 9))
    spacing = (2.5, 0.6, 0.8)
    for tol in (0.5, 1.0, 2.0, 3.0):
        assert nsd_challenge(pred, ref, tol, spacing) == pytest.approx(_reference(pred, ref, tol, spacing), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_2d_masks_as_the_challenge_script_does(seed):
    rng = np.random.default_rng(100 + seed)
    pred, ref = _masks(rng, (23, 17))
    for tol in (0.0, 1.0, 2.0):
        expected = _reference(pred[..., None], ref[..., None], tol, (1.0, 1.0, 1.0))
        assert nsd_challenge(pred, ref, tol) == pytest.approx(expected, abs=1e-12)


def test_shifted_ellipse_2d():
    yy, xx = np.mgrid[:120, :160]
    ref = ((yy - 60) / 35) ** 2 + ((xx - 80) / 50) ** 2 <= 1
    pred = ((yy - 63) / 33) ** 2 + ((xx - 86) / 52) ** 2 <= 1
    expected = _reference(pred[..., None], ref[..., None], 2.0, (1.0, 1.0, 1.0))
    assert nsd_challenge(pred, ref, 2.0) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.7)])
def test_surfel_area_table_matches_for_all_256_codes(spacing):
    from medsam.metrics.surfels import _surfel_area_table

    theirs = sd.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    ours = _surfel_area_table(spacing)
    for code in range(256):
        # their kernel gives corner (a, b, c) the bit 128 >> (4a + 2b + c); ours gives it 1 << (4a + 2b + c)
        their_code = sum(128 >> k for k in range(8) if code >> k & 1)
        assert ours[code] == pytest.approx(theirs[their_code], abs=1e-12), code
