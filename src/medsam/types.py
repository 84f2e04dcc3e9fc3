"""Typed values that cross room boundaries.

Conventions everywhere in the toolkit:
- points are (x, y); boxes are (x0, y0, x1, y1) in pixels of the original image, x1/y1 inclusive
  of the object's last pixel as the official tools pass them;
- arrays are indexed (z, y, x) for volumes and (y, x[, channel]) for images;
- physical quantities carry their unit in the name (``spacing_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from medsam.errors import PromptError


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (x0, y0, x1, y1) in original-image pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_sequence(cls, values: Sequence[float] | str, *, source: str = "box") -> "Box":
        """Build from 4 numbers or a "x0,y0,x1,y1" string; a wrong count is a PromptError."""
        if isinstance(values, str):
            parts = [p for p in values.replace(" ", "").split(",") if p != ""]
            try:
                values = [float(p) for p in parts]
            except ValueError as exc:
                raise PromptError(
                    f"{source} {values!r}: expected 4 numbers x0,y0,x1,y1, got non-numeric values"
                ) from exc
        values = list(np.asarray(values, dtype=np.float64).reshape(-1))
        if len(values) != 4:
            raise PromptError(
                f"{source} has {len(values)} values; a box needs exactly 4: x0,y0,x1,y1 "
                "(left, top, right, bottom in image pixels)"
            )
        if not all(np.isfinite(values)):
            raise PromptError(f"{source} {values}: contains NaN or infinite values")
        return cls(*[float(v) for v in values])

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def validate(self, image_hw: tuple[int, int], *, source: str = "box") -> "Box":
        """Check the box is ordered and overlaps the image; clip it to the image bounds.

        A box partly outside the image is clipped (people draw sloppy boxes); a box entirely outside,
        or with x1 <= x0 / y1 <= y0, is an error because it cannot mean anything.
        """
        h, w = image_hw
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise PromptError(
                f"{source} ({self.x0:g},{self.y0:g},{self.x1:g},{self.y1:g}) is inverted or empty: "
                "give x0 < x1 and y0 < y1 (left, top, right, bottom)"
            )
        if self.x1 < 0 or self.y1 < 0 or self.x0 > w - 1 or self.y0 > h - 1:
            raise PromptError(
                f"{source} ({self.x0:g},{self.y0:g},{self.x1:g},{self.y1:g}) lies outside the image "
                f"of width {w} and height {h}: give pixel coordinates inside 0..{w - 1} x 0..{h - 1}"
            )
        return Box(
            max(0.0, self.x0), max(0.0, self.y0), min(float(w - 1), self.x1), min(float(h - 1), self.y1)
        )

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Box | None":
        """Tight box around the non-zero pixels of a 2D mask, or None when the mask is empty."""
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return None
        return cls(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


@dataclass(frozen=True)
class Box3D:
    """A 3D box (x0, y0, z0, x1, y1, z1) in voxel indices of a (z, y, x) volume, all bounds inclusive.

    The order is the CVPR 2024 MedSAM-on-laptop ``boxes`` order and the official LiteMedSAM 3D procedure's.
    """

    x0: float
    y0: float
    z0: float
    x1: float
    y1: float
    z1: float

    @classmethod
    def from_sequence(cls, values: Sequence[float] | str, *, source: str = "3D box") -> "Box3D":
        """Build from 6 numbers or a "x0,y0,z0,x1,y1,z1" string; a wrong count is a PromptError."""
        if isinstance(values, str):
            parts = [p for p in values.replace(" ", "").split(",") if p != ""]
            try:
                values = [float(p) for p in parts]
            except ValueError as exc:
                raise PromptError(f"{source} {values!r}: expected 6 numbers x0,y0,z0,x1,y1,z1") from exc
        flat = list(np.asarray(values, dtype=np.float64).reshape(-1))
        if len(flat) != 6:
            raise PromptError(f"{source} has {len(flat)} values; a 3D box needs exactly 6: x0,y0,z0,x1,y1,z1")
        if not all(np.isfinite(flat)):
            raise PromptError(f"{source} {flat}: contains NaN or infinite values")
        return cls(*[float(v) for v in flat])

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.z0, self.x1, self.y1, self.z1], dtype=np.float64)

    def box2d(self) -> Box:
        """The in-plane box (x0, y0, x1, y1)."""
        return Box(self.x0, self.y0, self.x1, self.y1)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Box3D | None":
        """Tight inclusive box around the non-zero voxels of a (z, y, x) mask, or None when it is empty."""
        zs, ys, xs = np.nonzero(mask)
        if zs.size == 0:
            return None
        return cls(
            float(xs.min()), float(ys.min()), float(zs.min()), float(xs.max()), float(ys.max()), float(zs.max())
        )


@dataclass(frozen=True)
class Points:
    """Click prompts for one object: coordinates (N, 2) as (x, y) and labels (N,), 1 = inside, 0 = outside."""

    coords: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords, dtype=np.float64).reshape(-1, 2) if np.size(self.coords) else np.zeros((0, 2))
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if coords.shape[0] != labels.shape[0]:
            raise PromptError(
                f"points: {coords.shape[0]} coordinates but {labels.shape[0]} labels; give one label (1 or 0) per point"
            )
        if not np.all(np.isin(labels, (0, 1))):
            raise PromptError(f"points: labels must be 1 (inside) or 0 (outside), got {sorted(set(labels.tolist()))}")
        if not np.all(np.isfinite(coords)):
            raise PromptError("points: coordinates contain NaN or infinite values")
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> "Points":
        """Parse CLI specs "x,y,1" / "x,y,0" (label defaults to 1)."""
        coords, labels = [], []
        for spec in specs:
            parts = [p for p in spec.replace(" ", "").split(",") if p]
            if len(parts) not in (2, 3):
                raise PromptError(f"point {spec!r}: expected x,y or x,y,label (label 1 = inside, 0 = outside)")
            try:
                x, y = float(parts[0]), float(parts[1])
                label = int(parts[2]) if len(parts) == 3 else 1
            except ValueError as exc:
                raise PromptError(f"point {spec!r}: expected numbers x,y[,label]") from exc
            coords.append((x, y))
            labels.append(label)
        return cls(np.array(coords, dtype=np.float64).reshape(-1, 2), np.array(labels, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def validate(self, image_hw: tuple[int, int], *, source: str = "points") -> "Points":
        h, w = image_hw
        x, y = self.coords[:, 0], self.coords[:, 1]
        bad = (x < 0) | (y < 0) | (x > w - 1) | (y > h - 1)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise PromptError(
                f"{source}: point ({x[i]:g},{y[i]:g}) lies outside the image of width {w} and height {h}"
            )
        return self


@dataclass(frozen=True)
class Prediction:
    """What the predictor returns for N objects with M masks each (M = 1, or 3 with multimask).

    masks: (N, M, H, W) bool at the original image size.
    iou_scores: (N, M) float, the model's own estimate of each mask's IoU.
    low_res_logits: (N, M, h, w) float32 logits at the decoder's resolution (256x256 for SAM-family);
        feed one of them back as ``mask_input`` to refine.
    """

    masks: np.ndarray
    iou_scores: np.ndarray
    low_res_logits: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[0])

    def best(self) -> "Prediction":
        """Keep, per object, the mask with the highest predicted IoU (M becomes 1)."""
        idx = np.argmax(self.iou_scores, axis=1)
        rows = np.arange(self.masks.shape[0])
        return Prediction(
            masks=self.masks[rows, idx][:, None],
            iou_scores=self.iou_scores[rows, idx][:, None],
            low_res_logits=self.low_res_logits[rows, idx][:, None],
        )

    def label_map(self) -> np.ndarray:
        """(H, W) uint16 label image: object i (0-based) gets value i + 1; later objects win overlaps."""
        single = self.best() if self.masks.shape[1] > 1 else self
        h, w = single.masks.shape[-2:]
        labels = np.zeros((h, w), dtype=np.uint16)
        for i in range(single.masks.shape[0]):
            labels[single.masks[i, 0]] = i + 1
        return labels


@dataclass
class Volume:
    """A 3D image and its geometry.

    array: (z, y, x) voxels, any numeric dtype (raw values; see ``medsam.preprocess.intensity``).
    spacing_mm: (z, y, x) voxel size in millimetres.
    origin_mm: physical position (x, y, z) of voxel (0, 0, 0) in the source's patient frame (LPS for
        DICOM/ITK files), as SimpleITK reports it.
    direction: 3x3 matrix whose columns are the physical directions of the x, y and z index axes
        (the ITK convention, as ``sitk.Image.GetDirection()`` reshaped row-major).
    modality: "CT", "MR", ... when the source says so, else None.
    metadata: anything else the reader knows (file paths, series UID, DICOM datasets, ...).
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (z, y, x), got shape {self.array.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        self.origin_mm = tuple(float(o) for o in self.origin_mm)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, other voxels (e.g. a label volume on this grid)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.spacing_mm, self.origin_mm, self.direction.copy(), self.modality, dict(self.metadata))
