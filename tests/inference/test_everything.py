"""Segment everything: RLE, NMS, stability, regions, grids, the background rule, progressive sampling,
and the segmenter end to end (tiny random model; the real LiteMedSAM once, marked slow)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from medsam.errors import InputError
from medsam.inference.amg.filters import masks_to_boxes, near_crop_edge, remove_small_regions, stability_score
from medsam.inference.amg.foreground import BackgroundRule, foreground_mask
from medsam.inference.amg.grid import anchor_boxes, coarse_to_fine_order, crop_boxes, grid_points, unit_grid
from medsam.inference.amg.nms import box_iou, mask_iou, nms_boxes, nms_masks
from medsam.inference.amg.patch import MaskPatch
from medsam.inference.amg.rle import Rle, counts_to_string, decode_rle, encode_rle, string_to_counts
from medsam.inference.everything import AutomaticSegmenter, BoxAnchor, InstanceMask, _Candidate, propose

# --- RLE ------------------------------------------------------------------------------------------------


def test_rle_hand_computed():
    mask = np.array([[0, 1, 1], [1, 1, 0]], dtype=bool)
    # column-major: (0,1) (1,1) (1,0) -> 0 1 1 1 1 0
    rle = encode_rle(mask)
    assert rle.size == (2, 3)
    assert rle.counts == (1, 4, 1)
    assert rle.area == 4
    assert np.array_equal(decode_rle(rle), mask)


def test_rle_starting_with_a_set_pixel_and_empty_and_full():
    assert encode_rle(np.array([[1, 0], [1, 0]], bool)).counts == (0, 2, 2)
    assert encode_rle(np.zeros((3, 4), bool)).counts == (12,)
    assert encode_rle(np.ones((3, 4), bool)).counts == (0, 12)


@pytest.mark.parametrize(
    "counts, text",
    [
        ((1, 3), "13"),  # small counts are one character each: chr(48 + n)
        ((100,), "T3"),  # 100 = 4 + 3*32: group 4 with the continuation bit (chr(48+36)), then 3
        ((5, 3, 7, 2), "537O"),  # the 4th count is stored as 2 - 3 = -1: group 31 with the sign bit
        ((0, 16), "0`0"),  # 16 has the sign bit 0x10: continuation set (chr(48 + 48)), then a 0 group
    ],
)
def test_compressed_counts_hand_computed(counts, text):
    assert counts_to_string(counts) == text
    assert string_to_counts(text) == counts


def test_rle_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (64, 48), (33, 100)]:
        for density in (0.0, 0.05, 0.5, 1.0):
            mask = rng.random(shape) < density
            rle = encode_rle(mask)
            assert np.array_equal(decode_rle(rle), mask)
            for compressed in (True, False):
                coco = json.loads(json.dumps(rle.to_coco(compressed=compressed)))
                assert Rle.from_coco(coco) == rle


def test_rle_rejects_counts_that_do_not_fill_the_size():
    with pytest.raises(InputError, match="add up to 5"):
        Rle.from_coco({"size": [2, 3], "counts": [1, 4]})
    with pytest.raises(InputError, match="invalid character"):
        string_to_counts("1 3")


# --- NMS ------------------------------------------------------------------------------------------------


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 9, 9]])  # 10 x 10 pixels
    b = np.array([[1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 0, 0]])
    iou = box_iou(a, b)[0]
    assert iou[0] == pytest.approx(81 / 119)  # overlap 9 x 9 of two 100-pixel boxes
    assert iou[1] == 0.0
    assert iou[2] == pytest.approx(1 / 100)


def test_nms_boxes_hand_computed():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [21, 20, 29, 29]])
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    # IoU(0,1) = 0.68; IoU(2,3) = 90/100 = 0.9
    assert nms_boxes(boxes, scores, 0.7).tolist() == [1, 0, 3]
    assert nms_boxes(boxes, scores, 0.6).tolist() == [1, 3]
    assert nms_boxes(boxes, scores, 0.95).tolist() == [1, 0, 3, 2]
    assert nms_boxes(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_nms_ties_keep_input_order():
    boxes = np.array([[0, 0, 9, 9]] * 3)
    assert nms_boxes(boxes, np.array([0.5, 0.5, 0.5]), 0.5).tolist() == [0]


def _ring_and_disc(size=41):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size // 2, xx - size // 2)
    return (r <= 20) & (r > 10), r <= 10, r <= 20


def test_mask_nms_keeps_nested_structures_that_box_nms_merges():
    ring, disc, full = _ring_and_disc()
    patches = [MaskPatch.from_mask(m) for m in (ring, disc, full)]
    scores = np.array([0.9, 0.8, 0.7])
    boxes = np.array([p.box for p in patches])
    assert nms_boxes(boxes[[0, 2]], scores[[0, 2]], 0.7).tolist() == [0]  # same box: one survives
    # ring vs disc: disjoint; ring vs full: IoU = ring/full = 0.75 > 0.7; disc vs full: 0.25
    assert nms_masks(patches, scores, 0.7).tolist() == [0, 1]
    assert nms_masks(patches, scores, 0.8).tolist() == [0, 1, 2]
    assert mask_iou(ring[None], full[None])[0, 0] == pytest.approx(ring.sum() / full.sum())
    assert patches[0].iou(patches[2]) == pytest.approx(ring.sum() / full.sum())


# --- filters --------------------------------------------------------------------------------------------


def test_stability_score_hand_computed():
    logits = np.array([[-2.0, -0.5], [0.5, 2.0]])
    # > +1: one pixel; > -1: three pixels
    assert stability_score(logits) == pytest.approx(1 / 3)
    assert stability_score(logits, offset=0.25) == pytest.approx(2 / 2)
    assert float(stability_score(torch.tensor(logits[None]))[0]) == pytest.approx(1 / 3)
    assert stability_score(np.full((3, 3), -5.0)) == 0.0  # nothing above the low cut


def test_masks_to_boxes_inclusive_and_empty():
    m = np.zeros((2, 5, 6), bool)
    m[0, 1:3, 2:5] = True
    assert masks_to_boxes(m).tolist() == [[2, 1, 4, 2], [0, 0, -1, -1]]


def test_remove_small_regions_fills_holes_and_drops_islands():
    mask = np.zeros((12, 12), bool)
    mask[2:9, 2:9] = True
    mask[5, 5] = False  # a 1-pixel hole
    mask[10:12, 10:12] = True  # a 4-pixel island
    out, changed = remove_small_regions(mask, min_area=5)
    assert changed
    assert out[5, 5] and not out[10:, 10:].any() and out.sum() == 49
    same, changed = remove_small_regions(out, min_area=5)
    assert not changed and np.array_equal(same, out)


def test_remove_small_regions_keeps_notches_at_the_edge_and_the_largest_small_island():
    mask = np.zeros((6, 6), bool)
    mask[0:4, 0:4] = True
    mask[0, 1] = False  # a notch open to the outside: not a hole
    out, _ = remove_small_regions(mask, min_area=100)
    assert not out[0, 1]
    tiny = np.zeros((5, 5), bool)
    tiny[0, 0] = tiny[3, 3] = tiny[3, 4] = True
    out, changed = remove_small_regions(tiny, min_area=10)
    assert changed and out.sum() == 2 and out[3, 3]


def test_near_crop_edge_ignores_edges_shared_with_the_image():
    crop = (0, 0, 60, 60)  # the top-left tile of a 100 x 100 image
    boxes = np.array([[5, 5, 20, 20], [30, 30, 59, 40], [0, 0, 10, 10]])
    assert near_crop_edge(boxes, crop, (100, 100), tolerance=2).tolist() == [False, True, False]


# --- grids ----------------------------------------------------------------------------------------------


def test_unit_grid_and_pixel_grid():
    assert unit_grid(2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    pts = grid_points((40, 80), 2, ordered=False)
    assert pts.tolist() == [[19.5, 9.5], [59.5, 9.5], [19.5, 29.5], [59.5, 29.5]]


def test_coarse_to_fine_order_is_a_spread_out_permutation():
    order = coarse_to_fine_order(16)
    assert sorted(order.tolist()) == list(range(256))
    first = [(i // 16, i % 16) for i in order[:4]]
    assert first == [(4, 4), (4, 12), (12, 4), (12, 12)]
    assert coarse_to_fine_order(1).tolist() == [0]
    assert sorted(coarse_to_fine_order(5).tolist()) == list(range(25))


def test_crop_boxes_cover_the_image_with_overlap():
    boxes = crop_boxes((100, 200), 1, overlap_ratio=0.2)
    assert boxes[0].as_tuple() == (0, 0, 200, 100) and boxes[0].layer == 0
    tiles = boxes[1:]
    assert len(tiles) == 4 and all(t.layer == 1 for t in tiles)
    cover = np.zeros((100, 200), int)
    for t in tiles:
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert cover.min() >= 1 and cover.max() == 4  # every pixel covered, the centre by all four
    assert len(crop_boxes((100, 200), 2)) == 1 + 4 + 16


def test_anchor_boxes_clip_to_the_image():
    boxes = anchor_boxes(np.array([[5.0, 5.0], [50.0, 30.0]]), 20, (40, 60))
    assert boxes.tolist() == [[0, 0, 15, 15], [40, 20, 59, 39]]


# --- background rule ------------------------------------------------------------------------------------


def _body_image():
    """A 200 x 200 'CT slice': black air, a grey body ellipse with a black 'lung' inside it."""
    yy, xx = np.mgrid[:200, :200]
    img = np.zeros((200, 200), np.uint8)
    body = ((xx - 100) / 70.0) ** 2 + ((yy - 100) / 50.0) ** 2 <= 1
    img[body] = 130
    lung = ((xx - 80) / 15.0) ** 2 + ((yy - 100) / 15.0) ** 2 <= 1
    img[lung] = 0
    return img, body


def test_background_rule_on_a_synthetic_body():
    img, body = _body_image()
    fg = foreground_mask(img)
    assert fg.reason == "background found" and fg.reference == 0.0
    assert fg.mask[100, 80]  # the lung inside the body is body
    assert fg.mask[body].all()
    assert not fg.mask[5, 5] and not fg.mask[100, 190]  # air far from the body
    margin = BackgroundRule().margin_frac * 200
    yy, xx = np.mgrid[:200, :200]
    grown = ((xx - 100) / (70.0 + margin + 2)) ** 2 + ((yy - 100) / (50.0 + margin + 2)) ** 2 <= 1
    assert not fg.mask[~grown].any()  # nothing beyond the margin


def test_background_rule_finds_the_field_of_view_layer():
    img, body = _body_image()
    yy, xx = np.mgrid[:200, :200]
    fov = np.hypot(xx - 100, yy - 100) <= 95
    img = img.copy()
    img[fov & ~body] = 80  # air inside the scanner's circle shown grey, outside it black
    img[body] = 170
    fg = foreground_mask(img)
    assert fg.reason == "background and field of view found"
    assert fg.mask[body].all()
    assert not fg.mask[100, 185]  # grey air inside the circle, away from the body


def test_background_rule_gives_up_on_a_textured_border_and_on_tiny_foregrounds():
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    fg = foreground_mask(noisy, BackgroundRule(smooth_px=1))
    assert fg.reason == "border not uniform" and fg.mask.all()
    dot = np.zeros((100, 100), np.uint8)
    dot[50, 50] = 255
    fg = foreground_mask(dot, BackgroundRule(smooth_px=1, min_component_frac=0))
    assert fg.reason == "foreground too small" and fg.mask.all()


# --- the segmenter --------------------------------------------------------------------------------------


def _loose(model, **kw):
    """Thresholds off: the tiny random model's masks are noise, only the plumbing is under test."""
    args = dict(grid=4, pred_iou_thresh=0.0, stability_thresh=0.0, skip_background=False, max_background_frac=1.0, min_area_px=0)
    args.update(kw)
    return AutomaticSegmenter(model, **args)


@pytest.mark.parametrize("mode", ["points", "boxes"])
def test_tiny_model_end_to_end(tiny_lite, disc_image, mode):
    seg = _loose(tiny_lite, prompt_mode=mode)
    result = seg.run(disc_image)
    s = result.stats
    assert s.grid_points == 16 and s.prompts >= 16 and s.kept == len(result.instances) > 0
    areas = [m.area for m in result.instances]
    assert areas == sorted(areas, reverse=True)
    for inst in result.instances:
        assert isinstance(inst, InstanceMask)
        assert inst.mask.shape == disc_image.shape and inst.mask.dtype == bool
        assert inst.area == int(inst.mask.sum())
        assert inst.box == tuple(masks_to_boxes(inst.mask[None])[0])
        assert np.array_equal(decode_rle(inst.rle()), inst.mask)
        x, y = inst.point
        assert 0 <= x < disc_image.shape[1] and 0 <= y < disc_image.shape[0]
        assert (inst.prompt_box is None) == (mode == "points")
    proposals = propose(seg, disc_image)
    doc = json.loads(json.dumps([dataclasses.asdict(p) for p in proposals]))
    assert [p["id"] for p in doc] == list(range(1, len(doc) + 1))
    assert Rle.from_coco(doc[0]["segmentation"]).area == doc[0]["area"]


def test_tiny_model_with_crops_and_mask_nms(tiny_sam, disc_image):
    seg = _loose(tiny_sam, prompt_mode="points", crop_layers=1, nms_mode="mask", min_area_px=20)
    result = seg.run(disc_image)
    assert result.stats.crops == 5 and result.stats.grid_points == 5 * 16
    for inst in result.instances:
        assert inst.area >= 20
        x0, y0, x1, y1 = inst.crop_box
        px, py = inst.point
        assert x0 <= px < x1 and y0 <= py < y1


def test_background_points_are_not_prompted(tiny_lite):
    img, body = _body_image()
    seg = _loose(tiny_lite, grid=8, skip_background=True, prompt_mode="points", progressive=False)
    result = seg.run(img)
    pts = grid_points(img.shape, 8)
    on = result.foreground.mask[np.rint(pts[:, 1]).astype(int), np.rint(pts[:, 0]).astype(int)]
    assert result.stats.skipped_background == int((~on).sum()) > 0
    assert result.stats.prompts == int(on.sum())


class _RecordingSegmenter(AutomaticSegmenter):
    """Decoder replaced by a stub: the first prompt 'finds' the left half of the image."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[np.ndarray] = []

    def _process_batch(self, items, crop, enc, fg, side, image_hw, counters):
        points = items[:, :2]
        self.seen.append(points.copy())
        counters.prompts += len(points)
        if len(self.seen) > 1:
            return []
        h, w = image_hw
        left = np.zeros((h, w), bool)
        left[:, : w // 2] = True
        return [_Candidate(MaskPatch.from_mask(left), 0.99, 0.99, tuple(points[0]), None, crop)]


def test_progressive_sampling_drops_points_inside_found_masks(tiny_lite):
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    seg = _RecordingSegmenter(tiny_lite, grid=8, points_per_batch=4, skip_background=False, prompt_mode="points", cover_max_frac=1.0)
    result = seg.run(image)
    first, later = seg.seen[0], np.concatenate(seg.seen[1:])
    assert len(first) == 4
    assert (later[:, 0] >= 32).all()  # nothing in the left half after it was found
    left_later = sum(1 for p in grid_points((64, 64), 8)[4:] if p[0] < 32)
    assert result.stats.skipped_covered == left_later
    assert result.stats.prompts == 64 - left_later

    plain = _RecordingSegmenter(tiny_lite, grid=8, points_per_batch=4, skip_background=False, prompt_mode="points", progressive=False)
    assert plain.run(image).stats.prompts == 64


class _RecordingBoxSegmenter(_RecordingSegmenter):
    def _process_batch(self, items, crop, enc, fg, side, image_hw, counters):
        self.items = getattr(self, "items", []) + [items.copy()]
        return super()._process_batch(items, crop, enc, fg, side, image_hw, counters)


def test_box_prompts_are_skipped_only_at_the_scale_of_the_found_mask(tiny_lite):
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    # boxes of 32 and 8 pixels; the found left half (side ~45 px) is within 2x of 32, not of 8
    seg = _RecordingBoxSegmenter(tiny_lite, grid=8, points_per_batch=4, skip_background=False, prompt_mode="boxes",
                                 anchors=(BoxAnchor(4.0), BoxAnchor(1.0)))
    result = seg.run(image)
    first, later = seg.items[0], np.concatenate(seg.items[1:])
    assert first[:, 2].tolist() == [0, 1, 0, 1]  # per point: the larger box first
    left = later[:, 0] < 32
    assert (later[left, 2] == 1).all() and left.any()  # small boxes still tried inside the found mask
    assert result.stats.skipped_covered == sum(1 for p in grid_points((64, 64), 8)[2:] if p[0] < 32)


def test_anchor_strides_choose_grid_points(tiny_lite):
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    seg = _RecordingBoxSegmenter(tiny_lite, grid=4, points_per_batch=100, skip_background=False, prompt_mode="boxes",
                                 anchors=(BoxAnchor(1.0, 1), BoxAnchor(2.0, 2)), progressive=False)
    seg.run(image)
    items = np.concatenate(seg.items)
    assert len(items) == 16 + 4
    big = items[items[:, 2] == 1]
    # grid 4 over 64 px: centres 7.5, 23.5, 39.5, 55.5; stride 2 takes rows and columns 1 and 3
    assert sorted(map(tuple, big[:, :2])) == [(23.5, 23.5), (23.5, 55.5), (55.5, 23.5), (55.5, 55.5)]


def test_large_masks_do_not_cover_points(tiny_lite):
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    seg = _RecordingSegmenter(tiny_lite, grid=8, points_per_batch=4, skip_background=False, prompt_mode="points", cover_max_frac=0.25)
    assert seg.run(image).stats.skipped_covered == 0  # the half-image mask is over 25% of the foreground


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grid": 0}, "grid 0"),
        ({"grid": 10_000}, "from 1 to 128"),
        ({"grid": 2.5}, "whole number"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"nms_iou": -0.1}, "nms_iou"),
        ({"crop_layers": 9}, "crop_layers"),
        ({"min_area_px": -5}, "min_area_px"),
        ({"prompt_mode": "clicks"}, "prompt_mode"),
        ({"anchors": (BoxAnchor(0.0),)}, "anchors"),
        ({"anchors": ()}, "anchors"),
    ],
)
def test_bad_parameters_are_input_errors(tiny_lite, kwargs, message):
    with pytest.raises(InputError, match=message):
        AutomaticSegmenter(tiny_lite, **kwargs)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 0), np.uint8), "empty"),
        (np.zeros((10, 0, 3), np.uint8), "empty"),
        (np.full((32, 32), 7, np.uint8), "same value"),
        (np.zeros((4, 32, 32), np.uint8), "not a 2D image"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32), "NaN"),
    ],
)
def test_bad_images_are_input_errors(tiny_lite, image, message):
    with pytest.raises(InputError, match=message):
        AutomaticSegmenter(tiny_lite, grid=2).generate(image)


def test_parse_and_format_anchors():
    from medsam.inference.everything import DEFAULT_ANCHORS, format_anchors, parse_anchors

    assert parse_anchors("1.25,2.5:2:r,5:2:r") == DEFAULT_ANCHORS
    assert format_anchors(DEFAULT_ANCHORS) == "1.25,2.5:2:r,5:2:r"
    assert parse_anchors(" 3 : 1 : refine ") == (BoxAnchor(3.0, 1, True),)
    for bad in ("", "a", "1:2:3", "1:x"):
        with pytest.raises(InputError):
            parse_anchors(bad)


def test_prompt_mode_follows_the_model(tiny_lite):
    assert AutomaticSegmenter(tiny_lite).prompt_mode == "points"  # a random test model: SAM's way
    assert AutomaticSegmenter(tiny_lite, prompt_mode="boxes").prompt_mode == "boxes"


@pytest.mark.slow
def test_lite_medsam_finds_organs_on_a_ct_slice(lite_medsam, shared_dir):
    from medsam.io.raster import read_image

    data = shared_dir / "data" / "ct_slices"
    image = read_image(data / "images" / "s0114_111.png")
    seg = AutomaticSegmenter(lite_medsam)
    assert seg.prompt_mode == "boxes"
    result = seg.run(image)
    assert result.stats.skipped_background > 0
    assert 5 <= len(result.instances) <= 150
    organs = ("aorta", "heart_atrium_right", "lung_lower_lobe_left", "lung_lower_lobe_right")
    best = []
    for name in organs:
        gt = read_image(data / "masks" / f"s0114_111_{name}_000.png") > 0
        best.append(max((inst.mask & gt).sum() / (inst.mask | gt).sum() for inst in result.instances))
    assert sum(b >= 0.5 for b in best) >= 3, dict(zip(organs, best))


# --- the shared-embedding decoder -----------------------------------------------------------------------


def _decoder_cases(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    boxes = torch.rand(n, 4, generator=g) * s / 2
    boxes[:, 2:] += s / 3
    pts = torch.rand(n, 2, 2, generator=g) * s
    labels = torch.tensor([[1, 0]] * n)
    return [
        dict(boxes=boxes),
        dict(boxes=boxes, multimask=True),
        dict(points=pts[:, :1], point_labels=labels[:, :1], multimask=True),
        dict(points=pts, point_labels=labels, boxes=boxes),
    ]


@pytest.mark.parametrize("name", ["tiny_lite", "tiny_sam"])
def test_shared_decoder_matches_the_model(name, request):
    from medsam.inference.amg.shared_decoder import SharedEmbeddingDecoder

    model = request.getfixturevalue(name)
    c = model.prompt_encoder.embed_dim
    emb = torch.randn(1, c, *model.prompt_encoder.image_embedding_size, generator=torch.Generator().manual_seed(1))
    dec = SharedEmbeddingDecoder(model)
    with torch.inference_mode():
        for kw in _decoder_cases(model):
            ref_logits, ref_iou = model.decode(emb, **kw)
            logits, iou = dec(emb, **kw)
            assert logits.shape == ref_logits.shape and iou.shape == ref_iou.shape
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)
        # a second image replaces the cached per-image part
        emb2 = emb.flip(-1).contiguous()
        torch.testing.assert_close(dec(emb2, boxes=_decoder_cases(model)[0]["boxes"])[0],
                                   model.decode(emb2, boxes=_decoder_cases(model)[0]["boxes"])[0], atol=1e-5, rtol=1e-4)
        # mask prompts go to the model's own path
        masks = torch.randn(2, 1, *model.low_res_size)
        b = _decoder_cases(model, n=2)[0]["boxes"]
        torch.testing.assert_close(dec(emb, boxes=b, mask_input=masks)[0], model.decode(emb, boxes=b, mask_input=masks)[0])


@pytest.mark.slow
def test_shared_decoder_matches_lite_medsam(lite_medsam):
    from medsam.inference.amg.shared_decoder import SharedEmbeddingDecoder

    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(2))
    dec = SharedEmbeddingDecoder(lite_medsam)
    with torch.inference_mode():
        for kw in _decoder_cases(lite_medsam, n=4)[:3]:
            ref_logits, ref_iou = lite_medsam.decode(emb, **kw)
            logits, iou = dec(emb, **kw)
            assert float((logits - ref_logits).abs().max()) < 1e-3
            assert float((iou - ref_iou).abs().max()) < 1e-4
