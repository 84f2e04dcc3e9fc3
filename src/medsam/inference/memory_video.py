"""Memory-based tracking through a video or a volume with SAM 2.1 / MedSAM2.

    predictor = MemoryPredictor(build_model("medsam2", checkpoint="MedSAM2_latest.pt"))
    state = predictor.init_state(frames)                    # (t, h, w) or (t, h, w, 3) uint8
    predictor.add_prompt(state, frame=5, obj_id=1, box=Box(40, 30, 90, 80))
    predictor.add_prompt(state, frame=5, obj_id=2, points=Points([[120, 60]], [1]))
    for result in predictor.propagate(state):              # forwards from the first prompted frame
        result.frame, result.object_ids, result.masks      # (K, H, W) bool at the original size
    for result in predictor.propagate(state, reverse=True):
        ...
    labels = medsam2_segment_volume(predictor, volume_u8, [KeySlicePrompt(z=40, box=Box(...))])

What it does is SAM 2's video predictor (sam2 1.1.0, ``SAM2VideoPredictor``), step for step: the first prompt on
a frame conditions it without memory; propagation conditions every other frame on the memories of the
conditioning frames and of the 6 frames before it in the direction of travel (``num_maskmem`` = 7 as trained),
plus the object pointers of up to 15 earlier frames; the masks the user prompted are memorised binarised.
Objects are tracked independently (one memory bank each).

Bounds: frame features are computed once and kept in an LRU cache bounded in bytes (``cache_bytes``),
optionally backed by a folder on disk (``cache_dir``, files named by a signature of pixels, weights and
preprocessing). Each object's memory bank holds at most ``max_memory_frames`` spatial memories (bfloat16, as
SAM 2 keeps them): beyond that the ones farthest from the frame being tracked and from every conditioning frame
go first, never one that frame could attend to, so a sweep gives SAM 2's results while memory stays bounded on
long videos. Object pointers and low-resolution logits (small) of every tracked frame are kept, so a correction on
any frame starts from its logits, as in SAM 2.

For interaction (clicks and boxes on any slice, re-propagation): ``add_prompt`` on a tracked frame corrects it,
``propagate(state, start=frame, reverse=...)`` re-tracks from there and can be closed early;
``clear_prompts`` / ``remove_object`` / ``VideoState.reset`` undo.

Errors for people: prompts on frames out of range, malformed boxes/points/masks, propagation before any
prompt, an unknown object: each a :class:`medsam.errors.PromptError` naming what to change.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medsam.errors import InputError, MedsamError, PromptError
from medsam.inference.cache import image_signature, model_fingerprint
from medsam.inference.slices import check_stack
from medsam.models.sam2.model import NO_OBJECT_SCORE, FrameFeatures, HeadOutput, Sam2Model, SpatialMemory
from medsam.preprocess.geometry import prepare_image
from medsam.types import Box, Points

LOGIT_CLAMP = 32.0  # previous logits fed back with new clicks are clamped, as SAM 2 does


# --- results and state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameResult:
    """One frame's masks for the objects ``object_ids`` (in the order they were first prompted).

    masks: (K, H, W) bool at the original frame size; logits: (K, H, W) float32 there (mask = logits > 0);
    object_scores: (K,) logits of "the object is in this frame" (negative: absent, its mask is empty);
    low_res_logits: (K, 1, S/4, S/4) float32, the decoder's output.
    """

    frame: int
    object_ids: tuple[int, ...]
    masks: np.ndarray
    logits: np.ndarray
    object_scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass
class _Output:
    """One object's output on one frame (kept compact: SAM 2's ``compact_current_out``)."""

    pred_masks: torch.Tensor  # (1, 1, S/4, S/4) float32 logits, holes filled
    obj_ptr: torch.Tensor  # (1, C)
    object_score: torch.Tensor  # (1, 1)
    maskmem: torch.Tensor | None = None  # (1, mem_dim, H, W) bfloat16, None until memorised


@dataclass
class _PointPrompt:
    coords: torch.Tensor  # (1, P, 2) in the S x S input frame
    labels: torch.Tensor  # (1, P) int32: 0/1 clicks, 2/3 box corners


@dataclass
class ObjectTrack:
    """Everything known about one object: its prompts and outputs per frame, and which direction each
    tracked frame was reached from (a correction continues in that direction)."""

    obj_id: int
    cond: dict[int, _Output] = field(default_factory=dict)
    non_cond: dict[int, _Output] = field(default_factory=dict)
    pending_cond: dict[int, _Output] = field(default_factory=dict)
    pending_non_cond: dict[int, _Output] = field(default_factory=dict)
    points: dict[int, _PointPrompt] = field(default_factory=dict)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> reached in reverse

    def output(self, frame: int) -> _Output | None:
        for table in (self.pending_cond, self.pending_non_cond, self.cond, self.non_cond):
            if frame in table:
                return table[frame]
        return None

    @property
    def prompted_frames(self) -> list[int]:
        return sorted(set(self.cond) | set(self.pending_cond) | set(self.pending_non_cond))


class FeatureCache:
    """Frame features by signature: an LRU bounded in bytes, optionally backed by files in ``folder``
    (written once, read back when the memory copy was evicted; a file is named by the signature of the frame's
    pixels, the model's weights and the preprocessing, so a stale one is never used)."""

    def __init__(self, max_bytes: int, folder: str | Path | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._items: OrderedDict[str, FrameFeatures] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.disk_reads = 0

    def get(self, key: str, device: torch.device) -> FrameFeatures | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        path = self._path(key)
        if path is not None and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            feats = FrameFeatures(saved["vision"], saved["vision_pos"], (saved["s0"], saved["s1"])).to(device)
            self.disk_reads += 1
            self._remember(key, feats)
            return feats
        self.misses += 1
        return None

    def put(self, key: str, feats: FrameFeatures) -> None:
        path = self._path(key)
        if path is not None and not path.exists():
            from medsam.io.atomic import atomic_path

            with atomic_path(path, overwrite=True) as tmp:
                torch.save({"vision": feats.vision.cpu(), "vision_pos": feats.vision_pos.cpu(),
                            "s0": feats.high_res[0].cpu(), "s1": feats.high_res[1].cpu()}, tmp)
        self._remember(key, feats)

    def _remember(self, key: str, feats: FrameFeatures) -> None:
        size = feats.nbytes
        if size > self.max_bytes:
            return
        self._items[key] = feats
        self.nbytes += size
        while self.nbytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key}.pt" if self.folder is not None else None

    def __len__(self) -> int:
        return len(self._items)


class VideoState:
    """A tracking session on one stack of frames: the frames, their feature cache, and one
    :class:`ObjectTrack` per object id (in the order the objects were first prompted)."""

    def __init__(self, frames: Any, cache: FeatureCache, *, source: str) -> None:
        self.frames = frames
        self.num_frames, self.frame_hw = check_stack(frames, source=source)
        self.source = source
        self.cache = cache
        self.objects: OrderedDict[int, ObjectTrack] = OrderedDict()
        self.maskmem_pos: torch.Tensor | None = None  # the same for every frame and object
        self.encoded = 0  # frames that went through the encoder
        self.visited = 0  # frame results propagation yielded

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(self.objects)

    def reset(self) -> None:
        """Forget every prompt, output and object (frame features stay cached)."""
        self.objects.clear()


# --- the predictor -----------------------------------------------------------------------------------------


class MemoryPredictor:
    """SAM 2-style tracking with a :class:`medsam.models.sam2.Sam2Model` from ``build_model``.

    cache_bytes / cache_dir: bound of the frame-feature cache in memory (shared by the predictor's sessions),
    optional folder backing it.
    fill_hole_area: background holes of at most this many low-res pixels inside a mask are filled (SAM 2's
    post-processing, 8 by default; 0 turns it off). offload_state_to_cpu: keep memories on the CPU (saves
    GPU memory at some speed). max_memory_frames: spatial memories kept per object (see ``_trim``).
    corrections_as_cond: a prompt on a frame the object was already tracked on makes it a conditioning frame, so
    a later propagation keeps the correction (SAM 2's ``add_all_frames_to_correct_as_cond``, on in its
    interactive demo; off, the correction only lasts until that frame is tracked again, as in its video predictor's
    default).
    """

    is_memory_predictor = True  # how segment3d / video / evaluation tell it from the 2D Predictor

    def __init__(
        self,
        model: Sam2Model,
        *,
        cache_bytes: int = 1024 * 2**20,
        cache_dir: str | Path | None = None,
        fill_hole_area: int | None = None,
        offload_state_to_cpu: bool = False,
        max_memory_frames: int = 32,
        corrections_as_cond: bool = True,
    ) -> None:
        spec = getattr(model, "spec", None)
        if not isinstance(model, Sam2Model) or spec is None:
            name = getattr(spec, "name", type(model).__name__)
            raise MedsamError(
                f"model {name!r} is not a SAM 2 family model; memory tracking needs medsam2, sam2.1_hiera_t/s/b+/l "
                "(or tiny_sam2 for tests). Image models propagate with medsam.inference.propagate"
            )
        self.model = model
        self.config = model.config
        self.preprocess = spec.preprocess
        self.model_id = f"{spec.name}:{model_fingerprint(model)}"
        # One cache for every session of this predictor: keys are signatures of the frame's pixels, so a volume
        # evaluated twice, or the sweeps and objects of one volume, encode each slice once.
        self.cache = FeatureCache(cache_bytes, cache_dir)
        self.fill_hole_area = self.config.fill_hole_area if fill_hole_area is None else int(fill_hole_area)
        self.offload = offload_state_to_cpu
        self.max_memory_frames = max(int(max_memory_frames), 2 * self.config.num_maskmem)
        self.corrections_as_cond = bool(corrections_as_cond)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def storage_device(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.device

    # --- state -------------------------------------------------------------------------------------------

    def init_state(self, frames: Any, *, source: str = "video") -> VideoState:
        """A session on ``frames``: (t, h, w) or (t, h, w, 3) uint8 (window volumes first, e.g. with
        ``medsam.preprocess.intensity.apply_window``), or a sequence of such 2D frames. Nothing is encoded yet."""
        return VideoState(frames, self.cache, source=source)

    def frame_features(self, state: VideoState, frame: int) -> FrameFeatures:
        """The encoder's features of one frame, from the cache or computed (once)."""
        image = np.asarray(state.frames[frame])
        if image.shape[:2] != state.frame_hw or image.dtype != np.uint8:
            raise InputError(
                f"{state.source} frame {frame}: shape {image.shape} {image.dtype} differs from frame 0's "
                f"{state.frame_hw} uint8; every frame must have the same size"
            )
        key = image_signature(image, self.model_id, self.preprocess.name)
        feats = state.cache.get(key, self.device)
        if feats is None:
            array = prepare_image(image, self.preprocess, source=f"{state.source} frame {frame}")
            x = self.model.preprocess(torch.from_numpy(array).to(self.device)[None])
            with torch.inference_mode():
                feats = self.model.encode_frames(x)[0]
            state.cache.put(key, feats)
            state.encoded += 1
        return feats

    # --- prompts -----------------------------------------------------------------------------------------

    def _check_frame(self, state: VideoState, frame: Any) -> int:
        try:
            index = int(frame)
        except (TypeError, ValueError):
            raise PromptError(f"frame {frame!r}: give a frame (slice) number") from None
        if index != frame or not (0 <= index < state.num_frames):
            raise PromptError(
                f"frame {frame} is out of range: the {state.source} has {state.num_frames} frames "
                f"(0..{state.num_frames - 1}); frames and slices are counted from 0"
            )
        return index

    def _track(self, state: VideoState, obj_id: Any) -> ObjectTrack:
        if not isinstance(obj_id, (int, np.integer)) or isinstance(obj_id, bool):
            raise PromptError(f"object id {obj_id!r}: give an integer id per object (1, 2, ...)")
        obj_id = int(obj_id)
        if obj_id not in state.objects:
            state.objects[obj_id] = ObjectTrack(obj_id)
        return state.objects[obj_id]

    @torch.inference_mode()
    def add_prompt(
        self,
        state: VideoState,
        frame: int,
        obj_id: int,
        *,
        box: Box | Sequence[float] | None = None,
        points: Points | None = None,
        mask: np.ndarray | None = None,
        clear: bool = True,
    ) -> FrameResult:
        """Prompt object ``obj_id`` on ``frame`` with a box and/or clicks, or a mask (H, W); returns every
        object's mask on that frame. On a frame the object was already tracked on, the prompt corrects it
        (starting from its logits) and a later :meth:`propagate` from this frame re-tracks in the direction
        it had been reached from. ``clear=False`` adds the clicks to the ones given on this frame before."""
        frame = self._check_frame(state, frame)
        if mask is not None and (box is not None or points is not None):
            raise PromptError("give a mask, or a box and/or points, for one object on one frame, not both")
        if mask is None and box is None and (points is None or len(points) == 0):
            raise PromptError(f"object {obj_id} on frame {frame}: give a box, points or a mask")
        source = f"object {obj_id} on frame {frame}"
        if not clear and box is not None:
            raise PromptError("a box must come first on a frame: add it with clear=True (the default)")
        if mask is not None:
            mask_in = self._mask_input(state, mask, source)
        else:
            prompt = self._point_input(state, box, points, source)
        track = self._track(state, obj_id)
        initial = frame not in track.tracked
        reverse = False if initial else track.tracked[frame]
        pending = track.pending_cond if (initial or self.corrections_as_cond) else track.pending_non_cond
        if mask is not None:
            track.masks[frame] = mask_in
            track.points.pop(frame, None)
            out = self._infer(state, track, frame, initial=initial, reverse=reverse, mask=mask_in, memorise=False)
        else:
            if not clear:
                old = track.points.get(frame)
                if old is not None:
                    prompt = _PointPrompt(torch.cat([old.coords, prompt.coords], 1), torch.cat([old.labels, prompt.labels], 1))
            track.points[frame] = prompt
            track.masks.pop(frame, None)
            previous = track.output(frame)
            prev_logits = None
            if previous is not None:
                prev_logits = previous.pred_masks.to(self.device).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
            out = self._infer(state, track, frame, initial=initial, reverse=reverse, points=prompt,
                              prev_logits=prev_logits, memorise=False)
        pending[frame] = out
        return self._result(state, frame, [t.output(frame) for t in state.objects.values()])

    def _point_input(self, state: VideoState, box: Any, points: Points | None, source: str) -> _PointPrompt:
        h, w = state.frame_hw
        coords = np.zeros((0, 2), dtype=np.float32)
        labels = np.zeros((0,), dtype=np.int32)
        if box is not None:
            box = box if isinstance(box, Box) else Box.from_sequence(box, source=f"{source}: box")
            box = box.validate((h, w), source=f"{source}: box")
            coords = np.array([[box.x0, box.y0], [box.x1, box.y1]], dtype=np.float32)
            labels = np.array([2, 3], dtype=np.int32)
        if points is not None and len(points):
            if not isinstance(points, Points):
                raise PromptError(f"{source}: points must be medsam.types.Points (coordinates x, y and labels 1/0)")
            points.validate((h, w), source=f"{source}: points")
            coords = np.concatenate([coords, points.coords.astype(np.float32)])
            labels = np.concatenate([labels, points.labels.astype(np.int32)])
        # As SAM 2: normalise by the frame size, then scale to the model's S x S input.
        xy = torch.from_numpy(coords)[None] / torch.tensor([w, h]) * self.config.image_size
        return _PointPrompt(xy.to(self.device), torch.from_numpy(labels)[None].to(self.device))

    def _mask_input(self, state: VideoState, mask: np.ndarray, source: str) -> torch.Tensor:
        mask = np.asarray(mask)
        if mask.shape != state.frame_hw:
            raise PromptError(f"{source}: the mask is {mask.shape} but frames are {state.frame_hw} (height, width)")
        if not mask.any():
            raise PromptError(f"{source}: the mask is empty; give at least one foreground pixel")
        size = self.config.image_size
        m = torch.from_numpy(mask.astype(bool)).float()[None, None].to(self.device)
        if tuple(mask.shape) != (size, size):
            m = F.interpolate(m, size=(size, size), align_corners=False, mode="bilinear", antialias=True)
            m = (m >= 0.5).float()
        return m

    def clear_prompts(self, state: VideoState, frame: int, obj_id: int) -> None:
        """Remove an object's prompts on a frame (its output there, if any, becomes an ordinary tracked one)."""
        frame = self._check_frame(state, frame)
        track = state.objects.get(int(obj_id))
        if track is None:
            raise PromptError(f"object {obj_id} has no prompts; known objects: {list(state.objects)}")
        track.points.pop(frame, None)
        track.masks.pop(frame, None)
        track.pending_cond.pop(frame, None)
        track.pending_non_cond.pop(frame, None)
        out = track.cond.pop(frame, None)
        if out is not None:
            track.non_cond[frame] = out
            track.tracked.pop(frame, None)

    def remove_object(self, state: VideoState, obj_id: int) -> None:
        if state.objects.pop(int(obj_id), None) is None:
            raise PromptError(f"object {obj_id} is not tracked; known objects: {list(state.objects)}")

    # --- propagation -------------------------------------------------------------------------------------

    def propagate(
        self,
        state: VideoState,
        start: int | None = None,
        *,
        reverse: bool = False,
        max_frames: int | None = None,
        progress: bool = False,
    ) -> Iterator[FrameResult]:
        """Track every object frame by frame from ``start`` (default: the first prompted frame) forwards, or
        backwards with ``reverse``, over at most ``max_frames`` frames after the start; yields a
        :class:`FrameResult` per frame (the start frame included). The generator may be closed early: every
        frame yielded is already stored, so prompts and later propagations continue from there."""
        self._preflight(state)
        if start is None:
            start = min(f for t in state.objects.values() for f in t.cond)
        start = self._check_frame(state, start)
        span = state.num_frames if max_frames is None else int(max_frames)
        if reverse:
            order = range(start, max(start - span, 0) - 1, -1) if start > 0 else range(0)
        else:
            order = range(start, min(start + span, state.num_frames - 1) + 1)
        return self._run(state, list(order), reverse, progress)

    def propagate_both_ways(
        self, state: VideoState, start: int, *, max_frames: int | None = None, progress: bool = False
    ) -> Iterator[FrameResult]:
        """Re-track from ``start`` forwards, then backwards (what an interactive correction on a slice needs);
        the start frame is yielded once. Close the generator to stop; everything yielded is stored."""
        yield from self.propagate(state, start, max_frames=max_frames, progress=progress)
        backwards = self.propagate(state, start, reverse=True, max_frames=max_frames, progress=progress)
        for result in backwards:
            if result.frame != start:
                yield result

    def _run(self, state: VideoState, order: list[int], reverse: bool, progress: bool) -> Iterator[FrameResult]:
        from tqdm.auto import tqdm

        with torch.inference_mode():
            for frame in tqdm(order, desc="tracking", unit="frame", disable=not progress, leave=False):
                outputs = []
                for track in state.objects.values():
                    out = track.cond.get(frame)
                    if out is None:
                        out = self._infer(state, track, frame, initial=False, reverse=reverse, memorise=True)
                        track.non_cond[frame] = out
                    track.tracked[frame] = reverse
                    self._trim(track, frame)
                    outputs.append(out)
                state.visited += 1
                yield self._result(state, frame, outputs)

    def _preflight(self, state: VideoState) -> None:
        """Memorise the outputs of new prompts (binarised, as the user saw them) and check every object has one."""
        if not state.objects:
            raise PromptError("no prompt yet: add a box, points or a mask on a frame (add_prompt) before propagating")
        for track in state.objects.values():
            for pending, table in ((track.pending_non_cond, track.non_cond), (track.pending_cond, track.cond)):
                for frame, out in pending.items():
                    if out.maskmem is None:
                        size = self.config.image_size
                        high = F.interpolate(out.pred_masks.to(self.device), size=(size, size), mode="bilinear",
                                             align_corners=False)
                        feats = self.frame_features(state, frame)
                        with torch.inference_mode():
                            maskmem, pos = self.model.encode_memory(feats, high, out.object_score, binarize=True)
                        out.maskmem = self._store_memory(state, maskmem, pos)
                    table[frame] = out
                pending.clear()
            if not track.cond:
                raise PromptError(
                    f"object {track.obj_id} has no prompt on a frame it was not already tracked on; give it a box, "
                    "points or a mask first"
                )
            for frame in track.cond:
                track.non_cond.pop(frame, None)

    # --- one frame -----------------------------------------------------------------------------------------

    def _infer(
        self,
        state: VideoState,
        track: ObjectTrack,
        frame: int,
        *,
        initial: bool,
        reverse: bool,
        points: _PointPrompt | None = None,
        mask: torch.Tensor | None = None,
        prev_logits: torch.Tensor | None = None,
        memorise: bool,
    ) -> _Output:
        """SAM 2's track step for one object on one frame."""
        model = self.model
        feats = self.frame_features(state, frame)
        if mask is not None and self.config.use_mask_input_as_output_without_sam:
            head: HeadOutput = model.mask_as_output(feats.vision, feats.high_res, mask)
        else:
            if initial:
                memories, pointers, span = [], [], 1
            else:
                memories, pointers, span = self._select_memories(state, track, frame, reverse)
            conditioned = model.condition_on_memory(feats, 1, memories, pointers, span)
            num_points = 0 if points is None else int(points.labels.shape[1])
            head = model.forward_heads(
                conditioned, feats.high_res,
                None if points is None else points.coords, None if points is None else points.labels,
                mask_inputs=prev_logits, multimask=model.use_multimask(initial, num_points),
            )
        maskmem = None
        if memorise:
            features, pos = model.encode_memory(feats, head.high_res_masks, head.object_scores, binarize=points is not None)
            maskmem = self._store_memory(state, features, pos)
        pred = head.low_res_masks
        if self.fill_hole_area > 0:
            pred = fill_holes(pred, self.fill_hole_area)
        store = self.storage_device
        return _Output(pred.to(store), head.obj_ptr, head.object_scores, maskmem)

    def _store_memory(self, state: VideoState, features: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if state.maskmem_pos is None:
            state.maskmem_pos = pos[0:1].clone()
        # bfloat16, as SAM 2 keeps its memory bank (half the bytes; the attention reads them back exactly).
        return features.to(torch.bfloat16).to(self.storage_device)

    def _select_memories(
        self, state: VideoState, track: ObjectTrack, frame: int, reverse: bool
    ) -> tuple[list[SpatialMemory], list[tuple[int, torch.Tensor]], int]:
        """The memories and pointers SAM 2 attends to on ``frame`` (``_prepare_memory_conditioned_features``)."""
        c = self.config
        selected, unselected = select_conditioning_frames(frame, track.cond, c.max_cond_frames_in_attn)
        slots: list[tuple[int, _Output | None]] = [(0, out) for out in selected.values()]
        stride = c.memory_temporal_stride_for_eval
        for t_pos in range(1, c.num_maskmem):
            back = c.num_maskmem - t_pos  # frames before this one in the direction of travel
            if back == 1:
                other = frame + 1 if reverse else frame - 1
            elif not reverse:
                other = ((frame - 2) // stride) * stride - (back - 2) * stride
            else:
                other = -(-(frame + 2) // stride) * stride + (back - 2) * stride
            out = track.non_cond.get(other)
            if out is None:
                out = unselected.get(other)
            slots.append((t_pos, out))
        pos = state.maskmem_pos
        memories = [
            SpatialMemory(out.maskmem.to(self.device).float(), pos, t_pos)
            for t_pos, out in slots
            if out is not None and out.maskmem is not None
        ]
        max_ptrs = min(state.num_frames, c.max_obj_ptrs_in_encoder)
        if c.only_obj_ptrs_in_the_past_for_eval:
            past = {t: o for t, o in selected.items() if (t >= frame if reverse else t <= frame)}
        else:
            past = selected
        sign = -1 if reverse else 1
        pointers = [((frame - t) * sign, o.obj_ptr) for t, o in past.items()]
        for offset in range(1, max_ptrs):
            t = frame + offset if reverse else frame - offset
            if t < 0 or t >= state.num_frames:
                break
            out = track.non_cond.get(t, unselected.get(t))
            if out is not None:
                pointers.append((offset, out.obj_ptr))
        return memories, pointers, max_ptrs - 1

    def _trim(self, track: ObjectTrack, frame: int) -> None:
        """Bound the memory bank to ``max_memory_frames`` spatial memories per object: past that, the memories
        farthest from this frame and from every conditioning frame are dropped first, never one that a frame
        within ``num_maskmem - 1`` strides of them could attend to. Pointers and low-res logits (small) stay."""
        held = [t for t, out in track.non_cond.items() if out.maskmem is not None]
        excess = len(held) - self.max_memory_frames
        if excess <= 0:
            return
        c = self.config
        reach = (c.num_maskmem - 1) * c.memory_temporal_stride_for_eval
        anchors = [frame, *track.cond]
        distance = {t: min(abs(t - a) for a in anchors) for t in held}
        for t in sorted(held, key=lambda t: -distance[t])[:excess]:
            if distance[t] <= reach:
                break
            track.non_cond[t].maskmem = None

    # --- results -------------------------------------------------------------------------------------------

    def _result(self, state: VideoState, frame: int, outputs: Sequence[_Output | None]) -> FrameResult:
        s = self.config.low_res_size
        low = torch.full((len(outputs), 1, s, s), NO_OBJECT_SCORE, dtype=torch.float32, device=self.device)
        scores = torch.full((len(outputs),), NO_OBJECT_SCORE, dtype=torch.float32)
        for i, out in enumerate(outputs):
            if out is not None:
                low[i : i + 1] = out.pred_masks.to(self.device)
                scores[i] = float(out.object_score.reshape(-1)[0])
        h, w = state.frame_hw
        video = low if (h, w) == (s, s) else F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        logits = video[:, 0].cpu().numpy()
        return FrameResult(frame, state.object_ids, logits > 0, logits, scores.numpy(), low.cpu().numpy())


def select_conditioning_frames(
    frame: int, cond: dict[int, Any], max_frames: int
) -> tuple[dict[int, Any], dict[int, Any]]:
    """Up to ``max_frames`` conditioning frames (-1: all) closest in time to ``frame``: the closest before,
    the closest at or after, then the nearest others. Returns (selected, the rest)."""
    if max_frames == -1 or len(cond) <= max_frames:
        return cond, {}
    if max_frames < 2:
        raise ValueError("at least 2 conditioning frames must be allowed")
    selected: dict[int, Any] = {}
    before = max((t for t in cond if t < frame), default=None)
    if before is not None:
        selected[before] = cond[before]
    after = min((t for t in cond if t >= frame), default=None)
    if after is not None:
        selected[after] = cond[after]
    rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame))
    for t in rest[: max_frames - len(selected)]:
        selected[t] = cond[t]
    return selected, {t: v for t, v in cond.items() if t not in selected}


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Fill background holes (8-connected regions of logits <= 0) of at most ``max_area`` pixels with 0.1,
    per mask of a (B, 1, h, w) tensor (SAM 2's post-processing; computed on the CPU with OpenCV)."""
    import cv2

    out = logits.clone()
    background = (logits <= 0).to(torch.uint8).cpu().numpy()
    for b in range(background.shape[0]):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(background[b, 0], connectivity=8)
        if count <= 1:
            continue
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= max_area)
        small = small[small > 0]
        if small.size == 0:
            continue
        hole = torch.from_numpy(np.isin(labels, small)).to(logits.device)
        out[b, 0] = torch.where(hole, torch.tensor(0.1, dtype=logits.dtype, device=logits.device), out[b, 0])
    return out


# --- MedSAM2's 3D procedure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySlicePrompt:
    """One object's prompt on its key slice ``z``: a box (x0, y0, x1, y1 in slice pixels) and/or clicks;
    ``z_limits`` (inclusive) stop the propagation there (a 3D box gives them)."""

    z: int
    box: Box | None = None
    points: Points | None = None
    z_limits: tuple[int, int] | None = None


def medsam2_segment_volume(
    predictor: MemoryPredictor,
    volume: Any,
    prompts: Sequence[KeySlicePrompt],
    *,
    largest_component: bool = True,
    progress: bool = True,
    state: VideoState | None = None,
    source: str = "volume",
) -> np.ndarray:
    """MedSAM2's procedure for 3D (medsam2_infer_3D_CT.py): per object, the key-slice prompt, propagate up
    (towards higher z), reset, the same prompt again, propagate down, union of both sweeps, then the largest
    3D connected component. ``volume`` is (z, y, x) uint8, already windowed. Returns (z, y, x) labels: object i
    has value i + 1 (a later object wins where objects overlap). Slices are encoded once for all objects."""
    from tqdm.auto import tqdm

    from medsam.inference.propagate import largest_component as keep_largest

    if not prompts:
        raise PromptError("no prompt: give at least one object (a box or clicks on its key slice)")
    state = state if state is not None else predictor.init_state(volume, source=source)
    for i, p in enumerate(prompts):  # every prompt is checked before any work
        predictor._check_frame(state, p.z)
        if p.box is None and (p.points is None or len(p.points) == 0):
            raise PromptError(f"object {i + 1}: give a box and/or points on slice {p.z}")
        if p.z_limits is not None:
            z0, z1 = (int(v) for v in p.z_limits)
            if not (0 <= z0 <= p.z <= z1 < state.num_frames):
                raise PromptError(
                    f"object {i + 1}: z range {z0}..{z1} must hold its key slice {p.z} and lie within the "
                    f"{state.num_frames} slices 0..{state.num_frames - 1}"
                )
    depth, (h, w) = state.num_frames, state.frame_hw
    labels = np.zeros((depth, h, w), dtype=np.uint8 if len(prompts) < 256 else np.uint16)
    total = sum(_extent(p, depth)[1] - _extent(p, depth)[0] + 2 for p in prompts)
    with tqdm(total=total, desc="MedSAM2", unit="slice", disable=not progress, leave=False) as bar:
        for i, p in enumerate(prompts):
            lo, hi = _extent(p, depth)
            segmentation = np.zeros((depth, h, w), dtype=bool)
            for reverse, span in ((False, hi - p.z), (True, p.z - lo)):
                state.reset()
                predictor.add_prompt(state, p.z, 1, box=p.box, points=p.points)
                for result in predictor.propagate(state, reverse=reverse, max_frames=span):
                    segmentation[result.frame] |= result.masks[0]
                    bar.update(1)
            state.reset()
            if largest_component and segmentation.any():
                segmentation = keep_largest(segmentation)
            labels[segmentation] = i + 1
    return labels


def _extent(p: KeySlicePrompt, depth: int) -> tuple[int, int]:
    return (int(p.z_limits[0]), int(p.z_limits[1])) if p.z_limits is not None else (0, depth - 1)


def track_video(
    predictor: MemoryPredictor,
    frames: Any,
    prompts: Sequence[KeySlicePrompt],
    *,
    progress: bool = True,
    source: str = "video",
    state: VideoState | None = None,
) -> np.ndarray:
    """SAM 2's video use: every object prompted on its frame in one session, tracked forwards from the first
    prompted frame, then backwards from the last one (the backward sweep sees the forward sweep's memories).
    Returns (t, h, w) labels, object i = value i + 1 (a later object wins overlaps)."""
    from tqdm.auto import tqdm

    if not prompts:
        raise PromptError("no prompt: give at least one box (or clicks) on a frame")
    state = state if state is not None else predictor.init_state(frames, source=source)
    for p in prompts:
        predictor._check_frame(state, p.z)
    limits = [p.z_limits for p in prompts if p.z_limits is not None]
    lo = min((l[0] for l in limits), default=0)
    hi = max((l[1] for l in limits), default=state.num_frames - 1)
    depth, (h, w) = state.num_frames, state.frame_hw
    for i, p in enumerate(prompts):
        predictor.add_prompt(state, p.z, i + 1, box=p.box, points=p.points)
    first, last = min(p.z for p in prompts), max(p.z for p in prompts)
    masks = np.zeros((len(prompts), depth, h, w), dtype=bool)
    with tqdm(total=(hi - first + 1) + (last - lo + 1), desc="tracking", unit="frame", disable=not progress,
              leave=False) as bar:
        for reverse, start, span in ((False, first, hi - first), (True, last, last - lo)):
            for result in predictor.propagate(state, start, reverse=reverse, max_frames=span):
                masks[:, result.frame] |= result.masks
                bar.update(1)
    labels = np.zeros((depth, h, w), dtype=np.uint8 if len(prompts) < 256 else np.uint16)
    for i in range(len(prompts)):
        labels[masks[i]] = i + 1
    return labels


def stack_segmentation(
    predictor: MemoryPredictor,
    slices: Any,
    prompts: Sequence[Any],
    *,
    procedure: str = "medsam2",
    progress: bool = True,
    source: str = "volume",
    largest_component: bool = True,
):
    """The memory models' answer where the toolkit propagates (``segment-volume``, ``segment-video``,
    ``evaluate``): ``medsam.inference.propagate.ObjectPrompt`` prompts in, a ``StackSegmentation`` out.
    procedure: "medsam2" (volumes: :func:`medsam2_segment_volume`) or "video" (:func:`track_video`)."""
    import time

    from medsam.inference.propagate import ObjectTrackSummary, StackSegmentation

    keyed = [KeySlicePrompt(int(p.z), p.box, p.points, p.z_limits) for p in prompts]
    start = time.perf_counter()
    state = predictor.init_state(slices, source=source)
    if procedure == "video":
        labels = track_video(predictor, slices, keyed, progress=progress, state=state)
    else:
        labels = medsam2_segment_volume(predictor, slices, keyed, progress=progress, state=state,
                                        largest_component=largest_component)
    summaries = []
    for i in range(len(keyed)):
        zs = np.flatnonzero((labels == i + 1).reshape(labels.shape[0], -1).any(axis=1))
        z_range = (int(zs[0]), int(zs[-1])) if zs.size else None
        summaries.append(ObjectTrackSummary(i, i + 1, z_range, int((labels == i + 1).sum()), ()))
    return StackSegmentation(labels, tuple(summaries), state.visited, state.encoded, time.perf_counter() - start)
