"""Greedy non-maximum suppression on boxes or masks, in numpy.

Boxes are (x0, y0, x1, y1) pixel boxes with x1/y1 inclusive (the last column/row of the object), so a
box covering one pixel has area 1: area = (x1 - x0 + 1) * (y1 - y0 + 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from medsam.inference.amg.patch import MaskPatch


def box_areas(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0] + 1, 0, None) * np.clip(b[:, 3] - b[:, 1] + 1, 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) inclusive pixel boxes -> (N, M) IoU."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _order(scores: np.ndarray) -> np.ndarray:
    # Highest score first; ties keep their input order so results do not depend on the sort algorithm.
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def nms_boxes(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept, best score first: a box is dropped when its IoU with a kept,
    higher-scoring box is above ``iou_threshold``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = _order(scores)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        order = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """(N, H, W) x (M, H, W) boolean masks -> (N, M) IoU (0 where both are empty)."""
    a = np.asarray(masks_a, dtype=bool).reshape(len(masks_a), -1)
    b = np.asarray(masks_b, dtype=bool).reshape(len(masks_b), -1)
    inter = a.astype(np.float32) @ b.astype(np.float32).T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).astype(np.float64)


def nms_masks(patches: Sequence["MaskPatch"], scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Like :func:`nms_boxes` with the IoU of the masks themselves (given as :class:`MaskPatch`).

    Nested structures whose boxes nearly coincide (a ventricle inside its myocardium ring) survive, which
    box NMS would merge. Pairs whose boxes do not touch are never compared.
    """
    n = len(patches)
    boxes = np.array([p.box for p in patches], dtype=np.float64).reshape(-1, 4)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in _order(scores):
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed[i] = True
        rest = np.flatnonzero(~suppressed)
        if rest.size == 0:
            break
        rest = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] > 0]
        for j in rest:
            if patches[i].iou(patches[j]) > iou_threshold:
                suppressed[j] = True
    return np.asarray(keep, dtype=np.int64)
