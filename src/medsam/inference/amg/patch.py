"""A mask stored as its tight box and the pixels inside it: many candidate masks of a large image fit in
memory, and overlaps are computed on the few pixels two boxes share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from medsam.inference.amg.filters import masks_to_boxes


@dataclass(frozen=True)
class MaskPatch:
    """box: (x0, y0, x1, y1) inclusive in the image frame; pixels: (y1-y0+1, x1-x0+1) bool; image_hw: (H, W)."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray
    image_hw: tuple[int, int]

    @classmethod
    def from_mask(cls, mask: np.ndarray, offset_xy: tuple[int, int] = (0, 0), image_hw: tuple[int, int] | None = None) -> "MaskPatch | None":
        """Cut a (h, w) mask to its box; ``offset_xy`` places it in a larger image of ``image_hw``.
        An empty mask gives None."""
        mask = np.asarray(mask, dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[None])[0])
        if x1 < x0:
            return None
        ox, oy = offset_xy
        hw = image_hw if image_hw is not None else mask.shape
        return cls((x0 + ox, y0 + oy, x1 + ox, y1 + oy), mask[y0 : y1 + 1, x0 : x1 + 1].copy(), (int(hw[0]), int(hw[1])))

    @cached_property
    def area(self) -> int:
        return int(self.pixels.sum())

    def to_mask(self) -> np.ndarray:
        h, w = self.image_hw
        out = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0 : y1 + 1, x0 : x1 + 1] = self.pixels
        return out

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(K, 2) points (x, y) -> (K,) bool: the pixel under each point is in the mask."""
        pts = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
        x0, y0, x1, y1 = self.box
        inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
        out = np.zeros(len(pts), dtype=bool)
        out[inside] = self.pixels[pts[inside, 1] - y0, pts[inside, 0] - x0]
        return out

    def intersection(self, other: "MaskPatch") -> int:
        ax0, ay0, ax1, ay1 = self.box
        bx0, by0, bx1, by1 = other.box
        x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
        if x1 < x0 or y1 < y0:
            return 0
        a = self.pixels[y0 - ay0 : y1 - ay0 + 1, x0 - ax0 : x1 - ax0 + 1]
        b = other.pixels[y0 - by0 : y1 - by0 + 1, x0 - bx0 : x1 - bx0 + 1]
        return int(np.count_nonzero(a & b))

    def iou(self, other: "MaskPatch") -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union else 0.0
