"""Boundary-voxel surface metrics: normalised surface distance (NSD) and the 95th-percentile Hausdorff distance.

Boundary convention (used by :func:`nsd`, :func:`hd95` and :func:`boundary_distances`):

- The boundary of a mask is the set of its voxels that have at least one *face* neighbour outside the
  mask: ``mask & ~binary_erosion(mask, face connectivity)`` (4-neighbourhood in 2D, 6 in 3D). Outside the
  array counts as background, so an object touching the image edge has a boundary there.
- Distances are Euclidean between voxel centres in millimetres, from each boundary voxel of one mask to
  the nearest boundary voxel of the other: the values of ``scipy.ndimage.distance_transform_edt`` with
  ``sampling=spacing_mm`` (rounded to 1e-9 mm), found with a k-d tree. In 2D the boundary is the in-plane
  contour and the tolerance is in pixels when no spacing is given.
- Every boundary voxel weighs the same (counts, not areas). For the surfel-area variant of the official
  CVPR 2024 evaluation see :func:`medsam.metrics.nsd_challenge`.

Empty masks: both empty gives NSD 1.0 and HD95 0.0; exactly one empty gives NSD 0.0 and HD95 ``inf``
(or the ``empty_value`` you pass, e.g. the image diagonal as a finite penalty). No function returns NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from medsam.metrics._checks import mask_pair, nearest_distances, spacing, tolerance, union_crop


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a 2D/3D boolean mask: voxels with a face neighbour outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


@dataclass(frozen=True)
class BoundaryDistances:
    """Directed boundary distances in mm between a prediction and a reference.

    pred_to_ref_mm: for every boundary voxel of the prediction, the distance to the nearest boundary voxel
        of the reference (``inf`` when the reference is empty); ref_to_pred_mm the other way round.
    Compute once with :func:`boundary_distances`, then read several tolerances or percentiles from it.
    """

    pred_to_ref_mm: np.ndarray
    ref_to_pred_mm: np.ndarray

    @property
    def both_empty(self) -> bool:
        return self.pred_to_ref_mm.size == 0 and self.ref_to_pred_mm.size == 0

    def nsd(self, tolerance_mm: float = 2.0) -> float:
        """Share of boundary voxels of both masks within ``tolerance_mm`` (inclusive) of the other boundary."""
        tol = tolerance(tolerance_mm)
        total = self.pred_to_ref_mm.size + self.ref_to_pred_mm.size
        if total == 0:
            return 1.0
        close = int((self.pred_to_ref_mm <= tol).sum()) + int((self.ref_to_pred_mm <= tol).sum())
        return close / total

    def hausdorff(self, percentile: float = 95.0, *, empty_value: float = math.inf) -> float:
        """Max over both directions of the ``percentile``-th percentile of the directed distances (mm).

        Percentiles use numpy's linear interpolation. Both masks empty gives 0.0; one empty gives
        ``empty_value``.
        """
        if self.both_empty:
            return 0.0
        if self.pred_to_ref_mm.size == 0 or self.ref_to_pred_mm.size == 0:
            return float(empty_value)
        return float(
            max(np.percentile(self.pred_to_ref_mm, percentile), np.percentile(self.ref_to_pred_mm, percentile))
        )


def boundary_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float] | None = None
) -> BoundaryDistances:
    """Directed distances between the boundaries of two 2D/3D masks (see the module's convention).

    spacing_mm: voxel size per array axis, (y, x) or (z, y, x), in mm; ``None`` means 1 (pixels).
    Raises InputError for masks of different shapes, not 2D/3D, or a bad spacing.
    """
    p, r = mask_pair(pred, ref)
    sampling = spacing(p.ndim, spacing_mm)
    crop = union_crop(p, r)
    if crop is None:
        return BoundaryDistances(np.zeros(0), np.zeros(0))
    # One voxel of background around the union keeps the boundary identical to the uncropped one
    # (outside the array is background too).
    bp = boundary(np.pad(p[crop], 1))
    br = boundary(np.pad(r[crop], 1))
    return BoundaryDistances(
        pred_to_ref_mm=nearest_distances(bp, br, sampling), ref_to_pred_mm=nearest_distances(br, bp, sampling)
    )


def nsd(
    pred: np.ndarray, ref: np.ndarray, tolerance_mm: float = 2.0, spacing_mm: Sequence[float] | None = None
) -> float:
    """Normalised surface distance (surface Dice) at ``tolerance_mm`` with the boundary-voxel convention.

    NSD = (#pred boundary voxels within tolerance of the ref boundary + #ref boundary voxels within
    tolerance of the pred boundary) / (#pred boundary voxels + #ref boundary voxels), where the boundary is
    the mask minus its face-connectivity erosion and distances are those of
    ``distance_transform_edt(~boundary, sampling=spacing_mm)``; "within" is ``<=``.

    2D masks are scored on their in-plane contour (tolerance in pixels without spacing; 2.0 is the
    CVPR 2024 default). This is *not* the official CVPR 2024 2D score, which treats a 2D mask as a
    one-slice volume: use :func:`medsam.metrics.nsd_challenge` to compare with published numbers.

    Both empty gives 1.0, one empty 0.0.
    """
    return boundary_distances(pred, ref, spacing_mm).nsd(tolerance_mm)


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float] | None = None,
    *,
    empty_value: float = math.inf,
) -> float:
    """95th-percentile Hausdorff distance in mm (pixels without spacing), boundary-voxel convention.

    max(P95 of pred->ref boundary distances, P95 of ref->pred boundary distances). Both masks empty gives
    0.0; exactly one empty gives ``empty_value`` (default ``inf``; pass a finite penalty such as the image
    diagonal in mm if a table must average it). Never NaN.
    """
    return boundary_distances(pred, ref, spacing_mm).hausdorff(95.0, empty_value=empty_value)
