"""2D raster images: PNG, JPEG, TIFF, BMP in 8 or 16 bits, grayscale, RGB or RGBA; masks and overlays out."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from medsam.errors import InputError
from medsam.io.atomic import atomic_path

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Distinct colours for objects 1..N (cycled), chosen to stay visible on grayscale medical images.
PALETTE = np.array(
    [
        (255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 90), (255, 90, 220), (0, 255, 200),
        (255, 140, 40), (160, 120, 255), (200, 255, 0), (255, 255, 255), (0, 140, 255), (255, 0, 128),
    ],
    dtype=np.uint8,
)


def colour_for(label: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[(label - 1) % len(PALETTE)])  # type: ignore[return-value]


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image as (H, W) or (H, W, 3|4) keeping its bit depth (uint8, uint16, float32).

    Palette and bilevel images become uint8; CMYK and YCbCr become RGB. Unreadable or truncated
    files raise InputError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist (or is not a file)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now so a truncated file fails here, not later
            return _pil_to_array(img, path)
    except UnidentifiedImageError as exc:
        raise InputError(
            f"image {path} is not a readable image (supported: PNG, JPEG, TIFF, BMP; for DICOM/NIfTI/NRRD "
            "use `medsam segment-volume`)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image {path} cannot be decoded ({exc}); the file may be truncated or corrupt") from exc


def _pil_to_array(img: Image.Image, path: Path) -> np.ndarray:
    if getattr(img, "n_frames", 1) > 1:
        raise InputError(
            f"image {path} has {img.n_frames} frames; a 2D image was expected (for stacks use "
            "`medsam segment-volume`, for videos `medsam segment-video`)"
        )
    mode = img.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGBA" if "A" in mode or "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "LA":
        img = img.getchannel("L")
    array = np.asarray(img)
    if mode.startswith("I;16"):
        array = array.astype(np.uint16)
    elif mode == "I":
        array = array.astype(np.int32)
        if array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)
    return np.ascontiguousarray(array)


def _as_label_image(mask: np.ndarray) -> np.ndarray:
    """A boolean mask becomes 0/255; label maps keep their values (uint8 when they fit, else uint16)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"a mask to write must be 2D (H, W), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8) * 255
    if mask.min() < 0:
        raise InputError("a label map cannot hold negative labels")
    return mask.astype(np.uint8) if mask.max() < 256 else mask.astype(np.uint16)


def write_mask_png(mask: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a bool mask as 0/255, or a label map with its label values, as PNG (atomic)."""
    data = _as_label_image(mask)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")
    return Path(path)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """Any 2D image -> (H, W, 3) uint8 for display (16-bit and float are percentile-windowed)."""
    from medsam.preprocess.geometry import to_three_channels
    from medsam.preprocess.intensity import to_display_range

    image = to_display_range(image) if np.asarray(image).dtype != np.uint8 else np.asarray(image)
    return to_three_channels(np.clip(image, 0, 255).astype(np.uint8))


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask that touch the background (4-connectivity)."""
    mask = mask.astype(bool)
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    boxes: Sequence[Sequence[float] | None] | None = None,
    points: Sequence[tuple[float, float, int]] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """(H, W, 3) uint8: each label tinted in its own colour with its outline; boxes[i] drawn in label i+1's
    colour; points drawn as green (positive) or red (negative) dots."""
    rgb = display_rgb(image).astype(np.float32)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise InputError(f"overlay: mask shape {labels.shape} differs from image shape {rgb.shape[:2]}")
    for label in np.unique(labels):
        if label == 0:
            continue
        region = labels == label
        colour = np.array(colour_for(int(label)), dtype=np.float32)
        rgb[region] = (1 - alpha) * rgb[region] + alpha * colour
        rgb[mask_outline(region)] = colour
    canvas = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    for i, box in enumerate(boxes or []):
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            draw.rectangle([x0, y0, x1, y1], outline=colour_for(i + 1), width=width)
    radius = max(2, width * 2)
    for x, y, positive in points or []:
        fill = (40, 220, 40) if positive else (230, 30, 30)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return np.asarray(canvas)


def write_overlay_png(
    image: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    boxes: Sequence[Sequence[float] | None] | None = None,
    points: Sequence[tuple[float, float, int]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the overlay of ``render_overlay`` as PNG (atomic)."""
    rgb = render_overlay(image, labels, boxes=boxes, points=points)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)
