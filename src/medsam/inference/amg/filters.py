"""Mask quality filters: stability score, tight boxes, small holes and islands, crop-edge test."""

from __future__ import annotations

from typing import Any

import numpy as np


def stability_score(logits: Any, threshold: float = 0.0, offset: float = 1.0) -> Any:
    """IoU of the mask cut at ``threshold + offset`` with the mask cut at ``threshold - offset``.

    logits: (..., H, W) numpy array or torch tensor. The high cut lies inside the low cut, so the IoU is
    count(> t + o) / count(> t - o): 1 for a mask whose edges are sharp in the logits, lower when a small
    change of the threshold moves its border. An empty low cut scores 0.
    """
    high = (logits > threshold + offset).sum(axis=(-2, -1)) if isinstance(logits, np.ndarray) else (
        (logits > threshold + offset).sum(dim=(-2, -1))
    )
    low = (logits > threshold - offset).sum(axis=(-2, -1)) if isinstance(logits, np.ndarray) else (
        (logits > threshold - offset).sum(dim=(-2, -1))
    )
    if isinstance(logits, np.ndarray):
        high, low = high.astype(np.float64), low.astype(np.float64)
        return np.divide(high, low, out=np.zeros_like(high), where=low > 0)
    high, low = high.float(), low.float()
    return high / low.clamp(min=1.0)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) tight inclusive boxes (x0, y0, x1, y1); an empty mask gets (0, 0, -1, -1)."""
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    out = np.zeros((n, 4), dtype=np.int64)
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    has = rows.any(axis=1)
    out[:, 1] = np.argmax(rows, axis=1)
    out[:, 3] = h - 1 - np.argmax(rows[:, ::-1], axis=1)
    out[:, 0] = np.argmax(cols, axis=1)
    out[:, 2] = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    out[~has] = (0, 0, -1, -1)
    return out


def remove_small_regions(mask: np.ndarray, min_area: float) -> tuple[np.ndarray, bool]:
    """Fill holes smaller than ``min_area`` pixels, then drop islands smaller than it.

    Holes are background components (4-connected) of fewer than ``min_area`` pixels that do not reach the
    array's border (so on a mask cut to its tight box, a notch open to the outside is not a hole); islands are mask
    components (8-connected) of fewer than ``min_area`` pixels; when every island is small the largest one
    stays, so a small object is never erased. Returns the mask and whether anything changed.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if min_area <= 0 or not mask.any():
        return mask, False
    changed = False
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
    small = small[~np.isin(small, edge)]
    if small.size:
        mask = mask | np.isin(labels, small)
        changed = True
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.size > 1:
        keep = np.flatnonzero(areas >= min_area) + 1
        if keep.size == 0:
            keep = np.array([int(np.argmax(areas)) + 1])
        if keep.size < areas.size:
            mask = np.isin(labels, keep)
            changed = True
    return mask, changed


def near_crop_edge(
    boxes: np.ndarray, crop_box: tuple[int, int, int, int], image_hw: tuple[int, int], tolerance: float = 20.0
) -> np.ndarray:
    """(N,) bool: the box (image frame, inclusive) reaches an edge of the crop that is not an image edge.

    crop_box is (x0, y0, x1, y1) with x1/y1 exclusive (a slice of the image). Such masks are probably cut
    by the crop and are left to the larger crops.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = image_hw
    cx0, cy0, cx1, cy1 = crop_box
    crop_edges = np.array([cx0, cy0, cx1 - 1, cy1 - 1], dtype=np.float64)
    image_edges = np.array([0, 0, w - 1, h - 1], dtype=np.float64)
    at_crop = np.abs(boxes - crop_edges) <= tolerance
    at_image = np.abs(crop_edges - image_edges) <= 0.5
    return np.any(at_crop & ~at_image[None, :], axis=1)
