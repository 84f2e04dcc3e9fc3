"""Segmentation metrics in pure numpy/scipy: overlap, surface distances, and per-case accumulators.

Masks are 2D (y, x) or 3D (z, y, x) arrays, non-zero = foreground; ``spacing_mm`` is per array axis.
Conventions:
- :func:`nsd` / :func:`hd95`: boundary voxels (mask minus its face-connectivity erosion), Euclidean
  distances between voxel centres in mm; in 2D the in-plane contour.
- :func:`nsd_challenge`: the official CVPR 2024 score (surfel areas; a 2D mask as a one-slice volume).
- Empty masks: both empty -> DSC/IoU/NSD 1, HD95 0; one empty -> DSC/IoU/NSD 0, HD95 inf (configurable).
"""

from medsam.metrics.overlap import dice, iou
from medsam.metrics.scores import SegmentationScores, score_case
from medsam.metrics.summary import CaseRecord, MetricAccumulator, Summary, bootstrap_ci
from medsam.metrics.surface import BoundaryDistances, boundary, boundary_distances, hd95, nsd
from medsam.metrics.surfels import SurfelDistances, nsd_challenge, surfel_distances

__all__ = [
    "BoundaryDistances",
    "CaseRecord",
    "MetricAccumulator",
    "SegmentationScores",
    "Summary",
    "SurfelDistances",
    "boundary",
    "boundary_distances",
    "bootstrap_ci",
    "dice",
    "hd95",
    "iou",
    "nsd",
    "nsd_challenge",
    "score_case",
    "surfel_distances",
]
