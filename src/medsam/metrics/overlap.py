"""Overlap metrics: Dice similarity coefficient and intersection over union."""

from __future__ import annotations

import numpy as np

from medsam.metrics._checks import mask_pair


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient 2|P ∩ R| / (|P| + |R|) of two 2D or 3D masks (non-zero = foreground).

    Both masks empty gives 1.0 (the prediction correctly finds nothing); one empty gives 0.0.
    Raises InputError when the shapes differ or the masks are not 2D/3D.
    """
    p, r = mask_pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union |P ∩ R| / |P ∪ R| (Jaccard index); both empty gives 1.0, one empty 0.0."""
    p, r = mask_pair(pred, ref)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / union
