"""Outputs of segment-everything: a label map, an overlay with numbered objects, a COCO JSON file.

Instances are numbered 1..N in the order given (the segmenter returns the largest first); the label map
paints them in that order, so a small structure inside a large one stays visible on top of it.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from medsam.io.atomic import atomic_path

if TYPE_CHECKING:
    from medsam.inference.everything import InstanceMask


def label_map(instances: Sequence["InstanceMask"], image_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) labels: instance i (0-based) is i + 1; later instances cover earlier ones. uint8 while the
    labels fit (up to 255 objects), else uint16."""
    dtype = np.uint8 if len(instances) <= 255 else np.uint16
    labels = np.zeros(image_hw, dtype=dtype)
    for i, inst in enumerate(instances):
        labels[inst.mask] = i + 1
    return labels


def distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 colours with hues spread by the golden angle, so neighbours in numbering differ."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8
        out[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.85, value)) * 255)
    return out


def render_everything_overlay(image: np.ndarray, instances: Sequence["InstanceMask"], *, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: each object tinted in its own colour, outlined, and its number written at the
    pixel of its visible part farthest from that part's edge."""
    import cv2
    from PIL import Image, ImageDraw

    from medsam.io.raster import display_rgb, mask_outline

    rgb = display_rgb(image).astype(np.float32)
    h, w = rgb.shape[:2]
    labels = label_map(instances, (h, w)).astype(np.int64)
    colours = distinct_colours(len(instances)).astype(np.float32)
    if len(instances):
        tinted = labels > 0
        rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours[labels[tinted] - 1]
        for i in range(len(instances)):
            rgb[mask_outline(labels == i + 1)] = colours[i]
    canvas = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(8, min(h, w) // 40))
    for i in range(len(instances)):
        visible = (labels == i + 1).astype(np.uint8)
        if not visible.any():
            continue
        dist = cv2.distanceTransform(np.pad(visible, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        text = str(i + 1)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = int(np.clip(x - (right - left) / 2, 0, max(0, w - (right - left))))
        ty = int(np.clip(y - (bottom - top) / 2, 0, max(0, h - (bottom - top))))
        draw.text((tx, ty), text, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def coco_document(
    instances: Sequence["InstanceMask"],
    image_hw: tuple[int, int],
    *,
    file_name: str,
    image_id: int = 1,
    compressed: bool = True,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO-style dict: one image, one annotation per instance (RLE segmentation, bbox x/y/width/height
    over whole pixels, area, score = predicted IoU, stability score, the prompt point), one category."""
    h, w = image_hw
    annotations = []
    for i, inst in enumerate(instances):
        p = inst.to_proposal(i + 1, compressed=compressed)
        ann = {
            "id": p.id,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": p.segmentation,
            "area": p.area,
            "bbox": list(p.bbox),
            "iscrowd": 0,
            "score": p.predicted_iou,
            "predicted_iou": p.predicted_iou,
            "stability_score": p.stability_score,
            "point_coords": [list(pt) for pt in p.point_coords],
            "crop_box": list(p.crop_box),
        }
        if p.prompt_box is not None:
            ann["prompt_box"] = list(p.prompt_box)
        annotations.append(ann)
    return {
        "info": dict(info or {}),
        "images": [{"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "proposal"}],
    }


def write_label_png(labels: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a label map as an 8- or 16-bit PNG (its own dtype), atomically."""
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(labels).save(tmp, format="PNG")
    return Path(path)


def write_rgb_png(rgb: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)


def write_json(document: dict[str, Any], path: str | Path, *, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return Path(path)
