"""One 2D image file in, a mask file (and an overlay) out: the job of `medsam segment`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medsam.errors import PromptError
from medsam.inference.predictor import Predictor
from medsam.io.atomic import check_writable
from medsam.io.raster import read_image, write_mask_png, write_overlay_png
from medsam.types import Box, Points, Prediction


@dataclass(frozen=True)
class SegmentationResult:
    image_path: Path
    mask_path: Path
    overlay_path: Path | None
    prediction: Prediction
    boxes: tuple[Box, ...]
    points: Points | None
    seconds: float


def segment_file(
    predictor: Predictor,
    image_path: str | Path,
    mask_path: str | Path,
    *,
    boxes: Sequence[Box] = (),
    points: Points | None = None,
    overlay_path: str | Path | None = None,
    overwrite: bool = False,
) -> SegmentationResult:
    """Segment the objects given by ``boxes`` (one object each) and/or ``points`` (refining a single object).

    One object is written as a 0/255 mask, several as a label map 1..N. Outputs are checked before any
    work and written atomically.
    """
    start = time.perf_counter()
    if not boxes and points is None:
        raise PromptError("no prompt: give at least one --box x0,y0,x1,y1 or --point x,y,1")
    if points is not None and len(boxes) > 1:
        raise PromptError("points refine one object: give them with a single --box (or without a box)")
    check_writable(mask_path, overwrite=overwrite)
    if overlay_path is not None:
        check_writable(overlay_path, overwrite=overwrite)
    image = read_image(image_path)
    predictor.set_image(image, source=f"image {image_path}")
    prediction = predictor.predict(boxes=list(boxes) or None, points=points).best()
    labels = prediction.label_map()
    mask = labels > 0 if prediction.num_objects == 1 else labels
    write_mask_png(mask, mask_path, overwrite=overwrite)
    if overlay_path is not None:
        drawn_points = [(float(x), float(y), int(l)) for (x, y), l in zip(points.coords, points.labels)] if points else None
        write_overlay_png(image, labels, overlay_path, boxes=[b.as_array() for b in boxes], points=drawn_points, overwrite=overwrite)
    return SegmentationResult(
        Path(image_path), Path(mask_path), Path(overlay_path) if overlay_path else None, prediction,
        tuple(boxes), points, time.perf_counter() - start,
    )
