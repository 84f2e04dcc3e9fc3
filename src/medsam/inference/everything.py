"""Segment everything: mask proposals for every structure of a 2D image, from prompts spread over it.

    from medsam.models.registry import build_model
    from medsam.inference.everything import AutomaticSegmenter

    segmenter = AutomaticSegmenter(build_model("lite_medsam"))      # or a Predictor
    instances = segmenter.generate(image)                            # list[InstanceMask], largest first
    result = segmenter.run(image)                                    # the same plus counts and timings
    proposals = propose(segmenter, image)                            # JSON-ready (RLE) for an app

The algorithm is SAM's automatic mask generation, adapted to medical images and to a CPU:

1. The image is encoded once (each crop window once, in one batch when ``crop_layers`` > 0).
2. Prompts sit on an n x n grid (``grid``), visited coarse to fine. Points on background (outside the body
   or the field of view, see :mod:`medsam.inference.amg.foreground`) are skipped.
3. Prompts go to the decoder ``points_per_batch`` at a time. With ``progressive``, before each batch the
   prompts whose point falls inside a mask already accepted are dropped: for point prompts, inside any
   mask covering at most ``cover_max_frac`` of the foreground (so a whole-body mask does not hide the
   organs in it); for box prompts, inside a mask of about the box's size (within ``cover_scale_ratio``),
   so a point in a found organ is still tried with much smaller boxes (its parts) and larger ones.
   Only masks with a predicted IoU of at least ``cover_min_iou`` cover points.
4. The prompt depends on the model (``prompt_mode``). SAM models get one positive point and return three
   masks (whole, part, sub-part). LiteMedSAM and MedSAM were trained with boxes only and return noise
   for a lone point, so grid points get square boxes (``anchors``): each :class:`BoxAnchor` has a side
   in grid spacings (the spacing is the image's longer side / ``grid``), a stride (every stride-th grid
   point gets it: large boxes need fewer centres) and a refine flag: the mask of a refined box is
   prompted again with its own tight box grown by ``refine_margin``, which snaps a box that straddles an
   object onto it, and the better of the two (by predicted IoU) is kept. A denser ``grid`` therefore
   means smaller boxes as well as more of them, as with SAM's points.
5. A mask is kept when its predicted IoU exceeds ``pred_iou_thresh`` and its stability score (the IoU of
   the mask cut at logit +``stability_offset`` with the one cut at -``stability_offset``) reaches
   ``stability_thresh``; masks of a crop that run into the crop's inner edges, and masks mostly
   (more than ``max_background_frac``) on background, are dropped (the background is found as in step 2
   even when ``skip_background`` is off, which only stops the skipping of points).
6. Duplicates are removed by non-maximum suppression on boxes or masks (``nms_mode``, IoU ``nms_iou``),
   within each crop by predicted IoU, then across crops preferring the smaller crop.
7. Holes and islands smaller than ``min_area_px`` are removed, masks smaller than it dropped, and
   suppression runs once more preferring masks that needed no cleaning.

The decoder runs through :class:`medsam.inference.amg.shared_decoder.SharedEmbeddingDecoder` (exact; it
does the per-image part of the decoder once instead of once per prompt); ``shared_decoder=False`` uses the
predictor's own decoder instead (e.g. an execution engine's).

Coordinates: points (x, y), boxes (x0, y0, x1, y1) with x1/y1 inclusive, in pixels of the image given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from medsam.errors import InputError
from medsam.inference.amg.filters import near_crop_edge, remove_small_regions, stability_score
from medsam.inference.amg.foreground import BackgroundRule, ForegroundMask, foreground_mask
from medsam.inference.amg.grid import CropBox, anchor_boxes, coarse_to_fine_order, crop_boxes, grid_points
from medsam.inference.amg.nms import nms_boxes, nms_masks
from medsam.inference.amg.patch import MaskPatch
from medsam.inference.amg.rle import Rle, encode_rle
from medsam.inference.amg.shared_decoder import SharedEmbeddingDecoder
from medsam.inference.predictor import ImageEncoding, Predictor, upscale_logits
from medsam.preprocess.geometry import check_image_shape
from medsam.preprocess.intensity import to_display_range

PromptMode = Literal["auto", "points", "boxes"]
NmsMode = Literal["box", "mask"]

#: Models trained with box prompts only; "auto" gives them box prompts (a lone point returns noise).
BOX_TRAINED_PREFIXES = ("lite_medsam", "medsam")
MAX_GRID = 128  # 16,384 prompts per crop: beyond this a CPU run takes hours and a denser grid finds nothing new
MIN_AREA_FRACTION = 2e-4  # default min_area_px as a share of the image


@dataclass(frozen=True)
class ModeDefaults:
    """Thresholds used when the caller leaves them unset, per prompt mode."""

    pred_iou_thresh: float
    stability_thresh: float
    nms_mode: NmsMode
    cover_min_iou: float


@dataclass(frozen=True)
class BoxAnchor:
    """Box prompts of one size: ``size`` is the side in grid spacings, ``stride`` which grid points get it
    (every stride-th row and column), ``refine`` whether its masks are prompted again with their own box."""

    size: float
    stride: int = 1
    refine: bool = False


#: Measured on LiteMedSAM and the CT slices of ../shared (benchmarks/everything.py): small boxes on every
#: point, unrefined (refining them found nothing more); boxes of 2.5 and 5 spacings on every other point,
#: refined (refinement lifts the predicted IoU of the right mask above the threshold).
DEFAULT_ANCHORS = (BoxAnchor(1.25, 1, False), BoxAnchor(2.5, 2, True), BoxAnchor(5.0, 2, True))


def parse_anchors(text: str) -> tuple[BoxAnchor, ...]:
    """Anchors from text: comma-separated ``SIZE[:STRIDE[:r]]`` (``r`` = refine), e.g. the default
    ``"1.25,2.5:2:r,5:2:r"``; dense small objects (cells at ``--grid 32``) do better with ``"1.25,2.5"``."""
    anchors = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        fields = [f.strip() for f in part.split(":")]
        try:
            if len(fields) > 3 or (len(fields) == 3 and fields[2].lower() not in ("r", "refine")):
                raise ValueError
            size = float(fields[0])
            stride = int(fields[1]) if len(fields) > 1 and fields[1] else 1
        except ValueError:
            raise InputError(
                f"anchors {text!r}: {part!r} is not SIZE[:STRIDE[:r]] (a box side in grid spacings, every "
                "STRIDE-th grid point, r to refine), e.g. \"1.25,2.5:2:r,5:2:r\""
            ) from None
        anchors.append(BoxAnchor(size, stride, len(fields) == 3))
    if not anchors:
        raise InputError(f"anchors {text!r}: give at least one SIZE[:STRIDE[:r]]")
    return tuple(anchors)


def format_anchors(anchors: Sequence[BoxAnchor]) -> str:
    return ",".join(f"{a.size:g}" + (f":{a.stride}" if a.stride != 1 or a.refine else "") + (":r" if a.refine else "") for a in anchors)


#: points: SAM's own defaults. boxes: measured on LiteMedSAM and the CT slices of ../shared
#: (benchmarks/everything.py): its predicted IoUs and stability scores for box prompts run lower than SAM's
#: for points (the masks that match an organ score 0.7-0.9 and 0.65-0.9), and SAM's 0.88 / 0.95 keep
#: nothing at all; 0.75 / 0.7 keep every organ the prompts find. Only masks of predicted IoU >= cover_min_iou
#: mark their points as covered for progressive sampling: with 0.75, doubtful masks hid two of the eight
#: organs of a pelvis slice; with 0.85 none.
MODE_DEFAULTS = {
    "points": ModeDefaults(0.88, 0.95, "box", 0.88),
    "boxes": ModeDefaults(0.75, 0.7, "box", 0.85),
}


@dataclass(frozen=True)
class InstanceMask:
    """One proposed object.

    mask: (H, W) bool; box: tight (x0, y0, x1, y1), x1/y1 inclusive; area in pixels; predicted_iou: the
    model's own quality estimate; stability_score: see the module docstring; point: the grid point (x, y)
    that produced it; prompt_box: the box prompt (x0, y0, x1, y1) when boxes were used, else None;
    crop_box: the window (x0, y0, x1, y1), x1/y1 exclusive, the mask was found in.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    prompt_box: tuple[float, float, float, float] | None
    crop_box: tuple[int, int, int, int]

    def rle(self) -> Rle:
        return encode_rle(self.mask)

    def bbox_xywh(self) -> tuple[int, int, int, int]:
        """COCO box: (x, y, width, height) covering whole pixels (width = x1 - x0 + 1)."""
        x0, y0, x1, y1 = self.box
        return x0, y0, x1 - x0 + 1, y1 - y0 + 1

    def to_proposal(self, proposal_id: int, *, compressed: bool = True) -> "Proposal":
        coco = self.rle().to_coco(compressed=compressed)
        return Proposal(
            id=int(proposal_id),
            segmentation=coco,
            bbox=tuple(int(v) for v in self.bbox_xywh()),  # type: ignore[arg-type]
            area=int(self.area),
            predicted_iou=float(self.predicted_iou),
            stability_score=float(self.stability_score),
            point_coords=((float(self.point[0]), float(self.point[1])),),
            prompt_box=None if self.prompt_box is None else tuple(float(v) for v in self.prompt_box),  # type: ignore[arg-type]
            crop_box=tuple(int(v) for v in self.crop_box),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Proposal:
    """A proposal in plain types, ready for ``json.dumps(dataclasses.asdict(p))``: the COCO annotation
    fields (segmentation as RLE, bbox as x, y, width, height) and the scores; ids start at 1."""

    id: int
    segmentation: dict[str, Any]
    bbox: tuple[int, int, int, int]
    area: int
    predicted_iou: float
    stability_score: float
    point_coords: tuple[tuple[float, float], ...]
    prompt_box: tuple[float, float, float, float] | None
    crop_box: tuple[int, int, int, int]


@dataclass(frozen=True)
class EverythingStats:
    """What a run did. grid_points: points of all crops' grids; skipped_background / skipped_covered:
    points not prompted by the background rule / progressive sampling; prompts: prompts decoded (a point
    with 3 box anchors counts 3, a refinement counts again); candidates: masks that passed the quality
    filters; kept: masks returned. Times in seconds."""

    grid_points: int
    skipped_background: int
    skipped_covered: int
    prompts: int
    decoder_calls: int
    candidates: int
    kept: int
    crops: int
    encode_s: float
    decode_s: float
    postprocess_s: float
    total_s: float
    foreground_reason: str


@dataclass(frozen=True)
class EverythingResult:
    instances: tuple[InstanceMask, ...]
    foreground: ForegroundMask
    stats: EverythingStats
    image_hw: tuple[int, int]


@dataclass
class _Candidate:
    patch: MaskPatch
    predicted_iou: float
    stability: float
    point: tuple[float, float]
    prompt_box: tuple[float, float, float, float] | None
    crop: CropBox


@dataclass
class _Counters:
    grid_points: int = 0
    skipped_background: int = 0
    skipped_covered: int = 0
    prompts: int = 0
    decoder_calls: int = 0
    decode_s: float = 0.0
    post_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class AutomaticSegmenter:
    """Mask proposals for every structure of an image; see the module docstring for the algorithm.

    model_or_predictor: a model from ``build_model`` or a :class:`Predictor` (its embedding cache is reused).
    Parameters keep SAM's names where they mean the same. Left as None: ``pred_iou_thresh``,
    ``stability_thresh`` and ``nms_mode`` come from :data:`MODE_DEFAULTS` for the prompt mode, and
    ``min_area_px`` is 0.02% of the image. Bad values raise InputError naming the parameter.
    """

    def __init__(
        self,
        model_or_predictor: Any,
        *,
        grid: int = 16,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_thresh: float | None = None,
        stability_offset: float = 1.0,
        nms_iou: float = 0.7,
        nms_mode: NmsMode | None = None,
        min_area_px: int | None = None,
        crop_layers: int = 0,
        crop_overlap: float = 512 / 1500,
        crop_points_downscale: int = 1,
        crop_nms_iou: float | None = None,
        skip_background: bool = True,
        background_rule: BackgroundRule = BackgroundRule(),
        max_background_frac: float = 0.5,
        progressive: bool = True,
        cover_max_frac: float = 0.25,
        cover_scale_ratio: float = 2.0,
        cover_min_iou: float | None = None,
        prompt_mode: PromptMode = "auto",
        anchors: Sequence[BoxAnchor] = DEFAULT_ANCHORS,
        refine_margin: float = 0.05,
        encode_batch: int = 4,
        shared_decoder: bool = True,
    ) -> None:
        self.predictor = model_or_predictor if isinstance(model_or_predictor, Predictor) else Predictor(model_or_predictor)
        self.shared_decoder = SharedEmbeddingDecoder(self.predictor.model) if shared_decoder else None
        _check_int("grid", grid, 1, MAX_GRID, hint="16 is typical; 32 finds smaller structures")
        _check_int("points_per_batch", points_per_batch, 1, 4096, hint="64 is typical")
        _check_int("crop_layers", crop_layers, 0, 3, hint="0 (no crops) or 1 (4 tiles) are typical")
        _check_int("crop_points_downscale", crop_points_downscale, 1, 16, hint="1 keeps the grid in every crop")
        _check_int("encode_batch", encode_batch, 1, 64, hint="4 is typical")
        if prompt_mode not in ("auto", "points", "boxes"):
            raise InputError(f"prompt_mode {prompt_mode!r}: choose 'auto', 'points' or 'boxes'")
        self.prompt_mode = self._resolve_prompt_mode(prompt_mode)
        defaults = MODE_DEFAULTS[self.prompt_mode]
        pred_iou_thresh = defaults.pred_iou_thresh if pred_iou_thresh is None else pred_iou_thresh
        stability_thresh = defaults.stability_thresh if stability_thresh is None else stability_thresh
        nms_mode = defaults.nms_mode if nms_mode is None else nms_mode
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh), ("stability_thresh", stability_thresh), ("nms_iou", nms_iou),
            ("max_background_frac", max_background_frac), ("cover_max_frac", cover_max_frac),
            ("crop_overlap", crop_overlap),
        ):
            _check_fraction(name, value)
        if crop_nms_iou is not None:
            _check_fraction("crop_nms_iou", crop_nms_iou)
        if not stability_offset > 0:
            raise InputError(f"stability_offset {stability_offset}: must be a positive logit offset (1.0 is typical)")
        if min_area_px is not None and (not np.isfinite(min_area_px) or min_area_px < 0):
            raise InputError(f"min_area_px {min_area_px}: give a pixel count >= 0 (0 keeps every hole and island)")
        if nms_mode not in ("box", "mask"):
            raise InputError(f"nms_mode {nms_mode!r}: choose 'box' or 'mask'")
        anchors = tuple(anchors)
        if not anchors or any(
            not isinstance(a, BoxAnchor) or not (0 < a.size <= 4 * MAX_GRID) or not (1 <= int(a.stride) <= MAX_GRID)
            for a in anchors
        ):
            raise InputError(
                f"anchors {anchors!r}: give one or more BoxAnchor(size, stride, refine) with a size > 0 in grid "
                "spacings and a stride of 1 or more"
            )
        _check_fraction("refine_margin", refine_margin)
        self.grid = int(grid)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_thresh = float(stability_thresh)
        self.stability_offset = float(stability_offset)
        self.nms_iou = float(nms_iou)
        self.nms_mode: NmsMode = nms_mode
        self.min_area_px = None if min_area_px is None else int(min_area_px)
        self.crop_layers = int(crop_layers)
        self.crop_overlap = float(crop_overlap)
        self.crop_points_downscale = int(crop_points_downscale)
        self.crop_nms_iou = float(crop_nms_iou) if crop_nms_iou is not None else float(nms_iou)
        self.skip_background = bool(skip_background)
        self.background_rule = background_rule
        self.max_background_frac = float(max_background_frac)
        self.progressive = bool(progressive)
        self.cover_max_frac = float(cover_max_frac)
        if not cover_scale_ratio >= 1:
            raise InputError(f"cover_scale_ratio {cover_scale_ratio}: must be 1 or more (2 is typical)")
        self.cover_scale_ratio = float(cover_scale_ratio)
        if cover_min_iou is not None:
            _check_fraction("cover_min_iou", cover_min_iou)
        self.cover_min_iou = defaults.cover_min_iou if cover_min_iou is None else float(cover_min_iou)
        self.anchors: tuple[BoxAnchor, ...] = anchors
        self.refine_margin = float(refine_margin)
        self.encode_batch = int(encode_batch)

    def _resolve_prompt_mode(self, mode: PromptMode) -> Literal["points", "boxes"]:
        if mode != "auto":
            return mode
        name = getattr(getattr(self.predictor.model, "spec", None), "name", "")
        return "boxes" if name.startswith(BOX_TRAINED_PREFIXES) else "points"

    # --- public API -----------------------------------------------------------------------------------

    def generate(self, image: np.ndarray, *, source: str = "image") -> list[InstanceMask]:
        """Proposals for ``image`` ((H, W) or (H, W, 3|4), any bit depth), largest first."""
        return list(self.run(image, source=source).instances)

    def run(self, image: np.ndarray, *, source: str = "image") -> EverythingResult:
        """Like :meth:`generate`, with the foreground mask used and what the run did (:class:`EverythingStats`)."""
        start = time.perf_counter()
        display = _display_uint8(image, source=source)
        h, w = display.shape[:2]
        fg = foreground_mask(display, self.background_rule)
        crops = crop_boxes((h, w), self.crop_layers, self.crop_overlap)
        t0 = time.perf_counter()
        encodings = self._encode_crops(display, crops, source)
        encode_s = time.perf_counter() - t0
        counters = _Counters()
        all_candidates: list[_Candidate] = []
        for crop, enc in zip(crops, encodings):
            if enc is None:
                continue
            found = self._process_crop(crop, enc, fg, (h, w), counters)
            all_candidates.extend(found)
        n_candidates = len(all_candidates)
        t0 = time.perf_counter()
        kept = self._merge_crops(all_candidates, len(crops))
        kept = self._clean(kept, (h, w))
        instances = sorted((self._instance(c) for c in kept), key=lambda m: (-m.area, m.box))
        post_s = counters.post_s + time.perf_counter() - t0
        stats = EverythingStats(
            grid_points=counters.grid_points,
            skipped_background=counters.skipped_background,
            skipped_covered=counters.skipped_covered,
            prompts=counters.prompts,
            decoder_calls=counters.decoder_calls,
            candidates=n_candidates,
            kept=len(instances),
            crops=len(crops),
            encode_s=encode_s,
            decode_s=counters.decode_s,
            postprocess_s=post_s,
            total_s=time.perf_counter() - start,
            foreground_reason=fg.reason,
        )
        return EverythingResult(tuple(instances), fg, stats, (h, w))

    def min_area_for(self, image_hw: tuple[int, int]) -> int:
        """The min_area_px in effect for an image of this size."""
        if self.min_area_px is not None:
            return self.min_area_px
        return max(1, int(round(MIN_AREA_FRACTION * image_hw[0] * image_hw[1])))

    # --- steps ----------------------------------------------------------------------------------------

    def _encode_crops(self, display: np.ndarray, crops: list[CropBox], source: str) -> list[ImageEncoding | None]:
        prepared, where = [], []
        for i, crop in enumerate(crops):
            window = display[crop.y0 : crop.y1, crop.x0 : crop.x1]
            if i > 0 and (window.size == 0 or window.max() == window.min()):
                continue  # a flat tile (e.g. all outside the body) has nothing to find
            prepared.append(self.predictor.prepare(window, source=f"{source} crop {crop.as_tuple()}" if i else source))
            where.append(i)
        encoded = self.predictor.encode_prepared(prepared, batch_size=self.encode_batch)
        out: list[ImageEncoding | None] = [None] * len(crops)
        for i, enc in zip(where, encoded):
            out[i] = enc
        return out

    def _process_crop(
        self, crop: CropBox, enc: ImageEncoding, fg: ForegroundMask, image_hw: tuple[int, int], counters: _Counters
    ) -> list[_Candidate]:
        n = max(1, self.grid // (self.crop_points_downscale**crop.layer))
        order = coarse_to_fine_order(n)
        points = grid_points(crop.hw, n) + np.array([crop.x0, crop.y0], dtype=np.float64)
        rows, cols = order // n, order % n
        counters.grid_points += len(points)
        if self.skip_background:
            on_fg = fg.mask[np.rint(points[:, 1]).astype(int), np.rint(points[:, 0]).astype(int)]
            counters.skipped_background += int((~on_fg).sum())
            points, rows, cols = points[on_fg], rows[on_fg], cols[on_fg]
        spacing = max(crop.hw) / n
        fg_area = max(1, int(fg.mask[crop.y0 : crop.y1, crop.x0 : crop.x1].sum()))
        # The queue holds (x, y, anchor index): one item per point for point prompts (index -1); for box
        # prompts one per point and anchor whose stride takes that point, the larger box first.
        if self.prompt_mode == "points":
            items = np.concatenate([points, np.full((len(points), 1), -1.0)], axis=1)
        else:
            by_size = sorted(range(len(self.anchors)), key=lambda k: -self.anchors[k].size)
            parts = []
            for i in range(len(points)):
                for k in by_size:
                    m = int(self.anchors[k].stride)
                    if rows[i] % m == m // 2 and cols[i] % m == m // 2:
                        parts.append((points[i, 0], points[i, 1], float(k)))
            items = np.array(parts, dtype=np.float64).reshape(-1, 3)
        n_maps = 1 if self.prompt_mode == "points" else len(self.anchors)
        covered = np.zeros((n_maps,) + tuple(image_hw), dtype=bool)
        box_sides = np.array([a.size * spacing for a in self.anchors])
        candidates: list[_Candidate] = []
        pending = items
        while len(pending):
            if self.progressive and candidates:
                ix = np.rint(pending[:, 0]).astype(int)
                iy = np.rint(pending[:, 1]).astype(int)
                which = np.maximum(pending[:, 2], 0).astype(int)
                hit = covered[which, iy, ix]
                counters.skipped_covered += int(hit.sum())
                pending = pending[~hit]
                if not len(pending):
                    break
            batch, pending = pending[: self.points_per_batch], pending[self.points_per_batch :]
            found = self._process_batch(batch, crop, enc, fg, spacing, image_hw, counters)
            candidates.extend(found)
            if self.progressive:
                for c in found:
                    if c.predicted_iou < self.cover_min_iou:
                        continue
                    for k in self._covered_maps(c.patch.area, fg_area, box_sides):
                        x0, y0, x1, y1 = c.patch.box
                        covered[k, y0 : y1 + 1, x0 : x1 + 1] |= c.patch.pixels
        t0 = time.perf_counter()
        if candidates:
            keep = self._nms(candidates, np.array([c.predicted_iou for c in candidates]), self.nms_iou)
            candidates = [candidates[i] for i in keep]
        counters.post_s += time.perf_counter() - t0
        return candidates

    def _covered_maps(self, area: int, fg_area: int, box_sides: np.ndarray) -> list[int]:
        """Which coverage maps a found mask marks. Point prompts: one map, for masks up to cover_max_frac of
        the foreground. Box prompts: the maps of the box sizes within cover_scale_ratio of the mask's size
        (the side of a square of its area), so a point inside a found organ is still prompted with boxes
        much smaller (its parts) or much larger (what contains it)."""
        if self.prompt_mode == "points":
            return [0] if area <= self.cover_max_frac * fg_area else []
        size = np.sqrt(area)
        r = self.cover_scale_ratio
        return [k for k, b in enumerate(box_sides) if b / r <= size <= b * r]

    def _process_batch(
        self,
        items: np.ndarray,
        crop: CropBox,
        enc: ImageEncoding,
        fg: ForegroundMask,
        spacing: float,
        image_hw: tuple[int, int],
        counters: _Counters,
    ) -> list[_Candidate]:
        """Decode a batch of queue items (x, y, scale index) and keep the masks that pass the filters."""
        points = items[:, :2]
        local = points - np.array([crop.x0, crop.y0], dtype=np.float64)
        if self.prompt_mode == "points":
            logits, iou = self._decode(enc, points=local, counters=counters)
            m = logits.shape[1]
            prompt_boxes = None
        else:
            which = items[:, 2].astype(int)
            sides = np.array([a.size for a in self.anchors])[which] * spacing
            boxes = anchor_boxes(local, sides, crop.hw)
            logits, iou = self._decode(enc, boxes=boxes, counters=counters)
            m = 1
            prompt_boxes = boxes
            refine = np.flatnonzero(np.array([a.refine for a in self.anchors])[which])
            if refine.size:
                logits, iou, prompt_boxes = self._refine(enc, logits, iou, boxes, refine, crop, counters)
        t0 = time.perf_counter()
        # rows: prompt-major, then mask index
        logits = logits.reshape(-1, *logits.shape[-2:])
        iou = iou.reshape(-1)
        row_points = np.repeat(points, m, axis=0)
        iou_np = iou.float().cpu().numpy()
        keep = np.flatnonzero(iou_np > self.pred_iou_thresh) if self.pred_iou_thresh > 0 else np.arange(len(iou_np))
        out: list[_Candidate] = []
        chunk = max(1, int(2**24 // max(1, crop.area)))  # bounds the float logits upscaled at once (~64 MB)
        for s in range(0, len(keep), chunk):
            idx = keep[s : s + chunk]
            up = upscale_logits(logits[torch.as_tensor(idx)][:, None], enc.transform, self.predictor.config)[:, 0]
            stab = stability_score(up, 0.0, self.stability_offset).cpu().numpy()
            masks = (up > 0).cpu().numpy()
            for j, row in enumerate(idx):
                if self.stability_thresh > 0 and stab[j] < self.stability_thresh:
                    continue
                patch = MaskPatch.from_mask(masks[j], (crop.x0, crop.y0), image_hw)
                if patch is None:
                    continue
                if crop.layer > 0 and near_crop_edge(np.array([patch.box]), crop.as_tuple(), image_hw)[0]:
                    continue
                if self.max_background_frac < 1 and fg.reference is not None and self._background_share(patch, fg) > self.max_background_frac:
                    continue
                pb = None
                if prompt_boxes is not None:
                    b = prompt_boxes[row]
                    pb = (b[0] + crop.x0, b[1] + crop.y0, b[2] + crop.x0, b[3] + crop.y0)
                px, py = row_points[row]
                out.append(_Candidate(patch, float(iou_np[row]), float(stab[j]), (float(px), float(py)), pb, crop))
        counters.post_s += time.perf_counter() - t0
        return out

    @staticmethod
    def _background_share(patch: MaskPatch, fg: ForegroundMask) -> float:
        x0, y0, x1, y1 = patch.box
        outside = patch.pixels & ~fg.mask[y0 : y1 + 1, x0 : x1 + 1]
        return float(outside.sum()) / max(1, patch.area)

    def _decode(
        self, enc: ImageEncoding, *, counters: _Counters, points: np.ndarray | None = None, boxes: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in crop pixels -> low-res logits (P, M, h, w) and predicted IoU (P, M), in decoder calls of
        at most points_per_batch prompts."""
        t0 = time.perf_counter()
        device = self.predictor.device
        t = enc.transform
        if points is not None:
            pts = torch.as_tensor(t.points_to_input(points), dtype=torch.float32, device=device)[:, None, :]
            labels = torch.ones(pts.shape[:2], dtype=torch.int64, device=device)
            prompts = dict(points=pts, point_labels=labels)
            n, multimask = len(points), True
        else:
            prompts = dict(boxes=torch.as_tensor(t.boxes_to_input(boxes), dtype=torch.float32, device=device))
            n, multimask = len(boxes), False
        step = self.points_per_batch
        outs, ious = [], []
        with torch.inference_mode():
            for s in range(0, n, step):
                part = {k: v[s : s + step] for k, v in prompts.items()}
                if self.shared_decoder is not None:
                    logits, iou = self.shared_decoder(enc.embedding, multimask=multimask, **part)
                else:
                    logits, iou = self.predictor.predict_torch(enc.embedding, multimask=multimask, **part)
                outs.append(logits)
                ious.append(iou)
                counters.decoder_calls += 1
        counters.prompts += n
        counters.decode_s += time.perf_counter() - t0
        return torch.cat(outs), torch.cat(ious)

    def _refine(
        self,
        enc: ImageEncoding,
        logits: torch.Tensor,
        iou: torch.Tensor,
        boxes: np.ndarray,
        rows: np.ndarray,
        crop: CropBox,
        counters: _Counters,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Prompt the masks of ``rows`` again with their own tight box (grown by refine_margin); keep, per row,
        whichever of the two masks has the higher predicted IoU."""
        t0 = time.perf_counter()
        h, w = crop.hw
        tight = lowres_boxes(logits[torch.as_tensor(rows), 0], enc.transform, self.predictor.config)
        valid = tight[:, 2] >= tight[:, 0]
        grow = np.maximum(2.0, self.refine_margin * np.stack([tight[:, 2] - tight[:, 0], tight[:, 3] - tight[:, 1]], 1))
        new = np.concatenate([tight[:, :2] - grow, tight[:, 2:] + grow], axis=1)
        new = np.clip(new, 0, [w - 1, h - 1, w - 1, h - 1])
        counters.post_s += time.perf_counter() - t0
        rows, new = rows[valid], new[valid]
        if rows.size == 0:
            return logits, iou, boxes
        logits2, iou2 = self._decode(enc, boxes=new, counters=counters)
        better = (iou2[:, 0] > iou[torch.as_tensor(rows), 0]).cpu().numpy()
        out_logits, out_iou, out_boxes = logits.clone(), iou.clone(), boxes.copy()
        sel, src = rows[better], torch.as_tensor(np.flatnonzero(better))
        out_logits[torch.as_tensor(sel)] = logits2[src]
        out_iou[torch.as_tensor(sel)] = iou2[src]
        out_boxes[sel] = new[better]
        return out_logits, out_iou, out_boxes

    def _nms(self, candidates: list[_Candidate], scores: np.ndarray, iou: float) -> np.ndarray:
        if self.nms_mode == "mask":
            return nms_masks([c.patch for c in candidates], scores, iou)
        return nms_boxes(np.array([c.patch.box for c in candidates], dtype=np.float64), scores, iou)

    def _merge_crops(self, candidates: list[_Candidate], n_crops: int) -> list[_Candidate]:
        if n_crops <= 1 or not candidates:
            return candidates
        scores = np.array([1.0 / c.crop.area for c in candidates])  # the smaller crop saw the object larger
        return [candidates[i] for i in self._nms(candidates, scores, self.crop_nms_iou)]

    def _clean(self, candidates: list[_Candidate], image_hw: tuple[int, int]) -> list[_Candidate]:
        min_area = self.min_area_for(image_hw)
        if min_area <= 1 or not candidates:
            return candidates
        cleaned, scores = [], []
        for c in candidates:
            pixels, changed = remove_small_regions(c.patch.pixels, min_area)
            if changed:
                x0, y0 = c.patch.box[:2]
                patch = MaskPatch.from_mask(pixels, (x0, y0), image_hw)
                if patch is None:
                    continue
                c = _Candidate(patch, c.predicted_iou, c.stability, c.point, c.prompt_box, c.crop)
            if c.patch.area < min_area:
                continue
            cleaned.append(c)
            scores.append((0.0 if changed else 2.0) + c.predicted_iou)  # prefer masks that needed no cleaning
        if not cleaned:
            return []
        keep = self._nms(cleaned, np.array(scores), self.nms_iou)
        return [cleaned[i] for i in keep]

    @staticmethod
    def _instance(c: _Candidate) -> InstanceMask:
        return InstanceMask(
            mask=c.patch.to_mask(),
            box=tuple(int(v) for v in c.patch.box),  # type: ignore[arg-type]
            area=c.patch.area,
            predicted_iou=c.predicted_iou,
            stability_score=c.stability,
            point=c.point,
            prompt_box=c.prompt_box,
            crop_box=c.crop.as_tuple(),
        )


def propose(segmenter: AutomaticSegmenter, image: np.ndarray, *, compressed: bool = True) -> list[Proposal]:
    """The proposals for ``image`` as JSON-ready dataclasses (ids 1..N, largest first), for a server or app."""
    return [m.to_proposal(i + 1, compressed=compressed) for i, m in enumerate(segmenter.generate(image))]


def lowres_boxes(logits: torch.Tensor, transform: Any, config: Any) -> np.ndarray:
    """(N, h, w) low-res logits -> (N, 4) boxes (x0, y0, x1, y1) in original pixels of the masks' positive
    part, read at the decoder's resolution (no upscaling); an empty mask gives (0, 0, -1, -1)."""
    from medsam.inference.amg.filters import masks_to_boxes

    lr_h, lr_w = logits.shape[-2:]
    h, w = transform.original_hw
    if config.resize == "square":
        vh, vw = lr_h, lr_w
    else:
        rh, rw = transform.resized_hw
        vh = max(1, int(round(rh * lr_h / transform.input_size)))
        vw = max(1, int(round(rw * lr_w / transform.input_size)))
    boxes = masks_to_boxes((logits[:, :vh, :vw] > 0).cpu().numpy()).astype(np.float64)
    empty = boxes[:, 2] < boxes[:, 0]
    sx, sy = w / vw, h / vh
    out = np.stack([boxes[:, 0] * sx, boxes[:, 1] * sy, (boxes[:, 2] + 1) * sx - 1, (boxes[:, 3] + 1) * sy - 1], axis=1)
    out = np.clip(out, 0, [w - 1, h - 1, w - 1, h - 1])
    out[empty] = (0, 0, -1, -1)
    return out


def _display_uint8(image: np.ndarray, *, source: str) -> np.ndarray:
    """Validate and bring an image to uint8 0..255 once, so crops share one intensity mapping."""
    image = np.asarray(image)
    if image.size == 0:
        raise InputError(f"{source}: the image is empty (shape {image.shape}); give an image with pixels")
    check_image_shape(image, source=source)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    display = to_display_range(image, source=source)
    if display.dtype != np.uint8:
        display = np.clip(np.rint(display), 0, 255).astype(np.uint8)
    return display


def _check_int(name: str, value: Any, low: int, high: int, *, hint: str) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= int(value) <= high
    if not ok:
        raise InputError(f"{name} {value!r}: must be a whole number from {low} to {high} ({hint})")


def _check_fraction(name: str, value: Any) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} {value!r}: must be a number from 0 to 1") from None
    if not (0.0 <= v <= 1.0):
        raise InputError(f"{name} {value!r}: must be a number from 0 to 1")
