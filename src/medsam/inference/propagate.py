"""3D propagation: a prompt on a key slice spreads slice by slice, up then down (volumes and videos).

    from medsam.inference.propagate import ObjectPrompt, PropagationConfig, propagate, segment_stack

    prompts = [ObjectPrompt.from_box3d(Box3D(264, 228, 5, 326, 284, 11))]          # or
    prompts = [ObjectPrompt(z=8, box=Box(264, 228, 326, 284))]                     # open-ended in z
    for result in propagate(predictor, volume_uint8, prompts):                      # one slice at a time
        result.z, result.object_ids, result.masks                                   # (K, H, W) bool
    labels = segment_stack(predictor, volume_uint8, prompts).labels                 # (z, y, x), tqdm bar

The stack is (z, y, x) uint8 (window the volume first) or (t, h, w, 3) uint8 frames. Boxes and points are in
pixels of a slice, as everywhere in the toolkit; ``Box3D`` is (x0, y0, z0, x1, y1, z1), bounds inclusive.

Two modes (``PropagationConfig.mode``):

``reference``: the official LiteMedSAM CVPR 2024 3D procedure. The key slice is the middle one,
``int((z1 - z0) / 2 + z0)``, prompted with the 2D box; then slices z+1 .. z1, then z-1 .. z0. Each next
slice's box is computed in the model's 256-pixel input frame and never goes back to original pixels: the
previous slice's mask (value = object number, 1-based) is resized with INTER_AREA to the resized shape,
padded, and its bounding box grown by 3 px and clipped to 0..256. When that resized mask is empty the
original box is used again: floored to integers going up, unfloored (``box * 256 / max(H, W)``) going down,
as the official code does. Objects are independent; a later object overwrites an earlier one.

``default`` (not worse on the dev set, see benchmarks/volume_accuracy.py): the same sweep, and
- where a direction has no z limit, the object stops where it ends instead of running to the volume's end: a
  slice is rejected (and the object ends there) when its mask is empty, jumps (too little of it overlaps the
  previous slice's mask, ``min_overlap``), lies on other tissue (mean intensity more than
  ``max_intensity_shift`` SD from the key slice's object), is tiny (``min_area_fraction``) or has a predicted
  IoU under ``min_iou``. Given z limits (a ``Box3D``, ``ObjectPrompt.z_limits``) are trusted instead
  (``trust_limits``);
- a ``Box3D``'s in-plane extent bounds every slice's mask (``clip_to_box``), so the boxes taken from the masks
  never grow past it;
- the next box comes from the previous mask at full resolution (bounding box mapped to the input frame and
  grown by ``box_margin_px``), not from a 256-pixel copy of it.
Options: feed the previous slice's low-res logits as a mask prompt (``mask_prompt``), keep the largest 3D
connected component (``largest_component``).

Several objects go in one pass: each slice is encoded once, and all objects active on it are decoded
against that one embedding in one batched decoder call. Slices are encoded ``batch_size`` at a time in the
direction of travel (:class:`medsam.inference.slices.SliceEncoder`); only that batch and the predictor's
bounded LRU cache hold embeddings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import cv2
import numpy as np
import torch

from medsam.errors import PromptError
from medsam.inference.predictor import ImageEncoding, Predictor
from medsam.inference.slices import SliceEncoder
from medsam.preprocess.geometry import CoordinateTransform
from medsam.types import Box, Box3D, Points

if TYPE_CHECKING:
    from medsam.preprocess.orientation import AxisReorientation

Mode = Literal["default", "reference"]
REFERENCE_BOX_SHIFT_PX = 3  # the official get_bbox256's bbox_shift, in 256-input pixels
MIN_INTENSITY_SD = 8.0  # floor of the key slice's object SD (grey levels of 0..255) in the intensity rule


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt on its key slice ``z``: a box and/or points in slice pixels.

    z_limits: optional inclusive (z_first, z_last) the object may not leave (a 3D box gives them).
    extent: optional in-plane box that bounds the object on every slice (a 3D box gives it).
    """

    z: int
    box: Box | None = None
    points: Points | None = None
    z_limits: tuple[int, int] | None = None
    extent: Box | None = None

    @classmethod
    def from_box3d(cls, box: Box3D) -> "ObjectPrompt":
        """The official key slice ``int((z1 - z0) / 2 + z0)`` with the in-plane box, z limits z0..z1."""
        z0, z1 = int(box.z0), int(box.z1)
        if z1 < z0:
            raise PromptError(f"3D box {_fmt(box.as_array())}: z1 {z1} is below z0 {z0}; give z0 <= z1")
        plane = box.box2d()
        return cls(z=int((z1 - z0) / 2 + z0), box=plane, z_limits=(z0, z1), extent=plane)


def check_prompt(
    p: ObjectPrompt, depth: int, image_hw: tuple[int, int], *, index: int = 0, source: str = "volume",
    mode: str = "default",
) -> ObjectPrompt:
    """``p`` checked against a stack of ``depth`` slices of ``image_hw`` (PromptError saying what is wrong),
    with its boxes clipped to the slice and its z limits as ints."""
    name = f"object {index + 1}"
    last = depth - 1
    limits = p.z_limits
    if limits is not None:
        z0, z1 = int(limits[0]), int(limits[1])
        if z1 < z0:
            raise PromptError(f"{name}: z range {z0}..{z1} is inverted; give z0 <= z1")
        if z0 < 0 or z1 > last:
            where = "lies outside" if (z1 < 0 or z0 > last) else "reaches beyond"
            raise PromptError(
                f"{name}: z range {z0}..{z1} {where} the {source}'s slices 0..{last}; give slice indices "
                "inside it (z counts slices from 0 in the order the volume is stored)"
            )
        if not (z0 <= p.z <= z1):
            raise PromptError(f"{name}: the key slice {p.z} lies outside its z range {z0}..{z1}")
        limits = (z0, z1)
    if not (0 <= int(p.z) <= last):
        raise PromptError(f"{name}: slice {p.z} is out of range; the {source} has {depth} slices (0..{last})")
    if p.box is None and (p.points is None or len(p.points) == 0):
        raise PromptError(f"{name}: give a box and/or points on slice {p.z}")
    box = p.box.validate(image_hw, source=f"{name} box") if p.box is not None else None
    if p.points is not None:
        p.points.validate(image_hw, source=f"{name} points")
    extent = p.extent.validate(image_hw, source=f"{name} box") if p.extent is not None else None
    if mode == "reference" and box is None:
        raise PromptError(f"{name}: the reference mode needs a box on the key slice (points alone are not enough)")
    return replace(p, z=int(p.z), box=box, z_limits=limits, extent=extent)


def prompt_to_view(
    p: ObjectPrompt, reorientation: "AxisReorientation", *, index: int = 0, source: str = "volume",
    mode: str = "default",
) -> ObjectPrompt:
    """A prompt given in stored-array indices (z = stored slice, x, y = column, row of the stored slice) as the
    same prompt in the view of ``reorientation`` (:mod:`medsam.preprocess.orientation`).

    It is checked against the stored grid first, so errors speak of what the person gave. The key slice stays
    the same slice. When the view reslices the volume (``lps`` on a sagittal series), only a 3D box (z limits
    with an in-plane extent, no points) has a meaning there: it becomes the view's 3D box, whose key slice is
    the official middle one of the view; anything else is a PromptError saying what to give instead.
    """
    shape = reorientation.source_shape
    p = check_prompt(p, shape[0], (shape[1], shape[2]), index=index, source=source, mode=mode)
    if reorientation.is_identity:
        return p
    if not reorientation.keeps_slice_axis:
        if p.z_limits is None or p.extent is None or p.points is not None:
            reorientation.require_slice_axis("a box or points")
        e = p.extent
        box3d = Box3D(e.x0, e.y0, float(p.z_limits[0]), e.x1, e.y1, float(p.z_limits[1]))
        return ObjectPrompt.from_box3d(reorientation.box3d_to_view(box3d))
    z = reorientation.slice_to_view(p.z)
    box = reorientation.box_to_view(p.z, p.box)[1] if p.box is not None else None
    extent = reorientation.box_to_view(p.z, p.extent)[1] if p.extent is not None else None
    points = None
    if p.points is not None:
        points = Points(reorientation.points_to_view(p.z, p.points.coords)[1], p.points.labels.copy())
    limits = None
    if p.z_limits is not None:
        a, b = (reorientation.slice_to_view(v) for v in p.z_limits)
        limits = (min(a, b), max(a, b))
    return ObjectPrompt(z=z, box=box, points=points, z_limits=limits, extent=extent)


@dataclass(frozen=True)
class PropagationConfig:
    """How propagation runs. ``reference`` ignores every option but ``batch_size`` and ``require_key_mask``.

    Stopping rule (default mode, only towards an end without an explicit z limit: inside given z limits the
    object is taken to be present, and only an empty mask ends it). A slice is rejected, and the object ends
    there, when any of these holds:
    min_iou: the model's predicted IoU is below this. LiteMedSAM keeps predicting 0.6-0.8 beyond a lesion's
        end, so this is only a floor; the two rules below carry the decision.
    min_overlap: the share of the smaller of this and the previous slice's mask that lies in both is below
        this (an object is continuous in z; past its end the mask jumps elsewhere). Shrinking towards a tip
        keeps it near 1, unlike an IoU.
    max_intensity_shift: the mean intensity under the mask moved more than this many standard deviations
        (of the key slice's object, at least 8 grey levels) from the key slice's object mean (past the end it
        lies on other tissue); None turns it off.
    min_area_fraction: the mask is smaller than this fraction of the key slice's mask.
    stop_rule: False turns the whole rule off (only z limits and empty masks end an object).
    trust_limits: inside given z limits the rule is off (a 3D box says where the object is); False applies it
        there too.

    box_margin_px: growth of the box taken from the previous mask, in model-input pixels (3 = official).
    mask_prompt: also give the previous slice's low-res logits as a mask prompt (measured: no gain with
        LiteMedSAM, see benchmarks/volume_accuracy.py).
    clip_to_box: keep masks inside the prompt's in-plane extent (a 3D box's x/y range).
    largest_component: keep each object's largest 3D connected component (``segment_stack`` only).
    require_key_mask: an empty mask on a key slice is a PromptError (off: the reference mode then goes on
        with the original box as the official code does; the default mode drops the object).
    """

    mode: Mode = "default"
    batch_size: int = 4
    min_iou: float = 0.4
    min_overlap: float = 0.5
    max_intensity_shift: float | None = 2.0
    min_area_fraction: float = 0.05
    stop_rule: bool = True
    trust_limits: bool = True
    box_margin_px: int = 3
    mask_prompt: bool = False
    clip_to_box: bool = True
    largest_component: bool = False
    require_key_mask: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("default", "reference"):
            raise PromptError(f"propagation mode {self.mode!r}: choose 'default' or 'reference'")
        if self.batch_size < 1:
            raise PromptError(f"batch_size {self.batch_size}: give at least 1")


REFERENCE = PropagationConfig(mode="reference")


@dataclass(frozen=True)
class ObjectEnd:
    """Why an object's propagation ended in one direction (+1 towards higher z, -1 lower)."""

    object_id: int
    direction: int
    last_z: int
    reason: str


@dataclass(frozen=True)
class SliceResult:
    """What one slice gave: masks (K, H, W) bool and predicted IoU (K,) of the objects ``object_ids``
    (0-based, in prompt order) accepted on slice ``z``; ``ended`` lists objects rejected on this slice."""

    z: int
    object_ids: tuple[int, ...]
    masks: np.ndarray
    iou_scores: np.ndarray
    ended: tuple[ObjectEnd, ...] = ()
    prompt_boxes: np.ndarray | None = None  # (K, 4) the box each kept object got, model input frame (NaN: none)


@dataclass
class _Track:
    """Per-object state during one sweep direction (prompts in the model input frame)."""

    id: int
    prompt: ObjectPrompt
    lo: int
    hi: int
    key_box_in: np.ndarray | None = None
    extent_mask: np.ndarray | None = None
    key_area: int = 0
    key_mean: float = 0.0
    key_std: float = 1.0
    key_mask: np.ndarray | None = None
    key_logits: torch.Tensor | None = None
    prev_mask: np.ndarray | None = None
    prev_logits: torch.Tensor | None = None
    active: bool = True


def _fmt(values: Any) -> str:
    return ",".join(f"{v:g}" for v in np.asarray(values, dtype=float).reshape(-1))


class Propagator:
    """One propagation run over a stack. ``run()`` is the generator; ``ends`` and ``encoder.encoded`` say
    how it went. Build it with :func:`propagate`; it validates the prompts against the stack first."""

    def __init__(
        self,
        predictor: Predictor,
        slices: Any,
        prompts: Sequence[ObjectPrompt],
        config: PropagationConfig = PropagationConfig(),
        *,
        source: str = "volume",
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.encoder = SliceEncoder(predictor, slices, batch_size=config.batch_size, source=source)
        self.source = source
        self.depth = self.encoder.depth
        self.image_hw = self.encoder.image_hw
        self.transform: CoordinateTransform = self.encoder.transform
        if not prompts:
            raise PromptError("no prompt: give at least one object (a 3D box, or a box/points on a slice)")
        self.prompts = tuple(self._validate(i, p) for i, p in enumerate(prompts))
        self.ends: list[ObjectEnd] = []
        self.visited: list[int] = []
        self.seconds = 0.0

    # --- prompts --------------------------------------------------------------------------------------

    def _validate(self, i: int, p: ObjectPrompt) -> ObjectPrompt:
        return check_prompt(p, self.depth, self.image_hw, index=i, source=self.source, mode=self.config.mode)

    def _tracks(self) -> list[_Track]:
        t = self.transform
        tracks = []
        for i, p in enumerate(self.prompts):
            lo, hi = p.z_limits if p.z_limits is not None else (0, self.depth - 1)
            track = _Track(i, p, lo, hi)
            if p.box is not None:
                track.key_box_in = t.boxes_to_input(p.box.as_array()[None])[0]
            if p.extent is not None and self.config.clip_to_box and self.config.mode == "default":
                h, w = self.image_hw
                e = p.extent
                mask = np.zeros((h, w), dtype=bool)
                mask[int(np.floor(e.y0)) : int(np.ceil(e.y1)) + 1, int(np.floor(e.x0)) : int(np.ceil(e.x1)) + 1] = True
                track.extent_mask = mask
            tracks.append(track)
        return tracks

    # --- the sweep ------------------------------------------------------------------------------------

    def run(self) -> Iterator[SliceResult]:
        """Yield each visited slice's result: first the key slices and upwards, then downwards."""
        start = time.perf_counter()
        tracks = self._tracks()
        try:
            yield from self._sweep(tracks, +1)
            for tr in tracks:  # the downward sweep starts from each key slice's mask
                tr.prev_mask, tr.prev_logits = tr.key_mask, tr.key_logits
                started = tr.key_mask is not None and (self.config.mode == "reference" or tr.key_mask.any())
                tr.active = started and tr.prompt.z - 1 >= tr.lo
                if started and tr.prompt.z - 1 < tr.lo:
                    self.ends.append(ObjectEnd(tr.id, -1, tr.prompt.z, _limit_reason(tr.lo, self.depth, -1)))
            yield from self._sweep(tracks, -1)
        finally:
            self.encoder.release()
            self.seconds += time.perf_counter() - start

    def _sweep(self, tracks: list[_Track], step: int) -> Iterator[SliceResult]:
        if step > 0:
            z = min(tr.prompt.z for tr in tracks)
            stop_at = max(tr.hi for tr in tracks)
        else:
            candidates = [tr.prompt.z - 1 for tr in tracks if tr.active]
            if not candidates:
                return
            z = max(candidates)
            stop_at = min(tr.lo for tr in tracks)
        while (z <= stop_at) if step > 0 else (z >= stop_at):
            here = [tr for tr in tracks if self._on_slice(tr, z, step)]
            if not here:  # jump to the next object's start without encoding the slices between
                if step > 0:
                    pending = [tr.prompt.z for tr in tracks if tr.active and tr.prompt.z > z]
                    z = min(pending, default=stop_at + 1)
                else:
                    pending = [tr.prompt.z - 1 for tr in tracks if tr.active and tr.prompt.z - 1 < z]
                    z = max(pending, default=stop_at - 1)
                continue
            enc = self.encoder.encoding(z, self._ahead(tracks, z, step))
            self.visited.append(z)
            yield self._slice(enc, here, z, step)
            z += step

    def _on_slice(self, tr: _Track, z: int, step: int) -> bool:
        if not tr.active:
            return False
        if step > 0:
            return tr.prompt.z <= z <= tr.hi
        return tr.lo <= z < tr.prompt.z

    def _ahead(self, tracks: list[_Track], z: int, step: int) -> list[int]:
        """The slices after z in this direction that some object may still reach (encoded in z's batch).

        Where an object has no z limit its end is unknown; once its mask has shrunk below half of the key
        slice's, it is probably near its end and nothing is encoded ahead, so at most a batch's worth of
        slices past the end is encoded for nothing only when an object ends abruptly.
        """
        active = [tr for tr in tracks if tr.active]
        open_ended = self.config.mode == "default" and any(
            tr.prompt.z_limits is None and tr.prev_mask is not None and 2 * int(tr.prev_mask.sum()) < tr.key_area
            for tr in active
        )
        if open_ended or not active:
            return []
        if step > 0:
            last = max(tr.hi for tr in active)
            return list(range(z + 1, min(last, z + self.config.batch_size - 1) + 1))
        first = min(tr.lo for tr in active)
        return list(range(z - 1, max(first, z - self.config.batch_size + 1) - 1, -1))

    # --- one slice ------------------------------------------------------------------------------------

    def _slice(self, enc: ImageEncoding, here: list[_Track], z: int, step: int) -> SliceResult:
        prompts = [self._prompt(tr, z, step) for tr in here]
        masks, ious, logits = self._decode(enc, prompts)
        ids, kept_masks, kept_ious, kept_boxes, ended = [], [], [], [], []
        for k, tr in enumerate(here):
            mask = masks[k]
            if tr.extent_mask is not None:
                mask &= tr.extent_mask
            is_key = z == tr.prompt.z and step > 0
            if is_key:
                if not mask.any() and self.config.require_key_mask:
                    raise PromptError(
                        f"object {tr.id + 1}: the prompt found nothing on its key slice {z} (the mask is empty). "
                        "Check that the box/points lie on the object in this slice (x, y in slice pixels; "
                        "z = slice index)"
                    )
                stats = KeyStats.of(mask, self._gray(z))
                tr.key_area, tr.key_mean, tr.key_std = stats.area, stats.mean, stats.std
                tr.key_mask, tr.key_logits = mask, logits[k : k + 1]
                reason = "the mask on the key slice is empty" if self.config.mode == "default" and not mask.any() else None
            else:
                reason = self._reject(tr, mask, float(ious[k]), z, step)
            if reason is not None:
                tr.active = False
                end = ObjectEnd(tr.id, step, z - step, reason)
                self.ends.append(end)
                ended.append(end)
                continue
            tr.prev_mask, tr.prev_logits = mask, logits[k : k + 1]
            ids.append(tr.id)
            kept_masks.append(mask)
            kept_ious.append(float(ious[k]))
            box = prompts[k]["box"]
            kept_boxes.append(np.full(4, np.nan) if box is None else np.asarray(box, dtype=np.float64))
            limit = tr.hi if step > 0 else tr.lo
            if z == limit:
                tr.active = False
                self.ends.append(ObjectEnd(tr.id, step, z, _limit_reason(limit, self.depth, step)))
        h, w = self.image_hw
        stacked = np.stack(kept_masks) if kept_masks else np.zeros((0, h, w), dtype=bool)
        boxes = np.stack(kept_boxes) if kept_boxes else np.zeros((0, 4))
        return SliceResult(z, tuple(ids), stacked, np.asarray(kept_ious, dtype=np.float32), tuple(ended), boxes)

    def _reject(self, tr: _Track, mask: np.ndarray, iou: float, z: int, step: int) -> str | None:
        if self.config.mode == "reference":
            return None
        trusted = self.config.trust_limits and tr.prompt.z_limits is not None
        key = KeyStats(tr.key_area, tr.key_mean, tr.key_std)
        return stop_reason(self.config, mask, tr.prev_mask, iou, self._gray(z), key, trusted=trusted, prev_z=z - step)

    def _gray(self, z: int) -> np.ndarray:
        image = np.asarray(self.encoder.slices[z])
        return image.mean(axis=2) if image.ndim == 3 else image

    def _prompt(self, tr: _Track, z: int, step: int) -> dict[str, Any]:
        """This slice's prompt for one object, in the model input frame."""
        t = self.transform
        if z == tr.prompt.z and step > 0:
            pts = tr.prompt.points
            return {
                "box": tr.key_box_in,
                "points": t.points_to_input(pts.coords) if pts is not None and len(pts) else None,
                "labels": pts.labels if pts is not None and len(pts) else None,
                "mask": None,
            }
        if self.config.mode == "reference":
            return {"box": self._reference_box(tr, step), "points": None, "labels": None, "mask": None}
        box = self._mask_box(tr.prev_mask)
        mask = tr.prev_logits if self.config.mask_prompt else None
        return {"box": box, "points": None, "labels": None, "mask": mask}

    def _reference_box(self, tr: _Track, step: int) -> np.ndarray:
        """The official next-slice box: bbox of the previous mask resized to 256 (INTER_AREA on the uint8
        mask holding the object number), grown by 3 and clipped to 0..256; else the original box."""
        t = self.transform
        rh, rw = t.resized_hw
        prev = tr.prev_mask.astype(np.uint8) * np.uint8(tr.id + 1)
        small = prev if (rh, rw) == prev.shape else cv2.resize(prev, (rw, rh), interpolation=cv2.INTER_AREA)
        ys, xs = np.nonzero(small)
        if ys.size == 0:
            if step > 0:
                return tr.key_box_in
            sx, sy = t.scale_xy
            return tr.prompt.box.as_array() * np.array([sx, sy, sx, sy])  # unfloored, as the official code
        size = t.input_size
        s = REFERENCE_BOX_SHIFT_PX
        return np.array(
            [max(0, xs.min() - s), max(0, ys.min() - s), min(size, xs.max() + s), min(size, ys.max() + s)],
            dtype=np.float64,
        )

    def _mask_box(self, mask: np.ndarray) -> np.ndarray:
        return next_slice_box(mask, self.transform, self.config.box_margin_px)

    def _decode(self, enc: ImageEncoding, prompts: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        return decode_prompts(self.predictor, enc, prompts)


@dataclass(frozen=True)
class KeyStats:
    """What the stopping rule compares a slice's mask with: the area (px) and the mean and SD of the intensity
    (0..255) under the mask it started from (the SD floored at ``MIN_INTENSITY_SD``)."""

    area: int
    mean: float
    std: float

    @classmethod
    def of(cls, mask: np.ndarray, gray: np.ndarray) -> "KeyStats":
        area = int(mask.sum())
        if area == 0:
            return cls(0, 0.0, MIN_INTENSITY_SD)
        values = gray[mask]
        return cls(area, float(values.mean()), max(float(values.std()), MIN_INTENSITY_SD))


def stop_reason(
    config: PropagationConfig,
    mask: np.ndarray,
    prev_mask: np.ndarray,
    iou: float,
    gray: np.ndarray,
    key: KeyStats,
    *,
    trusted: bool,
    prev_z: int,
) -> str | None:
    """Why a slice's mask is rejected by the default mode's stopping rule (the object ends there), or None.

    ``trusted``: the slice lies inside z limits a person gave, where only an empty mask ends the object.
    The rules are those of :class:`PropagationConfig`.
    """
    area = int(mask.sum())
    if area == 0:
        return "the mask became empty"
    c = config
    if not c.stop_rule or trusted:
        return None
    if iou < c.min_iou:
        return f"predicted IoU {iou:.2f} < {c.min_iou:g}"
    overlap = float((mask & prev_mask).sum()) / float(max(1, min(area, int(prev_mask.sum()))))
    if overlap < c.min_overlap:
        return f"overlap with slice {prev_z} {overlap:.2f} < {c.min_overlap:g}"
    if c.max_intensity_shift is not None:
        shift = abs(float(gray[mask].mean()) - key.mean) / key.std
        if shift > c.max_intensity_shift:
            return f"intensity moved {shift:.1f} SD from the key slice's object (> {c.max_intensity_shift:g})"
    if area < c.min_area_fraction * key.area:
        return f"area {area} px < {c.min_area_fraction:g} of the key slice's {key.area} px"
    return None


def next_slice_box(mask: np.ndarray, transform: CoordinateTransform, margin_px: int) -> np.ndarray:
    """The default mode's box for the next slice, in the model input frame: the bounding box of ``mask``
    (full resolution) mapped to the input frame, grown by ``margin_px`` and clipped to it."""
    ys, xs = np.nonzero(mask)
    box = transform.boxes_to_input(np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], float))[0]
    size = transform.input_size
    box = np.array([box[0] - margin_px, box[1] - margin_px, box[2] + margin_px, box[3] + margin_px])
    return np.clip(box, 0, size)


def decode_prompts(
    predictor: Predictor, enc: ImageEncoding, prompts: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Decode several objects' prompts (dicts of input-frame ``box``, ``points``, ``labels``, ``mask``) against one
    slice's embedding, one decoder call per prompt shape. Returns masks (K, H, W) bool at the slice size, the
    predicted IoU (K,) and the low-res logits (K, 1, h, w)."""
    device = predictor.device
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(prompts):
        shape = (p["box"] is not None, None if p["points"] is None else len(p["points"]), p["mask"] is not None)
        groups.setdefault(shape, []).append(k)
    n = len(prompts)
    logits_all: list[torch.Tensor | None] = [None] * n
    iou_all = np.zeros(n, dtype=np.float32)
    for (has_box, n_points, has_mask), idx in groups.items():
        boxes = (
            torch.as_tensor(np.stack([prompts[k]["box"] for k in idx]), dtype=torch.float32, device=device)
            if has_box
            else None
        )
        points = labels = None
        if n_points is not None:
            points = torch.as_tensor(np.stack([prompts[k]["points"] for k in idx]), dtype=torch.float32, device=device)
            labels = torch.as_tensor(np.stack([prompts[k]["labels"] for k in idx]), dtype=torch.int64, device=device)
        mask_in = torch.cat([prompts[k]["mask"] for k in idx]).to(device) if has_mask else None
        logits, iou = predictor.predict_torch(enc.embedding, boxes, points, labels, mask_in, multimask=False)
        for j, k in enumerate(idx):
            logits_all[k] = logits[j : j + 1]
            iou_all[k] = float(iou[j, 0])
    logits = torch.cat(logits_all)  # type: ignore[arg-type]
    masks = predictor.postprocess(logits, enc.transform)[:, 0].cpu().numpy()
    return masks, iou_all, logits


def _limit_reason(limit: int, depth: int, step: int) -> str:
    end = depth - 1 if step > 0 else 0
    return "reached the last slice" if limit == end else f"reached its z limit {limit}"


def propagate(
    predictor: Predictor,
    slices: Any,
    prompts: Sequence[ObjectPrompt],
    config: PropagationConfig = PropagationConfig(),
    *,
    source: str = "volume",
) -> Iterator[SliceResult]:
    """Propagate ``prompts`` through ``slices`` and yield each visited slice's :class:`SliceResult`
    (upwards from the key slices first, then downwards). Prompts are checked before anything is encoded."""
    return Propagator(predictor, slices, prompts, config, source=source).run()


# --- a whole stack to a label volume -------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectTrackSummary:
    """One object's outcome: label value, slices it covers, voxels, and why it stopped each way."""

    object_id: int
    label: int
    z_range: tuple[int, int] | None
    voxels: int
    ends: tuple[ObjectEnd, ...]


@dataclass(frozen=True)
class StackSegmentation:
    """The result of :func:`segment_stack`.

    labels: (z, y, x) uint8/uint16, object i (0-based) has value i + 1 (a later object wins overlaps).
    slices_visited / slices_encoded: slices decoded / slices that ran through the encoder (batching may
    encode a few slices ahead that an object then never reached).
    """

    labels: np.ndarray
    objects: tuple[ObjectTrackSummary, ...]
    slices_visited: int
    slices_encoded: int
    seconds: float
    config: PropagationConfig = field(default_factory=PropagationConfig)


def segment_stack(
    predictor: Predictor,
    slices: Any,
    prompts: Sequence[ObjectPrompt],
    config: PropagationConfig = PropagationConfig(),
    *,
    progress: bool = True,
    source: str = "volume",
    description: str = "propagating",
) -> StackSegmentation:
    """Run :func:`propagate` to the end with a tqdm bar and build the label volume.

    Object masks are kept as crops around each slice's mask, so memory stays near the label volume's.
    ``config.largest_component`` keeps each object's largest 3D connected component (26-connectivity).
    """
    from tqdm.auto import tqdm

    run = Propagator(predictor, slices, prompts, config, source=source)
    depth, (h, w) = run.depth, run.image_hw
    crops: list[dict[int, tuple[int, int, np.ndarray]]] = [dict() for _ in run.prompts]
    total = _expected_slices(run)
    with tqdm(total=total, desc=description, unit="slice", disable=not progress, leave=False) as bar:
        for result in run.run():
            for k, obj in enumerate(result.object_ids):
                ys, xs = np.flatnonzero(result.masks[k].any(axis=1)), np.flatnonzero(result.masks[k].any(axis=0))
                if ys.size == 0:
                    continue
                y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
                crops[obj][result.z] = (int(y0), int(x0), result.masks[k][y0:y1, x0:x1].copy())
            bar.update(1)
            if bar.total is not None and bar.n > bar.total:
                bar.total = bar.n
    n = len(run.prompts)
    labels = np.zeros((depth, h, w), dtype=np.uint8 if n < 256 else np.uint16)
    summaries = []
    for obj in range(n):
        volume_box = _paste_object(crops[obj], labels, obj + 1, config.largest_component and config.mode == "default")
        ends = tuple(e for e in run.ends if e.object_id == obj)
        summaries.append(ObjectTrackSummary(obj, obj + 1, volume_box[0], volume_box[1], ends))
    return StackSegmentation(
        labels, tuple(summaries), len(run.visited), run.encoder.encoded, run.seconds, config
    )


def _expected_slices(run: Propagator) -> int | None:
    covered: set[int] = set()
    for p in run.prompts:
        lo, hi = p.z_limits if p.z_limits is not None else (0, run.depth - 1)
        covered.update(range(lo, hi + 1))
    return len(covered)


def _paste_object(
    crops: dict[int, tuple[int, int, np.ndarray]], labels: np.ndarray, value: int, largest: bool
) -> tuple[tuple[int, int] | None, int]:
    """Write one object's slice crops into ``labels`` (overwriting); return its z range and voxel count."""
    if not crops:
        return None, 0
    zs = sorted(crops)
    y0 = min(c[0] for c in crops.values())
    x0 = min(c[1] for c in crops.values())
    y1 = max(c[0] + c[2].shape[0] for c in crops.values())
    x1 = max(c[1] + c[2].shape[1] for c in crops.values())
    block = np.zeros((zs[-1] - zs[0] + 1, y1 - y0, x1 - x0), dtype=bool)
    for z, (cy, cx, m) in crops.items():
        block[z - zs[0], cy - y0 : cy - y0 + m.shape[0], cx - x0 : cx - x0 + m.shape[1]] = m
    if largest:
        block = largest_component(block)
    region = labels[zs[0] : zs[-1] + 1, y0:y1, x0:x1]
    region[block] = value
    nz = np.flatnonzero(block.reshape(block.shape[0], -1).any(axis=1))
    if nz.size == 0:
        return None, 0
    return (int(zs[0] + nz[0]), int(zs[0] + nz[-1])), int(block.sum())


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (26-connectivity in 3D, 8 in 2D)."""
    from scipy import ndimage

    structure = np.ones((3,) * mask.ndim, dtype=bool)
    labelled, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(labelled.reshape(-1))
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))
