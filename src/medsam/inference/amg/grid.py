"""Where the prompts go: the point grid, its coarse-to-fine order, crop windows and box anchors.

Points are (x, y) in pixels of the image (or crop) they are made for; boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def unit_grid(n: int) -> np.ndarray:
    """(n*n, 2) points (x, y) at the centres of an n x n tiling of the unit square, row by row."""
    if n < 1:
        raise ValueError(f"a grid needs at least 1 point per side, got {n}")
    centres = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def coarse_to_fine_order(n: int) -> np.ndarray:
    """A permutation of the n*n grid indices (row-major) in which every prefix is spread over the image.

    First the points of the coarsest sub-grid (every n/2-th row and column, roughly), then the points
    that halve its spacing, and so on down to the full grid. Large structures are then met by the first
    prompts and, with progressive sampling, the finer points inside them can be skipped.
    """
    steps = []
    step = 1 << max(0, (n - 1).bit_length() - 1)
    while step >= 1:
        steps.append(step)
        step //= 2
    taken = np.zeros((n, n), dtype=bool)
    order: list[int] = []
    idx = np.arange(n)
    for step in steps:
        sel = idx[(idx % step) == (step // 2)] if step > 1 else idx
        for r in sel:
            for c in sel:
                if not taken[r, c]:
                    taken[r, c] = True
                    order.append(int(r * n + c))
    return np.asarray(order, dtype=np.int64)


def grid_points(image_hw: tuple[int, int], n: int, *, ordered: bool = True) -> np.ndarray:
    """(n*n, 2) pixel points (x, y) of an n x n grid over an image of (H, W), coarse-to-fine when ordered."""
    h, w = image_hw
    pts = unit_grid(n) * np.array([w, h], dtype=np.float64) - 0.5  # pixel centres: 0..W-1
    pts = np.clip(pts, 0, [w - 1, h - 1])
    return pts[coarse_to_fine_order(n)] if ordered else pts


@dataclass(frozen=True)
class CropBox:
    """A window of the image: (x0, y0, x1, y1) with x1/y1 exclusive (``image[y0:y1, x0:x1]``), and its layer
    (0 = the whole image, k = one of 4**k tiles)."""

    x0: int
    y0: int
    x1: int
    y1: int
    layer: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1


def crop_boxes(image_hw: tuple[int, int], layers: int, overlap_ratio: float = 512 / 1500) -> list[CropBox]:
    """The whole image, then for each layer k = 1..layers a 2**k x 2**k tiling with overlapping tiles.

    Neighbouring tiles of layer k overlap by ``overlap_ratio * short_side / 2**(k-1)`` pixels (SAM's
    proportion), and the tiles of a row span the image exactly.
    """
    h, w = image_hw
    boxes = [CropBox(0, 0, w, h, 0)]
    short = min(h, w)
    for layer in range(1, layers + 1):
        per_side = 2**layer
        overlap = overlap_ratio * short * 2 / per_side
        xs = _spans(w, per_side, overlap)
        ys = _spans(h, per_side, overlap)
        for y0, y1 in ys:
            for x0, x1 in xs:
                boxes.append(CropBox(x0, y0, x1, y1, layer))
    return boxes


def _spans(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    size = min(length, int(math.ceil(length / count + overlap)))
    if count == 1:
        return [(0, length)]
    starts = [int(round(i * (length - size) / (count - 1))) for i in range(count)]
    return [(s, s + size) for s in starts]


def anchor_boxes(points: np.ndarray, side_px: float | np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(K, 2) centres -> (K, 4) square boxes of side ``side_px`` (one number, or one per centre) clipped to
    the image (x1/y1 inclusive)."""
    h, w = image_hw
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    half = np.broadcast_to(np.asarray(side_px, dtype=np.float64) / 2.0, (len(pts),))[:, None]
    boxes = np.concatenate([pts - half, pts + half], axis=1)
    return np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1])
