"""Label maps for the volume writers: checks, and each label's name and colour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from medsam.errors import OutputError


@dataclass(frozen=True)
class SegmentLabel:
    """One labelled object: its value in the label map, a name people read, and an RGB display colour."""

    value: int
    name: str
    colour: tuple[int, int, int]


def palette_colour(value: int) -> tuple[int, int, int]:
    """The toolkit's display colour of label ``value`` (the same as the 2D overlays)."""
    from medsam.io.raster import colour_for

    return colour_for(int(value))


def as_label_array(labels: np.ndarray, shape: tuple[int, ...], *, what: str = "labels") -> np.ndarray:
    """Check a (z, y, x) label map against the reference grid; return it as uint8 (or uint16 when needed).

    bool becomes 0/1. Negative, fractional or NaN labels, and shape mismatches, are OutputErrors.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise OutputError(f"{what}: shape {labels.shape} differs from the reference volume's {tuple(shape)} (z, y, x)")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise OutputError(f"{what}: labels must be whole numbers; got fractional or NaN values")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise OutputError(f"{what}: unsupported label type {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise OutputError(f"{what}: labels cannot be negative")
    top = int(labels.max()) if labels.size else 0
    if top > 65535:
        raise OutputError(f"{what}: label {top} is larger than 65535")
    return labels.astype(np.uint8 if top < 256 else np.uint16, copy=False)


def segment_labels(
    labels: np.ndarray, names: Mapping[int, str] | Sequence[str] | None = None
) -> tuple[SegmentLabel, ...]:
    """The non-zero labels present in ``labels``, ascending, with names and colours.

    names: {value: name}, or a sequence where names[i] belongs to label i + 1; missing -> "label <value>".
    """
    present = [int(v) for v in np.unique(labels) if v != 0]
    out = []
    for value in present:
        if isinstance(names, Mapping):
            name = names.get(value)
        elif names is not None and 0 <= value - 1 < len(names):
            name = names[value - 1]
        else:
            name = None
        out.append(SegmentLabel(value, str(name) if name else f"label {value}", palette_colour(value)))
    return tuple(out)
