"""A montage PNG of key slices with the labels outlined, for people to look at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from medsam.errors import OutputError
from medsam.io.atomic import atomic_path, check_writable
from medsam.types import Volume


def montage_slices(labels: np.ndarray, max_slices: int = 9) -> list[int]:
    """Up to ``max_slices`` slice indices spread evenly over the z range that holds labels
    (over the whole volume when the labels are empty), first and last included."""
    labels = np.asarray(labels)
    depth = labels.shape[0]
    zs = np.flatnonzero(labels.reshape(depth, -1).any(axis=1))
    low, high = (int(zs[0]), int(zs[-1])) if zs.size else (0, depth - 1)
    count = max(1, min(int(max_slices), high - low + 1))
    return sorted({int(round(v)) for v in np.linspace(low, high, count)})


def _tile_scale(height: int, width: int, target: int) -> float:
    longest = max(height, width)
    if longest < target // 2:  # small slices: enlarge by a whole factor so pixels stay square blocks
        return float(max(1, target // longest))
    return min(1.0, target / longest)


def render_montage(
    image: np.ndarray | Volume,
    labels: np.ndarray,
    *,
    max_slices: int = 9,
    tile_size: int = 256,
    window: str = "auto",
    slice_names: Mapping[int, int | str] | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 grid of key slices, each label outlined in its colour and the slice index written.

    image: (z, y, x) uint8, or any volume/array (it is windowed with ``window`` first, see
    ``medsam.preprocess.intensity.apply_window``).
    slice_names: what to write for slice z (default z itself), e.g. the stored slice index of a view slice.
    """
    import cv2
    from PIL import Image, ImageDraw

    from medsam.io.raster import colour_for, mask_outline
    from medsam.preprocess.intensity import apply_window

    array = image.array if isinstance(image, Volume) else np.asarray(image)
    labels = np.asarray(labels)
    if array.ndim != 3 or labels.shape != array.shape:
        raise OutputError(f"montage: labels {labels.shape} and volume {array.shape} must be the same (z, y, x) shape")
    gray = array if array.dtype == np.uint8 else apply_window(image, window)
    zs = montage_slices(labels, max_slices)
    h, w = array.shape[1:]
    scale = _tile_scale(h, w, tile_size)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    cols = math.ceil(math.sqrt(len(zs)))
    rows = math.ceil(len(zs) / cols)
    gap = 4
    canvas = np.zeros((rows * (th + gap) - gap, cols * (tw + gap) - gap, 3), dtype=np.uint8)
    values = [int(v) for v in np.unique(labels) if v != 0]
    tiles = []
    for i, z in enumerate(zs):
        interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
        tile = cv2.resize(gray[z], (tw, th), interpolation=interp)
        rgb = np.repeat(tile[:, :, None], 3, axis=2)
        lab = cv2.resize(labels[z].astype(np.uint16), (tw, th), interpolation=cv2.INTER_NEAREST)
        for value in values:
            edge = mask_outline(lab == value)
            if max(th, tw) >= 384:  # thicken on large tiles so the outline stays visible
                edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
            rgb[edge] = colour_for(value)
        r, c = divmod(i, cols)
        canvas[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = rgb
        tiles.append((r, c, z))
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for r, c, z in tiles:
        x0, y0 = c * (tw + gap) + 3, r * (th + gap) + 2
        name = slice_names.get(z, z) if slice_names is not None else z
        draw.text((x0 + 1, y0 + 1), f"z={name}", fill=(0, 0, 0))
        draw.text((x0, y0), f"z={name}", fill=(255, 255, 0))
    return np.asarray(picture)


def write_montage(
    volume_uint8: np.ndarray | Volume,
    labels: np.ndarray,
    path: str | Path,
    *,
    max_slices: int = 9,
    tile_size: int = 256,
    slice_names: Mapping[int, int | str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the montage of :func:`render_montage` as PNG (atomic): up to ``max_slices`` slices spread
    through the labels' z range, outlines in each label's colour."""
    from PIL import Image

    check_writable(path, overwrite=overwrite)
    picture = render_montage(volume_uint8, labels, max_slices=max_slices, tile_size=tile_size, slice_names=slice_names)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)
