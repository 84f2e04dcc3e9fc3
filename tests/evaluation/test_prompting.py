"""Prompt kinds of a run, and the simulated user's corrective clicks (a scripted model, hand-computed clicks)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import PromptError
from medsam.evaluation import PromptSpec, StepOutput, simulate_clicks, simulate_refinement
from medsam.metrics import dice
from medsam.training.prompts import SimulatedPrompt
from medsam.types import Box, Prediction


@pytest.mark.parametrize(
    "text, kind, count, shown",
    [("box", "box", 0, "box"), ("Jitter", "jitter", 0, "jitter"), ("points", "points", 1, "points"),
     ("points:3", "points", 3, "points:3"), ("clicks:5", "clicks", 5, "clicks:5"),
     ("clicks:2:nologits", "clicks", 2, "clicks:2:nologits"), ("clicks:3:sam", "clicks", 3, "clicks:3:sam"),
     ("Clicks:4:BOX", "clicks", 4, "clicks:4:box")],
)
def test_prompt_spec_parses(text, kind, count, shown):
    spec = PromptSpec.parse(text)
    assert (spec.kind, spec.count, str(spec)) == (kind, count, shown)


@pytest.mark.parametrize("text", ["clicks", "clicks:0", "clicks:x", "box:2", "lasso", "points:-1", "box:nologits", "clicks:2:lasso", "clicks:2:",
                                  "clicks:0:sam", "points:2:sam"])
def test_bad_prompt_specs_are_prompt_errors(text):
    with pytest.raises(PromptError):
        PromptSpec.parse(text)


def test_prompts_are_seeded_and_box_is_tight():
    ref = np.zeros((40, 50), bool)
    ref[10:20, 12:30] = True
    box = PromptSpec.parse("box").for_image(ref, seed=1)
    assert box.box == Box(12, 10, 29, 19)
    a, b = (PromptSpec.parse("jitter").for_image(ref, seed=s) for s in (7, 7))
    assert a.to_json() == b.to_json() and a.seed == 7
    jb = a.box
    assert jb.x0 <= 12 and jb.y0 <= 10 and jb.x1 >= 29 and jb.y1 >= 19 and jb.x0 >= 12 - 20
    pts = PromptSpec.parse("points:2").for_image(ref, seed=3).points
    assert len(pts) == 2 and all(ref[int(y), int(x)] for x, y in pts.coords)


def test_given_box_replaces_the_tight_box():
    ref = np.zeros((40, 50), bool)
    ref[10:20, 12:30] = True
    given = Box(5, 5, 35, 25)
    assert PromptSpec.parse("clicks:2").for_image(ref, seed=0, given_box=given).box == given


class ScriptedModel:
    """A stand-in model: the reference minus a 10x10 hole, plus a 5x8 false positive; a positive click in the
    hole fills it, a negative click in the false positive removes it. Records what each call received."""

    def __init__(self) -> None:
        self.reference = np.zeros((48, 48), bool)
        self.reference[5:35, 5:35] = True  # 900 px
        self.hole = np.zeros_like(self.reference)
        self.hole[10:20, 10:20] = True  # 100 px miss
        self.extra = np.zeros_like(self.reference)
        self.extra[40:45, 5:13] = True  # 40 px false positive
        self.calls: list[tuple] = []
        self.outputs: list[StepOutput] = []

    def __call__(self, box, points, mask_input):
        self.calls.append((box, points, mask_input))
        mask = self.reference.copy()
        clicks = [] if points is None else list(zip(points.coords.astype(int), points.labels))
        if not any(lab == 1 and self.hole[y, x] for (x, y), lab in clicks):
            mask &= ~self.hole
        if not any(lab == 0 and self.extra[y, x] for (x, y), lab in clicks):
            mask |= self.extra
        out = StepOutput(mask, np.full((1, 1, 8, 8), float(len(self.calls))), 0.5)
        self.outputs.append(out)
        return out


def test_clicks_land_at_the_centre_of_the_largest_error_and_record_dsc():
    model = ScriptedModel()
    start = SimulatedPrompt("box", seed=0, box=Box(5, 5, 34, 34))
    trace = simulate_clicks(model, model.reference, start, 3)
    # 1st: the 10x10 miss (largest error) at its centre (first of the 4 central pixels in raster order), positive;
    # 2nd: the 5x8 false positive at its centre, negative; 3rd: none needed, the mask is exact.
    assert [tuple(c) for c in trace.clicks] == [(14, 14, 1), (7, 42, 0)]
    expected = [2 * 800 / (840 + 900), 2 * 900 / (940 + 900), 1.0, 1.0]
    assert trace.dsc_per_click == pytest.approx(expected)
    assert len(model.calls) == 3
    # every later call gets the start box, all clicks so far, and the previous low-res logits
    assert model.calls[0][2] is None
    for i in (1, 2):
        box, points, mask_input = model.calls[i]
        assert box == start.box and len(points) == i and mask_input is model.outputs[i - 1].low_res_logits
    assert trace.prompt.kind == "clicks" and trace.prompt.n_clicks == 2
    assert np.array_equal(trace.final.mask, model.reference)


def test_clicks_without_fed_back_logits():
    model = ScriptedModel()
    start = SimulatedPrompt("box", seed=0, box=Box(5, 5, 34, 34))
    trace = simulate_clicks(model, model.reference, start, 2, feed_logits=False)
    assert [c[2] for c in model.calls] == [None, None, None] and trace.dsc_per_click[-1] == 1.0
    assert not PromptSpec.parse("clicks:2:nologits").feed_logits and PromptSpec.parse("clicks:2").feed_logits


@pytest.mark.parametrize(
    "text, refinement, feed_logits",
    [("clicks:3", "model", True), ("clicks:3:sam", "sam", True), ("clicks:3:nologits", "sam", False),
     ("clicks:3:box", "box_update", True)],
)
def test_click_recipes(text, refinement, feed_logits):
    spec = PromptSpec.parse(text)
    assert (spec.kind, spec.count, spec.refinement, spec.feed_logits) == ("clicks", 3, refinement, feed_logits)
    assert PromptSpec.parse(str(spec)) == spec


def test_unknown_click_recipe_names_the_recipes():
    with pytest.raises(PromptError, match="'lasso' is not a click recipe.*sam\\|nologits\\|box"):
        PromptSpec.parse("clicks:2:lasso")


class ScriptedRefiner:
    """A stand-in refiner over ScriptedModel's masks: a positive click in the hole fills it, a negative click in
    the false positive removes it. Records the start prompt and the clicks."""

    def __init__(self) -> None:
        self.model = ScriptedModel()
        self.started: list[tuple] = []
        self.clicks: list[tuple[float, float, int]] = []

    def _prediction(self) -> Prediction:
        mask = self.model.reference.copy()
        if not any(lab == 1 and self.model.hole[int(y), int(x)] for x, y, lab in self.clicks):
            mask &= ~self.model.hole
        if not any(lab == 0 and self.model.extra[int(y), int(x)] for x, y, lab in self.clicks):
            mask |= self.model.extra
        return Prediction(mask[None, None], np.array([[0.5]]), np.zeros((1, 1, 8, 8), np.float32))

    def start(self, box=None, points=None) -> Prediction:
        self.started.append((box, points))
        return self._prediction()

    def click(self, x, y, label) -> Prediction:
        self.clicks.append((x, y, label))
        return self._prediction()


def test_simulated_refinement_drives_the_refiner():
    refiner = ScriptedRefiner()
    reference = refiner.model.reference
    start = SimulatedPrompt("box", seed=0, box=Box(5, 5, 34, 34))
    trace = simulate_refinement(refiner, reference, start, 3)
    assert refiner.started == [(start.box, None)]
    assert refiner.clicks == [(14, 14, 1), (7, 42, 0)] and [tuple(c) for c in trace.clicks] == refiner.clicks
    assert trace.dsc_per_click == pytest.approx([2 * 800 / (840 + 900), 2 * 900 / (940 + 900), 1.0, 1.0])
    assert trace.prompt.n_clicks == 2 and trace.prompt.box == start.box
    assert np.array_equal(trace.final.mask, reference) and trace.final.low_res_logits.shape == (1, 1, 8, 8)


def test_simulated_refinement_with_the_tiny_model(tiny_lite):
    from medsam.inference.predictor import Predictor
    from medsam.inference.refine import Refiner
    from medsam.training.prompts import corrective_click

    yy, xx = np.mgrid[:48, :64]
    reference = (xx - 30) ** 2 + (yy - 24) ** 2 <= 100
    image = np.where(reference, 210, 40).astype(np.uint8)
    predictor = Predictor(tiny_lite)
    predictor.set_image(image)
    start = PromptSpec.parse("clicks:3:box").for_image(reference, seed=0)
    masks: list[np.ndarray] = []

    class Recording(Refiner):
        def _predict(self, state):
            pred = super()._predict(state)
            masks.append(pred.masks[0, 0])
            return pred

    trace = simulate_refinement(Recording(predictor, "box_update"), reference, start, 3)
    assert len(trace.dsc_per_click) == 4
    assert trace.dsc_per_click[0] == pytest.approx(dice(predictor.predict(boxes=start.box).masks[0, 0], reference))
    for k, click in enumerate(trace.clicks):
        assert click == corrective_click(masks[k], reference)
        assert trace.dsc_per_click[k + 1] == pytest.approx(dice(masks[k + 1], reference))
    for click in trace.clicks:  # box_update honours every click
        assert trace.final.mask[click.y, click.x] == bool(click.label)
