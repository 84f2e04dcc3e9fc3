"""Intensity handling in numpy: bring any image to the 0..255 range the SAM family expects."""

from __future__ import annotations

import numpy as np

from medsam.errors import InputError


def rescale_to_uint8_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and map linearly to 0..255 (float32). A flat window gives zeros."""
    image = np.asarray(image, dtype=np.float32)
    span = float(high) - float(low)
    if span <= 0:
        return np.zeros_like(image, dtype=np.float32)
    return (np.clip(image, low, high) - low) * np.float32(255.0 / span)


def percentile_window(
    image: np.ndarray, lower: float = 0.5, upper: float = 99.5, *, nonzero_only: bool = False
) -> tuple[float, float]:
    """The (low, high) intensity window at the given percentiles, optionally over non-zero values only."""
    values = np.asarray(image)
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values.ravel()
    if nonzero_only:
        values = values[values != 0]
    if values.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(values, [lower, upper])
    return float(low), float(high)


def to_display_range(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Bring a 2D image (H, W) or (H, W, C) to values in 0..255.

    uint8 stays as it is (the exact path of the reference pipelines). Other integer types (16-bit PNG,
    TIFF) and floats get a 0.5-99.5 percentile window over the whole image, as MedSAM does for MR.
    NaN or infinite pixels, and constant images, are errors: they cannot give a meaningful mask.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise InputError(f"{source}: the image is empty (shape {image.shape})")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise InputError(
            f"{source}: contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) before segmenting"
        )
    if image.dtype != np.uint8:
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise InputError(f"{source}: unsupported pixel type {image.dtype}; give integer or float pixels")
    if image.max() == image.min():
        raise InputError(
            f"{source}: every pixel has the same value ({image.flat[0]!r}); there is nothing to segment. "
            "Check that the right file or slice was given"
        )
    if image.dtype == np.uint8:
        return image
    low, high = percentile_window(image)
    if high <= low:
        low, high = float(image.min()), float(image.max())
    return rescale_to_uint8_range(image, low, high)
