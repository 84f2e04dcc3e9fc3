"""Encode the slices of a stack (volume slices or video frames) on demand, a batch at a time.

A stack is anything with ``len()`` and integer indexing that gives 2D uint8 images: a (z, y, x) uint8 array
after an intensity window (``medsam.preprocess.intensity.apply_window``), a (t, h, w, 3) video, or a list.

:class:`SliceEncoder` is the memory bound of propagation: it holds the encodings of the current batch only
(``batch_size`` slices in the direction of travel), and the predictor's LRU cache (bounded in bytes) keeps
recent ones for the sweep that comes back over the key slice. The whole stack is never held as embeddings.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medsam.errors import InputError
from medsam.inference.cache import image_signature
from medsam.inference.predictor import ImageEncoding, PreparedImage, Predictor
from medsam.preprocess.geometry import CoordinateTransform, check_image_shape, prepare_image


def check_stack(slices: Any, *, source: str = "volume") -> tuple[int, tuple[int, int]]:
    """Check a stack of uint8 2D images of one size; return (number of slices, (H, W))."""
    try:
        depth = len(slices)
    except TypeError as exc:
        raise InputError(f"{source}: expected a stack of slices (z, y, x) or frames (t, h, w, 3)") from exc
    if depth == 0:
        raise InputError(f"{source} has no slices")
    array = getattr(slices, "ndim", None)
    if array is not None and slices.ndim not in (3, 4):
        raise InputError(
            f"{source}: shape {slices.shape} is not a stack of 2D images; expected (z, y, x) or (t, h, w, 3)"
        )
    first = np.asarray(slices[0])
    check_image_shape(first, source=f"{source} slice 0")
    if first.dtype != np.uint8:
        raise InputError(
            f"{source}: slices are {first.dtype}; propagation needs uint8 slices. Window the volume first "
            "(medsam.preprocess.intensity.apply_window, e.g. a CT window or 'percentile' for MR)"
        )
    return depth, (int(first.shape[0]), int(first.shape[1]))


class SliceEncoder:
    """Encodings of a stack's slices through a :class:`Predictor`, fetched ``batch_size`` at a time.

    ``encoding(z, ahead)`` returns slice z's encoding; when z is not in the current batch, z and the next
    slices of ``ahead`` (up to ``batch_size`` in all) go through the encoder in one batch and replace the
    batch held before. ``encoded`` counts the slices that really ran through the encoder (cache hits do not).
    """

    def __init__(self, predictor: Predictor, slices: Any, *, batch_size: int = 4, source: str = "volume") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.predictor = predictor
        self.slices = slices
        self.batch_size = int(batch_size)
        self.source = source
        self.depth, self.image_hw = check_stack(slices, source=source)
        self._transform = CoordinateTransform.for_image(self.image_hw, predictor.config)
        self._batch: dict[int, ImageEncoding] = {}
        self.encoded = 0
        self.encoded_slices: set[int] = set()

    @property
    def transform(self) -> CoordinateTransform:
        return self._transform

    def prepare(self, z: int) -> PreparedImage:
        """Slice z resized and normalised for the model. Unlike ``Predictor.prepare`` a constant slice is
        allowed (it is normal in a volume: padding, air); it becomes a zero image, as in the official code."""
        image = np.asarray(self.slices[z])
        check_image_shape(image, source=f"{self.source} slice {z}")
        if image.shape[:2] != self.image_hw or image.dtype != np.uint8:
            raise InputError(
                f"{self.source} slice {z}: shape {image.shape} {image.dtype} differs from slice 0's "
                f"{self.image_hw} uint8; every slice must have the same size"
            )
        config = self.predictor.config
        signature = image_signature(image, self.predictor.model_id, config.name)
        return PreparedImage(prepare_image(image, config, source=f"{self.source} slice {z}"), self._transform, signature)

    def encoding(self, z: int, ahead: Sequence[int] = ()) -> ImageEncoding:
        found = self._batch.get(z)
        if found is not None:
            return found
        wanted = [z] + [a for a in ahead if a != z][: self.batch_size - 1]
        prepared = [self.prepare(i) for i in wanted]
        fresh = [i for i, p in zip(wanted, prepared) if not self.predictor.has_encoding(p.signature)]
        encodings = self.predictor.encode_prepared(prepared, batch_size=self.batch_size)
        self.encoded += len(fresh)
        self.encoded_slices.update(fresh)
        self._batch = dict(zip(wanted, encodings))
        return self._batch[z]

    @property
    def batch(self) -> dict[int, ImageEncoding]:
        """The encodings of the batch last fetched (slice index -> encoding)."""
        return dict(self._batch)

    def release(self) -> None:
        """Drop the current batch (the predictor's bounded cache may still hold it)."""
        self._batch = {}
