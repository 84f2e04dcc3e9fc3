"""Which pixels are worth a prompt: the body or field of view, told from intensity alone.

Medical images have a background that is one flat value: air around a CT or MR body, the black frame
around an endoscope's circle or an ultrasound fan, the dark slide around cells. Prompts there only return
the background itself, so they are not spent. The rule, in order:

1. ``gray``: the display-range image (0..255) averaged over colour channels, median-filtered
   (``smooth_px``) so speckle and noise do not count as structure.
2. The reference background value is the median of the image's outer frame (``border_frac`` of each side).
   If fewer than ``min_border_agreement`` of the frame pixels lie within ``tolerance`` of it, the frame is
   not background (the image is cropped inside the body, or a photo): every pixel counts as foreground.
3. Background = the pixels within ``tolerance`` grey levels of the reference that are connected to the
   frame. A second layer is added when that background encloses a single region (95% of the rest in one
   piece: a scanner's circular field of view) whose ring just inside (``ring_px`` wide) is uniform again
   (``fov_ring_agreement`` of it within ``tolerance``; a body's own rim is far less even) around a value darker than the rest's 75th percentile by more than ``tolerance``: the air inside the
   field of view, when the window maps it above the black outside the circle. That layer is the pixels
   within ``tolerance`` of the ring's value connected to the ring. Foreground is the rest.
4. Specks smaller than ``min_component_frac`` of the image are dropped; the rest is grown by
   ``margin_frac`` of the longer side (so points on an organ's rim still count) and its holes are filled
   (lungs and bowel gas inside the body are body, not background).
5. If less than ``min_foreground_frac`` of the image is left, the rule is not trusted: all foreground.

``ForegroundMask.reason`` says which case applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BackgroundRule:
    tolerance: float = 20.0
    border_frac: float = 0.02
    min_border_agreement: float = 0.6
    smooth_px: int = 5
    ring_px: int = 3
    fov_ring_agreement: float = 0.9
    margin_frac: float = 0.01
    min_component_frac: float = 0.0002
    min_foreground_frac: float = 0.01


@dataclass(frozen=True)
class ForegroundMask:
    """mask: (H, W) bool, True where prompts may go. reference: the background grey level (None when the
    rule found no background). reason: "background found", "background and field of view found",
    "border not uniform" or "foreground too small"."""

    mask: np.ndarray
    reference: float | None
    reason: str

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def gray_display(image: np.ndarray) -> np.ndarray:
    """(H, W[, C]) image in display range 0..255 -> (H, W) float32 grey (mean of up to 3 channels)."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].astype(np.float32).mean(axis=2)
    return image.astype(np.float32)


def foreground_mask(display: np.ndarray, rule: BackgroundRule = BackgroundRule()) -> ForegroundMask:
    """Apply the rule of the module docstring to a display-range (0..255) image."""
    import cv2
    from scipy import ndimage

    gray = gray_display(display)
    h, w = gray.shape
    everything = np.ones((h, w), dtype=bool)
    k = int(rule.smooth_px) | 1  # odd kernel
    if k > 1 and min(h, w) > k:
        gray = cv2.medianBlur(np.clip(gray, 0, 255).astype(np.uint8), k).astype(np.float32)
    frame = max(1, int(round(rule.border_frac * min(h, w))))
    border = np.concatenate(
        [gray[:frame].ravel(), gray[-frame:].ravel(), gray[:, :frame].ravel(), gray[:, -frame:].ravel()]
    )
    reference = float(np.median(border))
    if np.mean(np.abs(border - reference) <= rule.tolerance) < rule.min_border_agreement:
        return ForegroundMask(everything, None, "border not uniform")
    seed = np.zeros((h, w), dtype=bool)
    seed[:frame], seed[-frame:], seed[:, :frame], seed[:, -frame:] = True, True, True, True
    background = _connected_to(np.abs(gray - reference) <= rule.tolerance, seed)
    reason = "background found"
    if _one_region(~background):
        ring = _ring(background, rule.ring_px)
        values = gray[ring]
        inner = float(np.median(values))
        upper_rest = float(np.percentile(gray[~background], 75))
        uniform = np.mean(np.abs(values - inner) <= rule.tolerance) >= rule.fov_ring_agreement
        if uniform and abs(inner - reference) > rule.tolerance and inner < upper_rest - rule.tolerance:
            background |= _connected_to(np.abs(gray - inner) <= rule.tolerance, ring)
            reason = "background and field of view found"
    fg = ~background
    min_px = rule.min_component_frac * h * w
    if min_px >= 1 and fg.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
        big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_px) + 1
        fg = np.isin(labels, big)
    margin = int(round(rule.margin_frac * max(h, w)))
    if margin > 0 and fg.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        fg = cv2.dilate(fg.astype(np.uint8), kernel).astype(bool)
    fg = ndimage.binary_fill_holes(fg)
    if fg.mean() < rule.min_foreground_frac:
        return ForegroundMask(everything, reference, "foreground too small")
    return ForegroundMask(fg, reference, reason)


def _connected_to(candidate: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``candidate`` that touch ``seed``."""
    import cv2

    n, labels = cv2.connectedComponents(candidate.astype(np.uint8), connectivity=8)
    hit = np.unique(labels[seed & candidate])
    hit = hit[hit > 0]
    return np.isin(labels, hit) if hit.size else np.zeros_like(candidate, dtype=bool)


def _ring(region: np.ndarray, width: int) -> np.ndarray:
    """Pixels outside ``region`` within ``width`` pixels of it."""
    import cv2

    if not region.any():
        return np.zeros_like(region)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & ~region


def _one_region(region: np.ndarray, share: float = 0.95) -> bool:
    """True when the largest 8-connected component of ``region`` holds at least ``share`` of it."""
    import cv2

    if not region.any():
        return False
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return bool(areas.max() >= share * areas.sum())
