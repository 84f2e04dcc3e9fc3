"""The predictor: encode an image once, then answer any number of prompts against its embedding.

    predictor = Predictor(build_model("lite_medsam"))
    predictor.set_image(image)                        # (H, W) or (H, W, 3); 8/16-bit or float
    result = predictor.predict(boxes=[[x0, y0, x1, y1], ...])
    result.masks                                      # (N, 1, H, W) bool at the original size

Prompts are in original-image pixels: boxes (x0, y0, x1, y1), points (x, y) with labels 1 (inside) / 0
(outside). ``predict_torch`` is the batched twin working on tensors in the model's input frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medsam.errors import PromptError
from medsam.inference.cache import DiskEmbeddingCache, LRUCache, image_signature, model_fingerprint
from medsam.preprocess.geometry import CoordinateTransform, PreprocessConfig, check_image_shape, prepare_image
from medsam.preprocess.intensity import to_display_range
from medsam.types import Box, Points, Prediction

DECODE_CHUNK = 64  # prompts per decoder call; bounds memory when many objects are asked at once


@dataclass(frozen=True)
class ImageEncoding:
    """An image's embedding (1, C, h, w) on the model's device, with the geometry to map prompts and masks."""

    embedding: torch.Tensor
    transform: CoordinateTransform
    signature: str


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the encoder: (3, h, w) float32 after resize and intensity normalisation."""

    array: np.ndarray
    transform: CoordinateTransform
    signature: str


class Predictor:
    """Prompted segmentation with one cached image encoding at a time (and an LRU of recent ones)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        cache_bytes: int = 256 * 2**20,
        encoder: Any = None,
        decoder: Any = None,
        disk_cache: DiskEmbeddingCache | None = None,
    ) -> None:
        """model: a SamModel from ``build_model``. encoder: optional callable (B,3,S,S) tensor -> embeddings
        replacing ``model.encode``; decoder: optional callable with the signature of ``model.decode``
        (fast engines plug in here, see ``medsam.inference.engines.make_predictor``). disk_cache: optional
        second tier of the embedding cache on disk (embeddings survive the process)."""
        self.model = model
        spec = getattr(model, "spec", None)
        if spec is None:
            raise TypeError("Predictor needs a model built by medsam.models.registry.build_model")
        self.config: PreprocessConfig = spec.preprocess
        # Embeddings of another engine differ slightly: the engine is part of the signature.
        engine = f":{getattr(encoder, 'cache_tag', type(encoder).__name__)}" if encoder is not None else ""
        self.model_id = f"{spec.name}:{model_fingerprint(model)}{engine}"
        self.cache: LRUCache[ImageEncoding] = LRUCache(cache_bytes)
        self.disk_cache = disk_cache
        self._encoder = encoder if encoder is not None else model.encode
        self._decoder = decoder if decoder is not None else model.decode
        self._current: ImageEncoding | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- encoding -------------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray, *, source: str = "image") -> PreparedImage:
        """Validate, rescale to 0..255, make 3 channels, resize and normalise (numpy, no model)."""
        image = np.asarray(image)
        check_image_shape(image, source=source)
        display = to_display_range(image, source=source)
        transform = CoordinateTransform.for_image(image.shape[:2], self.config)
        signature = image_signature(image, self.model_id, self.config.name)
        return PreparedImage(prepare_image(display, self.config, source=source), transform, signature)

    @torch.inference_mode()
    def encode_prepared(self, prepared: Sequence[PreparedImage], batch_size: int = 8) -> list[ImageEncoding]:
        """Encode prepared images in batches, reusing cached embeddings."""
        out: list[ImageEncoding | None] = [self._cached(p) for p in prepared]
        todo = [i for i, enc in enumerate(out) if enc is None]
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            batch = torch.stack([self._input_tensor(prepared[i].array) for i in idx])
            embeddings = self._encoder(batch)
            for j, i in enumerate(idx):
                enc = ImageEncoding(embeddings[j : j + 1].clone(), prepared[i].transform, prepared[i].signature)
                self.cache.put(enc.signature, enc)
                if self.disk_cache is not None:
                    self.disk_cache.put(enc.signature, enc.embedding.float().cpu().numpy())
                out[i] = enc
        return out  # type: ignore[return-value]

    def has_encoding(self, signature: str) -> bool:
        """True when an image of this signature would not go through the encoder (memory or disk cache)."""
        return signature in self.cache or (self.disk_cache is not None and signature in self.disk_cache)

    def _cached(self, prepared: PreparedImage) -> ImageEncoding | None:
        found = self.cache.get(prepared.signature)
        if found is not None or self.disk_cache is None:
            return found
        array = self.disk_cache.get(prepared.signature)
        if array is None:
            return None
        enc = ImageEncoding(torch.from_numpy(array).to(self.device), prepared.transform, prepared.signature)
        self.cache.put(enc.signature, enc)
        return enc

    def _input_tensor(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(array).to(self.device)[None]
        return self.model.preprocess(x)[0]

    def encode(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[ImageEncoding]:
        """Encode several images (e.g. the slices of a volume) in batches; cached ones are not re-encoded."""
        return self.encode_prepared([self.prepare(im, source=f"image {i}") for i, im in enumerate(images)], batch_size)

    def set_image(self, image: np.ndarray, *, source: str = "image") -> ImageEncoding:
        """Encode ``image`` (or reuse its cached embedding) and make it the target of ``predict``."""
        self._current = self.encode_prepared([self.prepare(image, source=source)])[0]
        return self._current

    def set_encoding(self, encoding: ImageEncoding) -> None:
        self._current = encoding

    @property
    def encoding(self) -> ImageEncoding:
        if self._current is None:
            raise RuntimeError("no image is set: call predictor.set_image(image) first")
        return self._current

    # --- prompting ------------------------------------------------------------------------------------

    def predict(
        self,
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Masks for N objects on the current image.

        boxes: a Box, (4,) or (N, 4) numbers, or a list of Boxes. points: a Points, (K, 2) for one object or
        (N, K, 2) with point_labels (K,) / (N, K). mask_input: low-res logits (N, 1, h, w) from a previous
        Prediction. With N boxes and one set of points, the points apply to every box.
        """
        enc = self.encoding
        h, w = enc.transform.original_hw
        box_arr = _boxes_array(boxes, (h, w))
        pts, labels = _points_arrays(points, point_labels, (h, w))
        n = _object_count(box_arr, pts, mask_input)
        if pts is not None and pts.shape[0] == 1 and n > 1:
            pts, labels = np.repeat(pts, n, axis=0), np.repeat(labels, n, axis=0)
        t = enc.transform
        box_t = _tensor(t.boxes_to_input(box_arr), self.device) if box_arr is not None else None
        pts_t = _tensor(t.points_to_input(pts), self.device) if pts is not None else None
        lab_t = torch.as_tensor(labels, dtype=torch.int64, device=self.device) if labels is not None else None
        mask_t = self._mask_tensor(mask_input, n)
        logits, iou = self.predict_torch(enc.embedding, box_t, pts_t, lab_t, mask_t, multimask)
        masks = self.postprocess(logits, t)
        return Prediction(masks.cpu().numpy(), iou.float().cpu().numpy(), logits.float().cpu().numpy())

    @torch.inference_mode()
    def predict_torch(
        self,
        embedding: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched decoding in the input frame; prompts are split into chunks of DECODE_CHUNK.

        Returns low-res logits (N, M, h, w) and IoU predictions (N, M).
        """
        n = next(x.shape[0] for x in (boxes, points, mask_input) if x is not None)
        outs, ious = [], []
        for s in range(0, n, DECODE_CHUNK):
            sl = slice(s, s + DECODE_CHUNK)
            emb = embedding if embedding.shape[0] == 1 else embedding[sl]
            logits, iou = self._decoder(
                emb,
                boxes=boxes[sl] if boxes is not None else None,
                points=points[sl] if points is not None else None,
                point_labels=point_labels[sl] if point_labels is not None else None,
                mask_input=mask_input[sl] if mask_input is not None else None,
                multimask=multimask,
            )
            outs.append(logits)
            ious.append(iou)
        return torch.cat(outs), torch.cat(ious)

    @torch.inference_mode()
    def postprocess(self, logits: torch.Tensor, transform: CoordinateTransform) -> torch.Tensor:
        """Low-res logits (N, M, h, w) -> boolean masks (N, M, H, W) at the original image size."""
        return upscale_logits(logits, transform, self.config) > 0.0

    def _mask_tensor(self, mask_input: Any, n: int) -> torch.Tensor | None:
        if mask_input is None:
            return None
        m = torch.as_tensor(np.asarray(mask_input) if not isinstance(mask_input, torch.Tensor) else mask_input)
        size = tuple(self.model.low_res_size)
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None] if m.shape[0] != 1 or n == 1 else m[None]
        if m.ndim != 4 or tuple(m.shape[-2:]) != size or m.shape[1] != 1:
            raise PromptError(
                f"mask_input of shape {tuple(m.shape)}: expected low-res logits (N, 1, {size[0]}, {size[1]}) "
                "as returned in Prediction.low_res_logits"
            )
        if m.shape[0] == 1 and n > 1:
            m = m.expand(n, -1, -1, -1)
        if m.shape[0] != n:
            raise PromptError(f"mask_input has {m.shape[0]} masks for {n} objects")
        return m.float().to(self.device)


def upscale_logits(logits: torch.Tensor, transform: CoordinateTransform, config: PreprocessConfig) -> torch.Tensor:
    """Low-res logits -> logits at the original size, the way each family's reference code does it.

    Longest-side models: bring the logits to the input frame, crop the padding, resize to the original.
    Square-stretch models (MedSAM): resize straight to the original size.
    """
    x = logits.float()
    h, w = transform.original_hw
    if config.resize == "square":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    size = transform.input_size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    rh, rw = transform.resized_hw
    x = x[..., :rh, :rw]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32, device=device)


def _boxes_array(boxes: Any, image_hw: tuple[int, int]) -> np.ndarray | None:
    if boxes is None:
        return None
    if isinstance(boxes, Box):
        items = [boxes]
    elif isinstance(boxes, (list, tuple)) and boxes and all(isinstance(b, (Box, list, tuple, np.ndarray)) for b in boxes):
        items = [b if isinstance(b, Box) else Box.from_sequence(b, source=f"box {i + 1}") for i, b in enumerate(boxes)]
    else:
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise PromptError(
                f"boxes of shape {arr.shape}: give 4 numbers x0,y0,x1,y1 per box, as (4,) or (N, 4)"
            )
        items = [Box.from_sequence(row, source=f"box {i + 1}") for i, row in enumerate(arr)]
    if not items:
        raise PromptError("boxes: an empty list was given; give at least one box or leave boxes=None")
    return np.stack([b.validate(image_hw, source=f"box {i + 1}").as_array() for i, b in enumerate(items)])


def _points_arrays(points: Any, labels: Any, image_hw: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    if points is None:
        if labels is not None:
            raise PromptError("point_labels were given without points")
        return None, None
    if isinstance(points, Points):
        points, labels = points.coords, points.labels
    elif isinstance(points, (list, tuple)) and points and all(isinstance(p, Points) for p in points):
        counts = {len(p) for p in points}
        if len(counts) != 1:
            raise PromptError("points: every object needs the same number of points in one call")
        for i, p in enumerate(points):
            p.validate(image_hw, source=f"points of object {i + 1}")
        return np.stack([p.coords for p in points]), np.stack([p.labels for p in points])
    arr = np.asarray(points, dtype=np.float64)
    if labels is None:
        raise PromptError("points need point_labels: 1 for a point inside the object, 0 for outside")
    lab = np.asarray(labels, dtype=np.int64)
    if arr.ndim == 2:
        arr, lab = arr[None], lab.reshape(1, -1)
    if arr.ndim != 3 or arr.shape[-1] != 2 or lab.shape != arr.shape[:2]:
        raise PromptError(
            f"points of shape {arr.shape} with labels of shape {lab.shape}: give (K, 2) points with (K,) labels, "
            "or (N, K, 2) with (N, K)"
        )
    for i in range(arr.shape[0]):
        Points(arr[i], lab[i]).validate(image_hw, source=f"points of object {i + 1}")
    return arr, lab


def _object_count(boxes: np.ndarray | None, points: np.ndarray | None, mask_input: Any) -> int:
    counts = {x.shape[0] for x in (boxes,) if x is not None}
    if points is not None and points.shape[0] != 1:
        counts.add(points.shape[0])
    if not counts:
        if points is not None:
            return 1
        if mask_input is not None:
            return int(np.asarray(mask_input).shape[0]) if np.ndim(mask_input) == 4 else 1
        raise PromptError("no prompt given: pass boxes, points (with labels) or mask_input")
    if len(counts) > 1:
        raise PromptError(f"prompts disagree on the number of objects: {sorted(counts)}")
    return counts.pop()
