"""The CVPR 2025 interactive protocol on one 3D case, in process: a box, then corrective clicks, scored per step.

    trace = run_protocol(predictor, volume_u8, reference, spacing_mm=(5.0, 0.8, 0.8), n_clicks=5, seed=7)
    trace.dsc, trace.nsd          # after the box (step 0) and after each click
    trace.dsc_auc, trace.nsd_auc  # trapezoid over the click steps, as the challenge computes them

As the challenge's harness (CVPR25_iter_eval.py) does it: the box is the challenge's own (``get_boxes.py``: z range
of the object, z_mid the slice of its median voxel, a 2D box there grown by 0..5 pixels of the 256 frame; here drawn
from ``seed``), then each click goes to the centre of the largest 3D error component (by Euclidean distance
transform), positive for a miss and negative for a false positive
(:func:`medsam.training.prompts.corrective_click_3d`). The model sees the clicks through
:class:`medsam.inference.interactive3d.InteractiveVolume` (the clicked slice re-segmented by the refiner,
re-propagated until it agrees). Metrics per step: DSC, and NSD at ``tolerance_mm`` with the surface elements of the
official code; the harness sets NSD to 0 when DSC <= 0.2 and so does this. AUC: ``scipy.integrate.
cumulative_trapezoid`` over the last ``n_clicks`` steps (the click steps; the box step is left out because the
challenge's box is optional), so for 5 clicks it lies in 0..4.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from medsam.inference.interactive3d import DEFAULT_AGREEMENT, Click3D, InteractiveVolume, KeyBox
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import PropagationConfig
from medsam.metrics import dice
from medsam.metrics.surfels import nsd_challenge
from medsam.training.prompts import Click3DSim, corrective_click_3d, cvpr25_box
from medsam.types import Box

NSD_DSC_FLOOR = 0.2  # the harness computes NSD only above this DSC (0 below)


@dataclass(frozen=True)
class ProtocolTrace:
    """One case through the protocol: the box (challenge dict), the clicks placed, DSC / NSD / seconds after the box
    (index 0) and after each click, the final mask and the model's work."""

    box: dict[str, int]
    clicks: tuple[Click3DSim, ...]
    dsc: tuple[float, ...]
    nsd: tuple[float, ...]
    seconds: tuple[float, ...]
    final: np.ndarray
    slices_encoded: int
    slices_decoded: int

    @property
    def n_clicks(self) -> int:
        return len(self.dsc) - 1

    @property
    def dsc_auc(self) -> float:
        return click_auc(self.dsc, self.n_clicks)

    @property
    def nsd_auc(self) -> float:
        return click_auc(self.nsd, self.n_clicks)


def click_auc(values: Sequence[float], n_clicks: int) -> float:
    """The challenge's AUC: trapezoid (dx = 1) over the last ``n_clicks`` values; NaN with fewer than 2 clicks."""
    tail = np.asarray(values[-n_clicks:], dtype=np.float64) if n_clicks > 0 else np.zeros(0)
    if tail.size < 2:
        return float("nan")
    return float(np.sum((tail[1:] + tail[:-1]) / 2.0))


def step_scores(mask: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD) as the harness scores one step (NSD 0 at DSC <= 0.2)."""
    d = dice(mask, reference)
    n = nsd_challenge(mask, reference, tolerance_mm, tuple(float(s) for s in spacing_mm)) if d > NSD_DSC_FLOOR else 0.0
    return float(d), float(n)


def run_protocol(
    predictor: Predictor,
    volume: np.ndarray,
    reference: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    n_clicks: int = 5,
    seed: int = 0,
    tolerance_mm: float = 2.0,
    config: PropagationConfig = PropagationConfig(),
    agreement: float = DEFAULT_AGREEMENT,
    source: str = "volume",
    **interaction: Any,
) -> ProtocolTrace:
    """Box then ``n_clicks`` simulated corrective clicks on one object of a (z, y, x) uint8 ``volume``; ``reference``
    is its (z, y, x) mask. A step with nothing left to correct adds no click and repeats the scores. ``interaction``:
    more options of :class:`InteractiveVolume` (e.g. ``repropagation``, ``carry_clicks``)."""
    ref = np.asarray(reference) != 0
    box = cvpr25_box(ref, np.random.default_rng(seed))
    # an empty key slice must not end the case: it scores 0 and the clicks may still find the object
    iv = InteractiveVolume(predictor, volume, config=replace(config, require_key_mask=False), agreement=agreement,
                           source=source, **interaction)
    key = KeyBox(box["z_mid"], Box(box["z_mid_x_min"], box["z_mid_y_min"], box["z_mid_x_max"], box["z_mid_y_max"]))

    def first() -> np.ndarray:
        iv.add_object(key_boxes=[key], label=1, z_limits=(box["z_min"], box["z_max"]))
        return iv.object_mask(1)

    def step(click: Click3DSim) -> np.ndarray:
        iv.click(Click3D(click.z, float(click.y), float(click.x), click.label, object_label=1))
        return iv.object_mask(1)

    return _steps(box, ref, first, step, n_clicks, spacing_mm, tolerance_mm, lambda: (iv.encoder.encoded, iv.slices_decoded))


def _steps(box, ref, first, step, n_clicks: int, spacing_mm, tolerance_mm: float, work) -> ProtocolTrace:
    """The simulated user of the protocol: ``first()`` gives the box step's mask, then after every mask a click at
    the centre of the largest 3D error, which ``step(click)`` turns into the next mask; each step timed and scored.
    A step with nothing left to correct adds no click and repeats the scores. ``work()``: (encoded, decoded)."""
    t0 = time.perf_counter()
    mask = first()
    seconds = [time.perf_counter() - t0]
    d, n = step_scores(mask, ref, spacing_mm, tolerance_mm)
    dscs, nsds, clicks = [d], [n], []
    for _ in range(int(n_clicks)):
        click = corrective_click_3d(mask, ref)
        if click is None:
            dscs.append(dscs[-1])
            nsds.append(nsds[-1])
            seconds.append(0.0)
            continue
        clicks.append(click)
        t0 = time.perf_counter()
        mask = step(click)
        seconds.append(time.perf_counter() - t0)
        d, n = step_scores(mask, ref, spacing_mm, tolerance_mm)
        dscs.append(d)
        nsds.append(n)
    encoded, decoded = work()
    return ProtocolTrace(box, tuple(clicks), tuple(dscs), tuple(nsds), tuple(seconds), mask, encoded, decoded)


def run_protocol_memory(
    predictor,
    volume: np.ndarray,
    reference: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    n_clicks: int = 5,
    seed: int = 0,
    tolerance_mm: float = 2.0,
    source: str = "volume",
) -> ProtocolTrace:
    """The protocol with a SAM 2 family model (a :class:`medsam.inference.memory_video.MemoryPredictor`): one
    tracking state for the case; the box on z_mid is tracked up to z_max and down to z_min; each click is a SAM 2
    point prompt added to the clicks of its slice (the previous logits there as the mask prompt, as SAM 2's
    interactive predictor does), and the object is re-tracked from that slice both ways over the box's z range.
    Scores and AUCs as :func:`run_protocol`."""
    from medsam.types import Points

    ref = np.asarray(reference) != 0
    box = cvpr25_box(ref, np.random.default_rng(seed))
    z_mid = box["z_mid"]
    state = predictor.init_state(volume, source=source)
    mask = np.zeros_like(ref)

    def track(start: int) -> None:
        lo, hi = limits
        for reverse, span in ((False, hi - start), (True, start - lo)):
            if span <= 0:
                continue
            for result in predictor.propagate(state, start, reverse=reverse, max_frames=span):
                mask[result.frame] = result.masks[0]

    limits = [box["z_min"], box["z_max"]]

    def first() -> np.ndarray:
        out = predictor.add_prompt(
            state, z_mid, 1, box=Box(box["z_mid_x_min"], box["z_mid_y_min"], box["z_mid_x_max"], box["z_mid_y_max"])
        )
        mask[z_mid] = out.masks[0]
        track(z_mid)
        return mask.copy()

    def step(click: Click3DSim) -> np.ndarray:
        limits[0], limits[1] = min(limits[0], click.z), max(limits[1], click.z)  # a miss beyond the range grows it
        point = Points(np.array([[float(click.x), float(click.y)]]), np.array([click.label]))
        out = predictor.add_prompt(state, click.z, 1, points=point, clear=False)
        mask[click.z] = out.masks[0]
        track(click.z)
        return mask.copy()

    return _steps(box, ref, first, step, n_clicks, spacing_mm, tolerance_mm, lambda: (0, 0))


@dataclass(frozen=True)
class HarnessStep:
    """One call of a submission under the simulated harness: the labels it wrote, their per-class DSC, the clicks
    it was given (per class, so far) and the wall time of the call."""

    segs: np.ndarray
    dsc: tuple[float, ...]
    clicks: tuple[tuple[tuple[int, int, int, int], ...], ...]
    seconds: float


def simulate_harness(
    run_submission,
    imgs: np.ndarray,
    gts: np.ndarray,
    spacing: Sequence[float],
    inputs_dir,
    outputs_dir,
    *,
    name: str = "case.npz",
    n_clicks: int = 5,
    seed: int = 0,
) -> list[HarnessStep]:
    """Run a submission through the challenge's six steps on one case, as CVPR25_iter_eval.py does with files:
    ``inputs_dir/name`` is written (imgs, spacing, boxes; then clicks, clicks_order, prev_pred added), then
    ``run_submission()`` is called and ``outputs_dir/name``'s ``segs`` read back; after each step a click per class
    goes to the centre of that class's largest error. Classes are the sorted non-zero values of ``gts``, the
    k-th expected as value k in ``segs`` (the harness's class order)."""
    from pathlib import Path

    from medsam.io.npz import Cvpr25Box, Cvpr25Clicks, write_cvpr25_input

    inputs_dir, outputs_dir = Path(inputs_dir), Path(outputs_dir)
    inputs_dir.mkdir(parents=True, exist_ok=True)
    outputs_dir.mkdir(parents=True, exist_ok=True)
    values = [int(v) for v in np.unique(gts) if v != 0]
    rng = np.random.default_rng(seed)
    boxes = []
    for v in values:
        b = cvpr25_box(gts == v, rng)
        boxes.append(Cvpr25Box(b["z_min"], b["z_max"], b["z_mid"], b["z_mid_x_min"], b["z_mid_y_min"],
                               b["z_mid_x_max"], b["z_mid_y_max"]))
    fg: list[list[tuple[int, int, int]]] = [[] for _ in values]
    bg: list[list[tuple[int, int, int]]] = [[] for _ in values]
    order: list[list[str]] = [[] for _ in values]
    steps: list[HarnessStep] = []
    segs = None
    for it in range(n_clicks + 1):
        if it == 0:
            write_cvpr25_input(inputs_dir / name, imgs, spacing, boxes=boxes)
        else:
            for i, v in enumerate(values):
                click = corrective_click_3d(segs == i + 1, gts == v)
                if click is None:
                    continue
                (fg if click.label else bg)[i].append((click.z, click.y, click.x))
                order[i].append("fg" if click.label else "bg")
            clicks = [Cvpr25Clicks(tuple(fg[i]), tuple(bg[i]), tuple(order[i])) for i in range(len(values))]
            write_cvpr25_input(inputs_dir / name, imgs, spacing, boxes=boxes, clicks=clicks, prev_pred=segs)
        t0 = time.perf_counter()
        run_submission()
        seconds = time.perf_counter() - t0
        with np.load(outputs_dir / name, allow_pickle=False) as data:
            segs = data["segs"]
        sequences = tuple(Cvpr25Clicks(tuple(fg[i]), tuple(bg[i]), tuple(order[i])).sequence() for i in range(len(values)))
        dscs = tuple(float(dice(segs == i + 1, gts == v)) for i, v in enumerate(values))
        steps.append(HarnessStep(segs, dscs, sequences, seconds))
    return steps
