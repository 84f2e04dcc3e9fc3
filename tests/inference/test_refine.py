"""Click refinement (medsam.inference.refine): the box_update rules on hand-computed logits, the helpers, the
strategy choice, and the Refiner end to end on the tiny random model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsam.errors import PromptError
from medsam.inference.predictor import Predictor, upscale_logits
from medsam.inference.refine import (
    STRATEGIES,
    RefinePolicy,
    Refiner,
    apply_clicks,
    distance_to_edge,
    grown_box,
    shrunk_box,
    strategy_of,
)
from medsam.models.registry import get_spec, list_models
from medsam.types import Box, Points


def clicks(*xyl: tuple[int, int, int]) -> Points:
    return Points(np.array([(x, y) for x, y, _ in xyl], dtype=np.float64), np.array([lab for _, _, lab in xyl]))


def region(shape, rows, cols) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out


@pytest.fixture
def near_miss() -> np.ndarray:
    """Logits (20, 24): the mask rows 5..9 x cols 5..9; beside it cols 10..13 at -0.5 (a near miss), col 14 at
    -0.7 (less likely than the near miss), cols 17..19 at -0.2 (more likely but cut off by -1 at cols 15..16)."""
    logits = np.full((20, 24), -1.0, np.float32)
    logits[5:10, 5:10] = 2.0
    logits[5:10, 10:14] = -0.5
    logits[5:10, 14] = -0.7
    logits[5:10, 17:20] = -0.2
    return logits


# --- apply_clicks: positive clicks --------------------------------------------------------------------------


def test_no_clicks_is_the_thresholded_logits(near_miss):
    assert np.array_equal(apply_clicks(near_miss, None, None), near_miss > 0)
    assert np.array_equal(apply_clicks(near_miss, clicks(), None), near_miss > 0)


def test_positive_click_adds_the_connected_region_at_least_as_likely(near_miss):
    # click at (11, 7), L = -0.5: adds cols 10..13 (>= -0.5, connected); col 14 (-0.7) and cols 17..19 (not
    # connected) stay out. Distance to the mask 2 -> radius 6 * 2 = 12 px reaches the whole near miss.
    out = apply_clicks(near_miss, clicks((11, 7, 1)), None)
    assert np.array_equal(out, region(near_miss.shape, slice(5, 10), slice(5, 14)))


def test_positive_region_is_bounded_by_the_radius_rule(near_miss):
    # region_radius 1 x distance 2 = radius 2 around (11, 7): row 7 cols 10..13; rows 6, 8 cols 10..12
    # (dx^2 <= 3); rows 5, 9 col 11 only (dx = 0).
    out = apply_clicks(near_miss, clicks((11, 7, 1)), None, RefinePolicy(region_radius=1.0))
    expected = near_miss > 0
    expected[7, 10:14] = True
    expected[[6, 8], 10:13] = True
    expected[[5, 9], 11] = True
    assert np.array_equal(out, expected)
    # the smallest distance (min_radius_px 3 -> radius 3) reaches the whole near miss again
    wider = apply_clicks(near_miss, clicks((11, 7, 1)), None, RefinePolicy(region_radius=1.0), min_radius_px=3.0)
    assert np.array_equal(wider, region(near_miss.shape, slice(5, 10), slice(5, 14)))


def test_positive_region_stays_inside_the_box(near_miss):
    # the click lies in the box (x1 = 12): the region stops at col 12
    boxed = apply_clicks(near_miss, clicks((11, 7, 1)), Box(5, 5, 12, 9))
    assert np.array_equal(boxed, region(near_miss.shape, slice(5, 10), slice(5, 13)))
    unclipped = apply_clicks(near_miss, clicks((11, 7, 1)), Box(5, 5, 12, 9), RefinePolicy(clip_to_box=False))
    assert np.array_equal(unclipped, region(near_miss.shape, slice(5, 10), slice(5, 14)))
    # a click outside the box is not bounded by it (the Refiner grows the box first)
    outside = apply_clicks(near_miss, clicks((11, 7, 1)), Box(5, 5, 10, 9))
    assert np.array_equal(outside, region(near_miss.shape, slice(5, 10), slice(5, 14)))


def test_positive_click_inside_the_mask_changes_nothing(near_miss):
    assert np.array_equal(apply_clicks(near_miss, clicks((7, 7, 1)), None), near_miss > 0)


def test_positive_click_on_an_empty_mask_uses_the_smallest_radius():
    logits = np.full((15, 15), -0.5, np.float32)  # nothing above 0; everything as likely as the click
    out = apply_clicks(logits, clicks((7, 7, 1)), None, RefinePolicy(region_radius=1.0), min_radius_px=2.0)
    yy, xx = np.mgrid[:15, :15]
    assert np.array_equal(out, (xx - 7) ** 2 + (yy - 7) ** 2 <= 4)


# --- apply_clicks: negative clicks --------------------------------------------------------------------------


def test_negative_click_removes_the_region_at_most_as_likely():
    logits = np.full((20, 24), -1.0, np.float32)
    logits[5:10, 5:10] = 2.0
    logits[5:10, 10:14] = 0.5  # a leak the model is less sure of
    # click at (11, 7): L = 0.5; the mask holds and L <= 0.5 on cols 10..13; distance to the edge 3
    out = apply_clicks(logits, clicks((11, 7, 0)), None)
    assert np.array_equal(out, region(logits.shape, slice(5, 10), slice(5, 10)))


def test_negative_click_outside_the_mask_changes_nothing(near_miss):
    assert np.array_equal(apply_clicks(near_miss, clicks((2, 2, 0)), None), near_miss > 0)


@pytest.fixture
def stray() -> np.ndarray:
    """Logits (24, 24): a main piece rows/cols 2..10 and a stray 3x3 piece rows/cols 14..16 whose centre is
    less sure (1.0) than the rest (3.0)."""
    logits = np.full((24, 24), -1.0, np.float32)
    logits[2:11, 2:11] = 3.0
    logits[14:17, 14:17] = 3.0
    logits[15, 15] = 1.0
    return logits


def test_negative_click_on_a_stray_piece_removes_the_piece(stray):
    main = region(stray.shape, slice(2, 11), slice(2, 11))
    assert np.array_equal(apply_clicks(stray, clicks((15, 15, 0)), None), main)
    # without the stray rule only the pixels at most as likely as the click go (the centre alone)
    only_centre = (stray > 0) & ~region(stray.shape, 15, 15)
    assert np.array_equal(apply_clicks(stray, clicks((15, 15, 0)), None, RefinePolicy(remove_stray=False)), only_centre)
    # a piece holding a positive click is not stray
    assert np.array_equal(apply_clicks(stray, clicks((14, 14, 1), (15, 15, 0)), None), only_centre)


def test_negative_click_in_the_main_piece_is_not_a_stray_removal(stray):
    out = apply_clicks(stray, clicks((6, 6, 0)), None, RefinePolicy(removal_radius=1.0))
    # L = 3 everywhere in the main piece: the disc of radius 1 x distance 5 (to col/row 1 or 11) around (6, 6)
    yy, xx = np.mgrid[:24, :24]
    expected = (stray > 0) & ~((xx - 6) ** 2 + (yy - 6) ** 2 <= 25)
    assert np.array_equal(out, expected)


# --- apply_clicks: clicks of the other label are never undone -----------------------------------------------


def test_positive_click_adds_only_pixels_nearer_to_it_than_to_a_negative_click(near_miss):
    # the near miss (cols 10..13) is split between (11, 7) positive and (13, 7) negative: the positive click adds
    # only cols 10..11 (nearer to it), in either order; the negative click lies outside the mask
    expected = region(near_miss.shape, slice(5, 10), slice(5, 12))
    assert np.array_equal(apply_clicks(near_miss, clicks((11, 7, 1), (13, 7, 0)), None), expected)
    assert np.array_equal(apply_clicks(near_miss, clicks((13, 7, 0), (11, 7, 1)), None), expected)


def test_negative_click_keeps_pixels_nearer_to_a_positive_click():
    logits = np.full((20, 24), -1.0, np.float32)
    logits[5:10, 5:10] = 2.0
    logits[5:10, 10:14] = 0.5  # a leak, inside the mask
    # (13, 7) negative may remove only the leak pixels nearer to it than to (11, 7) positive: col 13
    expected = region(logits.shape, slice(5, 10), slice(5, 13))
    assert np.array_equal(apply_clicks(logits, clicks((11, 7, 1), (13, 7, 0)), None), expected)
    assert np.array_equal(apply_clicks(logits, clicks((13, 7, 0), (11, 7, 1)), None), expected)


@pytest.mark.parametrize("seed", range(12))
def test_every_click_is_honoured(seed):
    rng = np.random.default_rng(seed)
    h, w = 40, 48
    yy, xx = np.mgrid[:h, :w]
    logits = np.full((h, w), -2.0, np.float32)
    for _ in range(4):  # a few smooth blobs, some above 0
        cx, cy, s, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 10), rng.uniform(1, 5)
        logits += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)).astype(np.float32)
    flat = rng.choice(h * w, size=8, replace=False)
    labels = rng.integers(0, 2, size=8)
    pts = Points(np.stack([flat % w, flat // w], axis=1).astype(np.float64), labels)
    box = Box(5, 4, 40, 33) if seed % 2 else None
    policy = RefinePolicy(region_radius=[None, 2.0, 6.0][seed % 3], remove_stray=seed % 4 != 0)
    out = apply_clicks(logits, pts, box, policy)
    for (x, y), lab in zip(pts.coords.astype(int), pts.labels):
        assert out[y, x] == bool(lab), (x, y, lab)


# --- helpers ------------------------------------------------------------------------------------------------


def test_distance_to_edge():
    mask = region((10, 10), slice(3, 7), slice(3, 7))
    assert distance_to_edge(mask, 0, 4) == 3.0  # outside: to the nearest mask pixel (3, 4)
    assert distance_to_edge(mask, 0, 0) == pytest.approx(np.sqrt(18))
    assert distance_to_edge(mask, 4, 4) == 2.0  # inside: to (2, 4) or (4, 2)
    full = np.ones((5, 5), bool)
    assert distance_to_edge(full, 0, 2) == 1.0  # the image border counts as the edge
    assert distance_to_edge(full, 2, 2) == 3.0
    assert distance_to_edge(np.zeros((5, 5), bool), 2, 2) == np.inf


def test_grown_box():
    box = Box(10, 10, 20, 20)
    assert grown_box(box, 30, 15, 5, (100, 100)) == Box(10, 10, 35, 20)
    assert grown_box(box, 15, 2, 4, (100, 100)) == Box(10, 0, 20, 20)  # clipped at the top
    assert grown_box(box, 98, 99, 5, (100, 100)) == Box(10, 10, 99, 99)  # clipped to the last pixel
    assert grown_box(box, 15, 15, 3, (100, 100)) == box  # a point inside with a small margin changes nothing


def test_shrunk_box():
    box = Box(10, 10, 30, 30)
    assert shrunk_box(box, 12, 20, 2, 0.25) == Box(14, 10, 30, 30)  # the left side (gap 0.1) moves past the click
    assert shrunk_box(box, 20, 28, 1, 0.25) == Box(10, 10, 30, 27)  # the bottom side
    assert shrunk_box(box, 20, 20, 2, 0.25) is None  # no side near enough
    assert shrunk_box(Box(10, 10, 13, 30), 11, 20, 2, 0.5) is None  # the box would become too thin


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(region_radius=0.0), "region_radius"),
        (dict(region_radius=-2.0), "region_radius"),
        (dict(removal_radius=0.0), "removal_radius"),
        (dict(min_radius_input_px=-1.0), "min_radius_input_px"),
        (dict(min_radius_input_px=float("nan")), "min_radius_input_px"),
        (dict(shrink_box=0.0), "shrink_box"),
        (dict(shrink_box=0.6), "shrink_box"),
    ],
)
def test_policy_validation(kwargs, words):
    with pytest.raises(PromptError, match=words):
        RefinePolicy(**kwargs)


def test_policy_accepts_unbounded_radii_and_shrinking():
    p = RefinePolicy(region_radius=None, removal_radius=None, min_radius_input_px=0.0, shrink_box=0.5)
    assert p.region_radius is None and p.shrink_box == 0.5


# --- strategy ------------------------------------------------------------------------------------------------


def test_strategy_of_follows_the_model_spec(tiny_lite, tiny_sam):
    assert strategy_of(SimpleNamespace(spec=get_spec("lite_medsam"))) == "box_update"
    assert strategy_of(SimpleNamespace(spec=get_spec("medsam_vit_b"))) == "box_update"
    assert strategy_of(SimpleNamespace(spec=get_spec("sam_vit_b"))) == "sam"
    assert strategy_of(tiny_lite) == "sam" and strategy_of(tiny_sam) == "sam"
    assert strategy_of(tiny_lite, "box_update") == "box_update"
    assert strategy_of(SimpleNamespace(spec=get_spec("lite_medsam")), "sam") == "sam"
    assert strategy_of(SimpleNamespace(spec=get_spec("lite_medsam")), "model") == "box_update"
    with pytest.raises(PromptError, match="box_update"):
        strategy_of(tiny_lite, "lasso")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_has_a_known_strategy(name):
    assert get_spec(name).refinement in STRATEGIES


# --- the Refiner on the tiny model ---------------------------------------------------------------------------

BOX = (45.0, 25.0, 75.0, 55.0)


@pytest.fixture
def predictor(tiny_lite, disc_image):
    p = Predictor(tiny_lite)
    p.set_image(disc_image)
    return p


def record_calls(predictor) -> list[dict]:
    calls: list[dict] = []
    original = predictor.predict

    def predict(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    predictor.predict = predict
    return calls


def first_pixel(where: np.ndarray) -> tuple[int, int]:
    y, x = np.argwhere(where)[0]
    return int(x), int(y)


def test_start_is_the_plain_box_prediction(predictor):
    refiner = Refiner(predictor, "box_update")
    pred = refiner.start(box=BOX)
    plain = predictor.predict(boxes=BOX)
    assert pred.masks.shape == (1, 1, 96, 128)
    assert np.array_equal(pred.masks, plain.masks) and np.allclose(pred.low_res_logits, plain.low_res_logits)
    assert refiner.state.box == Box(*BOX) and refiner.state.n_clicks == 0 and not refiner.can_undo


def test_box_update_only_prompts_boxes_and_honours_every_click(predictor):
    refiner = Refiner(predictor, "box_update")
    calls = record_calls(predictor)
    mask0 = refiner.start(box=BOX).masks[0, 0]
    hw = mask0.shape
    # a positive click right of the box, outside the mask: the box grows to hold it
    right = np.zeros(hw, bool)
    right[:, 85:] = True
    px, py = first_pixel(right & ~mask0)
    mask1 = refiner.click(px, py, 1).masks[0, 0]
    state = refiner.state
    assert mask1[py, px] and state.box == Box(*BOX)
    grown = state.prompt_box
    assert grown.x1 >= px and grown.x0 <= BOX[0] and grown.y0 <= BOX[1] and grown.y1 >= BOX[3]
    # the mask is the grown box's logits with the click enforced
    plain = predictor.predict(boxes=grown)
    logits = upscale_logits(torch.from_numpy(plain.low_res_logits), predictor.encoding.transform, predictor.config)
    expected = apply_clicks(logits[0, 0].numpy(), state.clicks, grown, refiner.policy, min_radius_px=refiner._min_radius_px)
    assert np.array_equal(mask1, expected)
    # a negative click inside the mask and the box
    nx, ny = first_pixel(mask1 & region(hw, slice(30, 50), slice(50, 70)))
    mask2 = refiner.click(nx, ny, 0).masks[0, 0]
    assert not mask2[ny, nx] and mask2[py, px]
    assert refiner.state.n_clicks == 2 and list(refiner.state.clicks.labels) == [1, 0]
    # the model only ever got a box: no points, no mask input
    assert all(c.get("points") is None and c.get("mask_input") is None and c.get("boxes") is not None for c in calls)


def test_undo_and_resume(predictor):
    refiner = Refiner(predictor, "box_update")
    mask0 = refiner.start(box=BOX).masks[0, 0]
    x, y = first_pixel(~mask0 & region(mask0.shape, slice(25, 56), slice(45, 76)))
    mask1 = refiner.click(x, y, 1).masks[0, 0]
    saved = refiner.state
    x2, y2 = first_pixel(mask1 & region(mask1.shape, slice(25, 56), slice(45, 76)) & ~region(mask1.shape, y, x))
    mask2 = refiner.click(x2, y2, 0).masks[0, 0]
    assert np.array_equal(refiner.undo().masks[0, 0], mask1) and refiner.state is saved
    assert np.array_equal(refiner.undo().masks[0, 0], mask0) and refiner.state.n_clicks == 0
    with pytest.raises(PromptError, match="nothing to undo"):
        refiner.undo()
    # another refiner continues from the saved state (e.g. a server's history step)
    other = Refiner(predictor, "box_update")
    assert np.array_equal(other.resume(saved).masks[0, 0], mask1)
    assert np.array_equal(other.click(x2, y2, 0).masks[0, 0], mask2)
    with pytest.raises(PromptError, match="cannot continue"):
        Refiner(predictor, "sam").resume(saved)


def test_refiner_keeps_its_image(predictor, disc_image):
    refiner = Refiner(predictor, "box_update")
    mask0 = refiner.start(box=BOX).masks[0, 0]
    predictor.set_image(disc_image[:50, :60].copy())  # the predictor moves on to another image
    x, y = first_pixel(~mask0 & region(mask0.shape, slice(0, 96), slice(85, 128)))  # right of the box: it grows
    pred = refiner.click(x, y, 1)
    assert pred.masks.shape == (1, 1, 96, 128) and pred.masks[0, 0, y, x]


def test_refiner_errors(predictor):
    refiner = Refiner(predictor, "box_update")
    with pytest.raises(PromptError, match="start"):
        refiner.click(60, 40, 1)
    with pytest.raises(PromptError, match="start"):
        refiner.state
    with pytest.raises(PromptError, match="at least one"):
        refiner.start()
    refiner.start(box=BOX)
    with pytest.raises(PromptError, match="label"):
        refiner.click(60, 40, 2)
    with pytest.raises(PromptError, match="outside the image"):
        refiner.click(500, 40, 1)
    with pytest.raises(PromptError, match="refinement 'lasso'"):
        Refiner(predictor, "lasso")


def test_start_points_are_clicks_on_the_box(predictor):
    refiner = Refiner(predictor, "box_update")
    calls = record_calls(predictor)
    mask0 = predictor.predict(boxes=BOX).masks[0, 0]
    x, y = first_pixel(~mask0 & region(mask0.shape, slice(25, 56), slice(45, 76)))
    pred = refiner.start(box=BOX, points=Points(np.array([[x, y]], np.float64), np.array([1])))
    assert pred.masks[0, 0, y, x] and all(c.get("points") is None for c in calls[1:])


def test_sam_strategy_is_the_sam_recipe(predictor):
    refiner = Refiner(predictor)  # tiny_lite keeps the generic "sam"
    assert refiner.strategy == "sam"
    first = refiner.start(box=BOX)
    calls = record_calls(predictor)
    pred = refiner.click(60, 40, 1)
    (call,) = calls
    assert call["boxes"] == Box(*BOX) and len(call["points"]) == 1 and call["mask_input"] is not None
    direct = predictor.predict(
        boxes=BOX, points=Points(np.array([[60.0, 40.0]]), np.array([1])), mask_input=first.low_res_logits[:1, :1]
    )
    assert np.array_equal(pred.masks, direct.masks[:1, :1])


def test_start_points_without_a_box_are_honoured(predictor):
    refiner = Refiner(predictor, "box_update")
    for x, y in [(60, 40), (10, 80), (120, 5)]:
        pred = refiner.start(points=Points(np.array([[x, y]], np.float64), np.array([1])))
        assert pred.masks[0, 0, y, x] and refiner.state.prompt_box is None
        x2, y2 = first_pixel(pred.masks[0, 0] & ~region(pred.masks.shape[-2:], y, x))
        assert not refiner.click(x2, y2, 0).masks[0, 0, y2, x2] and refiner.prediction.masks[0, 0, y, x]


@pytest.mark.slow
def test_lite_medsam_clicks_raise_dsc_on_a_ct_slice(lite_medsam, shared_dir):
    from medsam.evaluation import simulate_refinement
    from medsam.io.raster import read_image
    from medsam.training.prompts import SimulatedPrompt, tight_box

    data = shared_dir / "data" / "ct_slices"
    image = read_image(data / "images" / "amos_0004_75.png")
    reference = read_image(data / "masks" / "amos_0004_75_liver_000.png") > 0
    predictor = Predictor(lite_medsam)
    predictor.set_image(image)
    refiner = Refiner(predictor)
    assert refiner.strategy == "box_update"  # LiteMedSAM was trained with boxes only
    trace = simulate_refinement(refiner, reference, SimulatedPrompt("box", seed=0, box=tight_box(reference)), 3)
    assert trace.dsc_per_click[-1] > trace.dsc_per_click[0], trace.dsc_per_click
    assert all(b >= a - 1e-9 for a, b in zip(trace.dsc_per_click, trace.dsc_per_click[1:])), trace.dsc_per_click
    for click in trace.clicks:
        assert trace.final.mask[click.y, click.x] == bool(click.label)
