"""Compact mask encodings for the wire: a 1-bit PNG (base64) or row-major run lengths, and back."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A boolean (H, W) mask as a 1-bit PNG (white = object); a 512x512 mask is a few hundred bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_from_png_bytes(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L")) > 0


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask over its pixels in row-major order, starting with background."""
    flat = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def mask_from_rle(counts: list[int], height: int, width: int) -> np.ndarray:
    total = int(sum(counts))
    if total != height * width:
        raise ValueError(f"RLE counts cover {total} pixels; the mask has {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(height, width)


def mask_sha1(mask: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def encode_payload(mask: np.ndarray, fmt: str) -> dict | None:
    """The MaskPayload fields for ``fmt`` ("png", "rle"), or None for "none"."""
    h, w = mask.shape
    if fmt == "none":
        return None
    if fmt == "rle":
        return {"encoding": "rle", "width": w, "height": h, "counts": rle_counts(mask)}
    return {"encoding": "png", "width": w, "height": h, "data": base64.b64encode(mask_png_bytes(mask)).decode("ascii")}


def decode_payload(payload: object) -> np.ndarray:
    """A MaskPayload (pydantic model or dict) back to a boolean (H, W) mask."""
    get = payload.get if isinstance(payload, dict) else lambda k: getattr(payload, k)  # type: ignore[union-attr]
    if get("encoding") == "rle":
        return mask_from_rle(list(get("counts")), int(get("height")), int(get("width")))
    return mask_from_png_bytes(base64.b64decode(get("data")))


def label_png_bytes(labels: np.ndarray) -> bytes:
    """A (H, W) uint8 label map as an 8-bit grayscale PNG holding the label values."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) image as PNG (fast compression: it is for the screen)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
