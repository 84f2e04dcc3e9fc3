"""One 2D case under one prompt with a :class:`Predictor` whose image is already encoded."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from medsam.evaluation.loading import LoadedCase
from medsam.evaluation.prompting import PromptSpec, StepOutput, simulate_clicks, simulate_refinement
from medsam.inference.predictor import ImageEncoding, Predictor
from medsam.training.prompts import SimulatedPrompt
from medsam.types import Box, Points


@dataclass(frozen=True)
class Outcome:
    """A case's prediction: mask on the reference's grid, the model's predicted IoU, the prompt as given,
    model seconds (decoding only; the runner adds the encoding), DSC per click, and a note for the report.
    3D click protocol: also NSD and seconds per step (the box step first)."""

    mask: np.ndarray
    predicted_iou: float
    prompt: SimulatedPrompt
    seconds: float
    dsc_per_click: tuple[float, ...] = ()
    note: str = ""
    nsd_per_click: tuple[float, ...] = ()
    seconds_per_step: tuple[float, ...] = ()


def predict_image(predictor: Predictor, encoding: ImageEncoding, loaded: LoadedCase, spec: PromptSpec, seed: int) -> Outcome:
    """Simulate ``spec``'s prompt on the case's reference and predict (with corrective clicks for clicks:N, turned
    into prompts by the model's refinement strategy unless the spec names one)."""
    given = loaded.case.box if isinstance(loaded.case.box, Box) else None
    start = spec.for_image(loaded.reference, seed, given)

    def predict(box: Box | None, points: Points | None, mask_input: np.ndarray | None) -> StepOutput:
        predictor.set_encoding(encoding)
        pred = predictor.predict(boxes=box, points=points, mask_input=mask_input)
        return StepOutput(pred.masks[0, 0], pred.low_res_logits[:1, :1], float(pred.iou_scores[0, 0]))

    t0 = time.perf_counter()
    if spec.kind == "clicks":
        from medsam.inference.refine import Refiner, strategy_of

        strategy = strategy_of(predictor.model, spec.refinement)
        if strategy == "sam":
            trace = simulate_clicks(predict, loaded.reference, start, spec.n_clicks, feed_logits=spec.feed_logits)
        else:
            predictor.set_encoding(encoding)
            trace = simulate_refinement(Refiner(predictor, strategy), loaded.reference, start, spec.n_clicks)
        seconds = time.perf_counter() - t0
        note = ""
        if len(trace.clicks) < spec.n_clicks:
            note = f"{len(trace.clicks)} of {spec.n_clicks} clicks: the mask was already exact"
        return Outcome(trace.final.mask, trace.final.predicted_iou, trace.prompt, seconds, trace.dsc_per_click, note)
    out = predict(start.box, start.points, None)
    return Outcome(out.mask, out.predicted_iou, start, time.perf_counter() - t0)

