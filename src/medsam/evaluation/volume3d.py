"""One 3D case under one prompt: the single place where evaluation meets 3D propagation.

:func:`predict_volume` turns the case's 3D prompt into an ``ObjectPrompt`` of
:mod:`medsam.inference.propagate` (a 3D box: the official key slice with z limits; a key-slice box:
open-ended in z), runs the propagation in the asked mode over the windowed uint8 volume, and returns the
mask with the mean predicted IoU of the accepted slices. ``clicks:N`` runs the CVPR 2025 interactive protocol
instead (:mod:`medsam.evaluation.protocol3d`: the challenge's box, then N clicks at the centre of the largest 3D
error), scored after every step.
"""

from __future__ import annotations

import time

import numpy as np

from medsam.errors import BackendUnavailableError
from medsam.evaluation.image2d import Outcome
from medsam.evaluation.loading import LoadedCase
from medsam.evaluation.prompting import PromptSpec
from medsam.inference.predictor import Predictor
from medsam.types import Box3D

MODES = ("default", "reference")


def predict_volume(
    predictor: Predictor, loaded: LoadedCase, spec: PromptSpec, mode: str, seed: int, tolerance: float = 2.0
) -> Outcome:
    """Propagate the case's 3D prompt (``spec.volume_prompt``) through its volume in ``mode``; for ``clicks:N``
    the interactive protocol (NSD per step at ``tolerance`` mm). A ``MemoryPredictor`` (SAM 2 family) runs
    MedSAM2's procedure from the key slice's box (z limits of a 3D box respected) whatever the mode."""
    try:
        from medsam.inference import propagate as engine
    except ImportError as exc:  # the 3D engine is optional at this layer
        raise BackendUnavailableError(f"3D propagation is not available in this installation ({exc})") from exc

    if spec.kind == "clicks":
        return _protocol(predictor, loaded, spec, mode, seed, tolerance)
    given = loaded.case.box if isinstance(loaded.case.box, Box3D) else None
    prompt = spec.for_volume(loaded.reference, seed, given)
    if prompt.box3d is not None:
        obj = engine.ObjectPrompt.from_box3d(prompt.box3d)
    else:
        obj = engine.ObjectPrompt(z=int(prompt.slice_z), box=prompt.box)  # type: ignore[arg-type]
    if getattr(predictor, "is_memory_predictor", False):  # SAM 2 / MedSAM2: MedSAM2's 3D procedure, any mode
        from medsam.inference.memory_video import stack_segmentation

        t0 = time.perf_counter()
        seg = stack_segmentation(predictor, loaded.image, [obj], procedure="medsam2", progress=False,
                                 source=f"volume {loaded.case.key}")
        return Outcome(seg.labels == 1, float("nan"), prompt, time.perf_counter() - t0)
    config = engine.PropagationConfig(mode=mode)  # type: ignore[arg-type]
    mask = np.zeros(loaded.reference.shape, dtype=bool)
    ious: list[float] = []
    t0 = time.perf_counter()
    for result in engine.propagate(predictor, loaded.image, [obj], config, source=f"volume {loaded.case.key}"):
        if result.object_ids:
            mask[result.z] = result.masks[0]
            ious.append(float(result.iou_scores[0]))
    if config.largest_component and mode == "default":
        mask = engine.largest_component(mask)
    seconds = time.perf_counter() - t0
    return Outcome(mask, float(np.mean(ious)) if ious else float("nan"), prompt, seconds)


def _protocol(predictor: Predictor, loaded: LoadedCase, spec: PromptSpec, mode: str, seed: int, tolerance: float) -> Outcome:
    from medsam.evaluation.protocol3d import run_protocol
    from medsam.training.prompts import SimulatedPrompt
    from medsam.types import Box, Points

    protocol = run_protocol
    if getattr(predictor, "is_memory_predictor", False):  # SAM 2 / MedSAM2: clicks as SAM 2 point prompts
        from medsam.evaluation.protocol3d import run_protocol_memory as protocol
    trace = protocol(
        predictor, loaded.image, loaded.reference, spacing_mm=loaded.spacing_mm or (1.0, 1.0, 1.0),
        n_clicks=spec.n_clicks, seed=seed, tolerance_mm=tolerance, source=f"volume {loaded.case.key}",
    )
    b = trace.box
    points = None
    if trace.clicks:  # recorded as (x, y) points with the click's slice in slice_z order of the clicks
        points = Points(np.array([[c.x, c.y] for c in trace.clicks], float), np.array([c.label for c in trace.clicks]))
    prompt = SimulatedPrompt(
        "clicks", seed=seed, box=Box(b["z_mid_x_min"], b["z_mid_y_min"], b["z_mid_x_max"], b["z_mid_y_max"]),
        points=points, box3d=Box3D(b["z_mid_x_min"], b["z_mid_y_min"], b["z_min"], b["z_mid_x_max"], b["z_mid_y_max"], b["z_max"]),
        slice_z=b["z_mid"],
    )
    note = "CVPR 2025 protocol (default propagation mode): box on z_mid, then clicks at the centre of the largest " \
        "3D error; click slices " + ",".join(str(c.z) for c in trace.clicks)
    if len(trace.clicks) < spec.n_clicks:
        note += f"; {len(trace.clicks)} of {spec.n_clicks} clicks: the mask was already exact"
    return Outcome(trace.final, float("nan"), prompt, float(sum(trace.seconds)), trace.dsc, note, trace.nsd, trace.seconds)
