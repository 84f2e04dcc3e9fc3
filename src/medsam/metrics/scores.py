"""All metrics of one case in one call, as a typed record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from medsam.metrics._checks import mask_pair, spacing, tolerance
from medsam.metrics.overlap import dice, iou
from medsam.metrics.surface import boundary_distances
from medsam.metrics.surfels import nsd_challenge


@dataclass(frozen=True)
class SegmentationScores:
    """Metrics of one predicted mask against its reference.

    dsc, iou: overlap in [0, 1]. nsd: boundary-voxel NSD at ``tolerance_mm`` (in-plane in 2D).
    nsd_challenge: the official CVPR 2024 score (surfel areas; 2D as a one-slice volume).
    hd95: 95th-percentile Hausdorff distance in mm (pixels without spacing); ``inf`` (or the chosen
    empty value) when exactly one mask is empty.
    """

    dsc: float
    iou: float
    nsd: float
    nsd_challenge: float
    hd95: float
    tolerance_mm: float

    def as_dict(self) -> dict[str, float]:
        """Metric name -> value, for a per-case table row or :meth:`MetricAccumulator.add`."""
        return {k: float(v) for k, v in asdict(self).items() if k != "tolerance_mm"}


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing_mm: Sequence[float] | None = None,
    tolerance_mm: float = 2.0,
    hd95_empty_value: float = math.inf,
) -> SegmentationScores:
    """DSC, IoU, NSD (both conventions) and HD95 of one 2D (y, x) or 3D (z, y, x) mask pair.

    spacing_mm is per array axis in mm (None = 1, i.e. pixels). The boundary distances are computed once
    and shared by NSD and HD95. For 2D masks nsd_challenge uses spacing 1, as the official script does.
    Raises InputError for masks of different shapes or a bad spacing.
    """
    p, r = mask_pair(pred, ref)
    sampling = spacing(p.ndim, spacing_mm)
    tol = tolerance(tolerance_mm)
    distances = boundary_distances(p, r, sampling)
    return SegmentationScores(
        dsc=dice(p, r),
        iou=iou(p, r),
        nsd=distances.nsd(tol),
        nsd_challenge=nsd_challenge(p, r, tol, None if p.ndim == 2 else sampling),
        hd95=distances.hausdorff(95.0, empty_value=hd95_empty_value),
        tolerance_mm=tol,
    )
