"""Which prompt an evaluation run gives each case, and the simulated user who adds corrective clicks.

Prompt kinds (``PromptSpec.parse``):
- ``box``: the tight ground-truth box (or the box that came with the data, e.g. CVPR24 ``boxes``);
- ``jitter``: the tight box with each side moved out by 0..20 px (MedSAM's training jitter), seeded per case;
- ``points`` / ``points:N``: N positive points inside the object (default 1), seeded per case;
- ``clicks:N``: start from the tight box, then N corrective clicks of a simulated user, turned into prompts by
  the model's refinement strategy (``ModelSpec.refinement``, :mod:`medsam.inference.refine`): "box_update" for
  box-trained models (LiteMedSAM, MedSAM: the model only ever gets a box; the clicks grow it and act on its
  logits; :func:`simulate_refinement`), "sam" for SAM (:func:`simulate_clicks`);
- ``clicks:N:sam``: the SAM recipe whatever the model: the box and every click as points, each prediction
  getting the previous low-res logits as mask_input; ``clicks:N:nologits`` the same without the logits;
  ``clicks:N:box`` the box_update strategy whatever the model. On the dev set the SAM recipe lowers
  LiteMedSAM's DSC with every click (it was trained with box prompts only); box_update raises it.
Volumes get a 3D prompt whatever the 2D kind: the 3D box (``box3d``) or the tight box on the slice with
the largest area (``key_slice``), chosen by ``volume_prompt``.

The prompts themselves come from :mod:`medsam.training.prompts`; this module only decides which to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import numpy as np

from medsam.errors import PromptError
from medsam.metrics import dice
from medsam.training.prompts import Click, SimulatedPrompt, corrective_click, simulate_prompt
from medsam.types import Box, Box3D, Points, Prediction

Kind2D = Literal["box", "jitter", "points", "clicks"]
VolumePrompt = Literal["box3d", "key_slice"]
VOLUME_PROMPTS: tuple[str, ...] = ("box3d", "key_slice")
#: clicks:N suffix -> (refinement, feed_logits); "model" = the model's own strategy
CLICK_RECIPES: dict[str, tuple[str, bool]] = {"": ("model", True), "sam": ("sam", True), "nologits": ("sam", False), "box": ("box_update", True)}


@dataclass(frozen=True)
class PromptSpec:
    """A run's prompt: ``kind`` with ``count`` points or clicks, and the prompt used for volumes.

    refinement (clicks only): "model" (the model's own strategy), "sam" or "box_update"; feed_logits: whether
    the SAM recipe feeds the previous logits back (False for ``clicks:N:nologits``)."""

    kind: Kind2D = "box"
    count: int = 0
    volume_prompt: VolumePrompt = "box3d"
    max_shift_px: int = 20
    feed_logits: bool = True
    refinement: str = "model"

    @classmethod
    def parse(cls, text: "str | PromptSpec", *, volume_prompt: str = "box3d") -> "PromptSpec":
        """``box``, ``jitter``, ``points``, ``points:N``, ``clicks:N`` or ``clicks:N:sam|nologits|box`` (N >= 1);
        anything else is a PromptError."""
        if isinstance(text, PromptSpec):
            return text
        if volume_prompt not in VOLUME_PROMPTS:
            raise PromptError(f"volume prompt {volume_prompt!r}: use box3d (the 3D box) or key_slice (the largest slice's box)")
        raw = str(text).strip().lower()
        hint = "use box, jitter, points, points:N, clicks:N or clicks:N:sam|nologits|box (e.g. clicks:3)"
        refinement, feed_logits = "model", True
        if raw.startswith("clicks:") and raw.count(":") == 2:
            raw, _, recipe = raw.rpartition(":")
            if recipe not in CLICK_RECIPES or not recipe:
                raise PromptError(f"prompt {text!r}: {recipe!r} is not a click recipe; {hint}")
            refinement, feed_logits = CLICK_RECIPES[recipe]
        name, _, number = raw.partition(":")
        if name not in ("box", "jitter", "points", "clicks"):
            raise PromptError(f"prompt {text!r} is unknown; {hint}")
        if name in ("box", "jitter") and number:
            raise PromptError(f"prompt {text!r}: {name} takes no number; {hint}")
        count = 0
        if name in ("points", "clicks"):
            if not number and name == "clicks":
                raise PromptError(f"prompt {text!r}: say how many clicks, e.g. clicks:3")
            try:
                count = int(number) if number else 1
            except ValueError:
                raise PromptError(f"prompt {text!r}: {number!r} is not a whole number; {hint}") from None
            if count < 1:
                raise PromptError(f"prompt {text!r}: give at least 1 {name[:-1]}")
        return cls(name, count, volume_prompt, feed_logits=feed_logits, refinement=refinement)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.kind == "clicks" and self.refinement != "model":
            suffix = "box" if self.refinement == "box_update" else "sam" if self.feed_logits else "nologits"
            return f"clicks:{self.count}:{suffix}"
        if self.kind == "clicks" or (self.kind == "points" and self.count != 1):
            return f"{self.kind}:{self.count}"
        return self.kind

    @property
    def n_clicks(self) -> int:
        return self.count if self.kind == "clicks" else 0

    def for_image(self, reference: np.ndarray, seed: int, given_box: Box | None = None) -> SimulatedPrompt:
        """The starting prompt of a 2D case (for clicks: the box the clicks start from)."""
        if self.kind in ("box", "clicks"):
            if given_box is not None:
                return SimulatedPrompt("box", seed=seed, box=given_box)
            return simulate_prompt("box", reference, seed=seed)
        if self.kind == "jitter":
            return simulate_prompt("jitter", reference, seed=seed, max_shift_px=self.max_shift_px)
        return simulate_prompt("points", reference, seed=seed, n_points=self.count)

    def for_volume(self, reference: np.ndarray, seed: int, given_box: Box3D | None = None) -> SimulatedPrompt:
        """The 3D prompt of a volume case: the (given or tight) 3D box, or the key slice's tight box."""
        if self.volume_prompt == "box3d":
            if given_box is not None:
                return SimulatedPrompt("box3d", seed=seed, box3d=given_box)
            return simulate_prompt("box3d", reference, seed=seed)
        return simulate_prompt("key_slice", reference, seed=seed)


@dataclass(frozen=True)
class StepOutput:
    """One prediction of the model for one object: mask (H, W) bool, its low-res logits (1, 1, h, w) to feed
    back as ``mask_input``, and the model's predicted IoU."""

    mask: np.ndarray
    low_res_logits: np.ndarray
    predicted_iou: float


PredictFn = Callable[[Box | None, Points | None, np.ndarray | None], StepOutput]


@dataclass(frozen=True)
class ClickTrace:
    """What the simulated user did: the final prompt (start box plus clicks), the clicks in order, the DSC
    before the first click and after every click (length n_clicks_asked + 1), and the last prediction.

    When a prediction equals the reference there is nothing left to correct: no click is added and the DSC
    is repeated, so every trace of a run has the same length.
    """

    prompt: SimulatedPrompt
    clicks: tuple[Click, ...]
    dsc_per_click: tuple[float, ...]
    final: StepOutput


def simulate_clicks(
    predict: PredictFn, reference: np.ndarray, start: SimulatedPrompt, n_clicks: int, *, feed_logits: bool = True
) -> ClickTrace:
    """Predict from ``start``, then ``n_clicks`` times: click the centre of the largest error region
    (positive in a miss, negative in a false positive; :func:`medsam.training.prompts.corrective_click`) and
    predict again from the start box plus all clicks so far, with the previous low-res logits as mask_input
    (none when ``feed_logits`` is False).
    """
    first = predict(start.box, start.points, None)

    def advance(prompt: SimulatedPrompt, click: Click, previous: StepOutput) -> StepOutput:
        return predict(prompt.box, prompt.points, previous.low_res_logits if feed_logits else None)

    return _click_loop(first, reference, start, n_clicks, advance)


def _click_loop(
    out: StepOutput,
    reference: np.ndarray,
    start: SimulatedPrompt,
    n_clicks: int,
    advance: Callable[[SimulatedPrompt, Click, StepOutput], StepOutput],
) -> ClickTrace:
    """The simulated user: after each prediction a click at the centre of the largest error region, which
    ``advance(prompt with the click, click, previous output)`` turns into the next prediction."""
    dscs = [dice(out.mask, reference)]
    prompt = start
    clicks: list[Click] = []
    for _ in range(int(n_clicks)):
        click = corrective_click(out.mask, reference)
        if click is None:
            dscs.append(dscs[-1])
            continue
        clicks.append(click)
        prompt = prompt.with_click(click)
        out = advance(prompt, click, out)
        dscs.append(dice(out.mask, reference))
    return ClickTrace(prompt, tuple(clicks), tuple(float(d) for d in dscs), out)


class ClickRefiner(Protocol):
    """What :func:`simulate_refinement` drives: :class:`medsam.inference.refine.Refiner` on an encoded image."""

    def start(self, box: Box | None = None, points: Points | None = None) -> Prediction: ...

    def click(self, x: float, y: float, label: int) -> Prediction: ...


def simulate_refinement(refiner: ClickRefiner, reference: np.ndarray, start: SimulatedPrompt, n_clicks: int) -> ClickTrace:
    """The simulated user of :func:`simulate_clicks` (a click at the centre of the largest error region, after
    every prediction) driving a refiner, which decides how the clicks become prompts (box_update: the model only
    gets the box). Recorded as in simulate_clicks: the start prompt plus the clicks, DSC before and after each."""

    def step(pred: Prediction) -> StepOutput:
        return StepOutput(pred.masks[0, 0], pred.low_res_logits[:1, :1], float(pred.iou_scores[0, 0]))

    first = step(refiner.start(box=start.box, points=start.points))
    return _click_loop(first, reference, start, n_clicks, lambda _p, click, _prev: step(refiner.click(click.x, click.y, click.label)))
