"""Run one or more models over a dataset and score every case: :func:`evaluate`.

    from medsam.evaluation import evaluate
    result = evaluate("../shared/data/cases.csv", models=["lite_medsam"], prompt="box")
    result.to_csv("cases.csv")
    result.write("runs/lite_box")                      # CSVs, plots, worst-case overlays, report.md

A *run* is one model (with its checkpoint) under one propagation mode and one prompt; several runs are
compared side by side. Per case: the image is read once, encoded once per model (the runs of that model
share the embedding), each run's prompt is simulated with a seed derived from the run seed and the case
(the same prompt for every model), and the prediction is scored with DSC, IoU, NSD (in-plane boundary and
challenge-style), HD95. 2D cases do not depend on the mode, and volumes get their 3D prompt whatever the
2D prompt kind: runs that differ only in those share the case's row (computed once). Case problems (missing file, mask of another shape, ...) become rows with a status; the run goes on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from medsam.errors import BackendUnavailableError, InputError, MedsamError
from medsam.evaluation.cases import Case, load_cases
from medsam.evaluation.image2d import Outcome, predict_image
from medsam.evaluation.loading import CaseLoader, CaseProblem, LoadedCase
from medsam.evaluation.prompting import VOLUME_PROMPTS, PromptSpec
from medsam.evaluation.results import CaseResult, EvaluationResult, EvaluationSettings, RunInfo, WorstCase, WorstCases
from medsam.evaluation.volume3d import MODES, predict_volume
from medsam.metrics import score_case
from medsam.training.prompts import case_seed


@dataclass(frozen=True)
class ModelChoice:
    """A model to evaluate: a registered name and an optional checkpoint file."""

    name: str
    checkpoint: str | None = None

    @property
    def label(self) -> str:
        return self.name if not self.checkpoint else f"{self.name}@{Path(self.checkpoint).name}"

    @classmethod
    def parse(cls, value: Any) -> "ModelChoice":
        """A name, ``(name, checkpoint)``, or a ModelChoice."""
        if isinstance(value, ModelChoice):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(str(value[0]), None if value[1] in (None, "") else str(value[1]))
        raise InputError(f"model {value!r}: give a model name, (name, checkpoint), a ModelChoice or a built model")


@dataclass(frozen=True)
class RunSpec:
    model: ModelChoice
    mode: str
    prompt: PromptSpec

    @property
    def label(self) -> str:
        return f"{self.model.label}/{self.mode}/{self.prompt}"

    def info(self) -> RunInfo:
        return RunInfo(self.label, self.model.name, self.model.checkpoint or "", self.mode, str(self.prompt))


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, PromptSpec, ModelChoice)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _models(models: Any, device: str | None) -> list[tuple[ModelChoice, Any]]:
    """(choice, built model) pairs; names are built with the registry, built models are used as they are."""
    from medsam.models.registry import build_model

    out = []
    for item in _as_list(models):
        spec = getattr(item, "spec", None)
        if spec is not None and (hasattr(item, "encode") or hasattr(item, "encode_frames")):
            out.append((ModelChoice(spec.name), item))
            continue
        choice = ModelChoice.parse(item)
        out.append((choice, build_model(choice.name, checkpoint=choice.checkpoint, device=device)))
    if not out:
        raise InputError("no model given: name at least one, e.g. models=['lite_medsam']")
    labels = [c.label for c, _ in out]
    if len(set(labels)) != len(labels):
        raise InputError(f"models {labels}: a model is listed twice; give each model (and checkpoint) once")
    return out


def evaluate(
    data: str | Path | Sequence[Case],
    models: Any = ("lite_medsam",),
    *,
    prompt: Any = "box",
    mode: Any = "default",
    volume_prompt: str = "box3d",
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    tolerance: float = 2.0,
    device: str | None = None,
    keep_worst: int = 3,
    cache_bytes: int = 1 << 30,
    execution: Any = None,
    progress: bool = True,
    orientation: str = "canonical",
) -> EvaluationResult:
    """Evaluate ``models`` on ``data`` under every combination of ``mode`` and ``prompt``.

    data: a manifest CSV, a CVPR24 npz folder, a folder with images/ and masks/, or a list of Cases.
    models: names ("lite_medsam"), (name, checkpoint) pairs, ModelChoice, or models already built.
    prompt: "box", "jitter", "points[:N]", "clicks:N" (the model's refinement strategy), "clicks:N:sam" (box +
    points + fed-back logits), "clicks:N:nologits", "clicks:N:box" (or a list of them). mode: "default" and/or
    "reference" (3D propagation). volume_prompt: "box3d" or "key_slice" for 3D cases.
    datasets / limit: keep these datasets / at most ``limit`` cases per dataset. seed: the run seed
    (each case's prompt seed is derived from it and the case id). tolerance: NSD tolerance (mm for
    volumes, px for 2D images). keep_worst: lowest-DSC cases kept per run and dataset for overlays.
    cache_bytes: embedding cache per model (volumes evaluated in two modes reuse slice embeddings).
    execution: how the models run (``medsam.inference.engines.ExecutionOptions``; None: the default engine, the
    fastest path that keeps the exact path's masks; ``ExecutionOptions.exact()`` the reference eager PyTorch path).
    3D cases under ``clicks:N`` run the CVPR 2025 interactive protocol (:mod:`medsam.evaluation.protocol3d`).
    orientation: how volumes are seen ("canonical", "lps", "stored"; see medsam.evaluation.loading): image,
    reference and given boxes are reoriented together, so DSC/NSD compare like with like.
    """
    from tqdm.auto import tqdm


    cases = load_cases(data, datasets=datasets, limit=limit)
    if volume_prompt not in VOLUME_PROMPTS:
        raise InputError(f"volume prompt {volume_prompt!r}: use one of {', '.join(VOLUME_PROMPTS)}")
    prompt_specs = [PromptSpec.parse(p, volume_prompt=volume_prompt) for p in _as_list(prompt)]
    mode_list = [str(m) for m in _as_list(mode)]
    for m in mode_list:
        if m not in MODES:
            raise InputError(f"mode {m!r}: use one of {', '.join(MODES)}")
    if not prompt_specs or not mode_list:
        raise InputError("give at least one prompt and one mode")
    tol = float(tolerance)
    if not (math.isfinite(tol) and tol >= 0):
        raise InputError(f"tolerance {tolerance!r}: give a distance >= 0 (mm for volumes, px for images)")
    built = _models(models, device)
    predictors = [(choice, _predictor(model, execution, cache_bytes)) for choice, model in built]
    runs = [RunSpec(choice, m, spec) for choice, _ in built for m in dict.fromkeys(mode_list) for spec in dict.fromkeys(prompt_specs)]

    loader = CaseLoader(orientation)
    worst = WorstCases(keep_worst)
    rows: list[CaseResult] = []
    bar = tqdm(cases, desc="evaluate", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.key[-40:], refresh=False)
        case_rows = _evaluate_case(case, loader, predictors, runs, seed, tol, worst)
        rows.extend(case_rows)
    bar.close()
    settings = EvaluationSettings(
        str(data) if isinstance(data, (str, Path)) else f"{len(cases)} given cases", int(seed), tol, volume_prompt,
        loader.orientation,
    )
    return EvaluationResult(tuple(r.info() for r in runs), rows, tuple(cases), settings, worst.items())


def _predictor(model: Any, execution: Any, cache_bytes: int) -> Any:
    """A Predictor on the execution engine for image models; a MemoryPredictor (MedSAM2's 3D procedure, PyTorch)
    for the SAM 2 family."""
    if getattr(getattr(model, "spec", None), "family", "sam") == "sam2":
        from medsam.inference.memory_video import MemoryPredictor

        return MemoryPredictor(model, cache_bytes=cache_bytes)
    from medsam.inference.engines import make_predictor

    return make_predictor(model, execution, cache_bytes=cache_bytes)


def _row(run: RunSpec, case: Case, status: str, message: str = "", **values: Any) -> CaseResult:
    return CaseResult(
        run=run.label, model=run.model.name, checkpoint=run.model.checkpoint or "", mode=run.mode,
        prompt=str(run.prompt), dataset=case.dataset, case=case.case_id, modality=case.modality, dims=case.dims,
        target=case.target, status=status, message=message, **values,
    )


def _failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, CaseProblem):
        return exc.status, str(exc)
    if isinstance(exc, BackendUnavailableError):
        return "unavailable", str(exc)
    if isinstance(exc, MedsamError):
        return "error", str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


def _evaluate_case(
    case: Case,
    loader: CaseLoader,
    predictors: list,
    runs: list[RunSpec],
    run_seed: int,
    tolerance: float,
    worst: WorstCases,
) -> list[CaseResult]:
    try:
        loaded = loader.load(case)
    except Exception as exc:  # noqa: BLE001 - an unreadable case is reported, the evaluation goes on
        status, message = _failure(exc)
        if status == "error":
            status, message = "unreadable", f"{case.image_path} / {case.mask_path}: {message}"
        return [_row(run, case, status, message) for run in runs]
    seed = case_seed(run_seed, case.key)
    by_run: dict[str, CaseResult] = {}
    for choice, predictor in predictors:
        model_runs = [r for r in runs if r.model == choice]
        encode_seconds = 0.0
        if not loaded.is_3d and getattr(predictor, "is_memory_predictor", False):
            message = (f"{choice.name} is a SAM 2 memory model: it is evaluated on 3D cases (and videos); "
                       "2D images need an image model")
            by_run.update({r.label: _row(r, case, "unavailable", message) for r in model_runs})
            continue
        if not loaded.is_3d:
            try:
                t0 = time.perf_counter()
                encoding = predictor.set_image(loaded.image, source=f"image {case.image_path}")
                encode_seconds = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - reported in the case's rows
                status, message = _failure(exc)
                by_run.update({r.label: _row(r, case, status, message) for r in model_runs})
                continue
        # 2D rows do not depend on the mode, 3D rows not on the 2D prompt kind: such runs share a row
        shared: dict[object, tuple[CaseResult, Outcome | None]] = {}
        for run in model_runs:
            if loaded.is_3d:  # the 3D click protocol always propagates in the default mode
                n = run.prompt.n_clicks
                share_key = ("protocol", n) if n else (run.mode, run.prompt.volume_prompt)
            else:
                share_key = run.prompt
            if share_key in shared:
                first, outcome = shared[share_key]
                row = by_run[run.label] = _relabel(first, run)
                if outcome is not None:
                    worst.offer(run.label, case.dataset, row.dsc, lambda: WorstCase(row, loaded.image, loaded.reference, outcome.mask, outcome.prompt))
                continue
            try:
                if loaded.is_3d:
                    outcome = predict_volume(predictor, loaded, run.prompt, run.mode, seed, tolerance)
                else:
                    outcome = predict_image(predictor, encoding, loaded, run.prompt, seed)
                row = _scored_row(run, loaded, outcome, seed, tolerance, encode_seconds)
            except Exception as exc:  # noqa: BLE001 - one failing case must not stop an evaluation
                status, message = _failure(exc)
                row, outcome = _row(run, case, status, message, seed=seed), None
            else:
                worst.offer(run.label, case.dataset, row.dsc, lambda: WorstCase(row, loaded.image, loaded.reference, outcome.mask, outcome.prompt))
            by_run[run.label] = row
            shared[share_key] = (row, outcome)
    return [by_run[r.label] for r in runs]


def _relabel(row: CaseResult, run: RunSpec) -> CaseResult:
    from dataclasses import replace

    note = _volume_note(run) if row.dims == "3d" and row.ok and not row.nsd_per_click else row.message
    return replace(row, run=run.label, mode=run.mode, prompt=str(run.prompt), message=note)


def _volume_note(run: RunSpec) -> str:
    if run.prompt.kind in ("box", "clicks"):
        return ""
    return f"volumes get the {run.prompt.volume_prompt} prompt ({run.prompt} is for 2D images)"


def _scored_row(run: RunSpec, loaded: LoadedCase, outcome: Outcome, seed: int, tolerance: float, encode_seconds: float) -> CaseResult:
    scores = score_case(outcome.mask, loaded.reference, spacing_mm=loaded.spacing_mm, tolerance_mm=tolerance)
    protocol: dict[str, Any] = {}
    if outcome.nsd_per_click:
        from medsam.evaluation.protocol3d import click_auc

        n = len(outcome.dsc_per_click) - 1
        protocol = dict(nsd_per_click=outcome.nsd_per_click, seconds_per_step=outcome.seconds_per_step,
                        dsc_auc=click_auc(outcome.dsc_per_click, n), nsd_auc=click_auc(outcome.nsd_per_click, n))
    note = outcome.note if (not loaded.is_3d or protocol) else _volume_note(run)
    return _row(
        run, loaded.case, "ok", note,
        dsc=scores.dsc, iou=scores.iou, nsd=scores.nsd, nsd_challenge=scores.nsd_challenge, hd95=scores.hd95,
        tolerance=tolerance, distance_unit="mm" if loaded.is_3d else "px",
        predicted_iou=outcome.predicted_iou, seconds=encode_seconds + outcome.seconds, seed=seed,
        n_clicks=outcome.prompt.n_clicks, dsc_per_click=outcome.dsc_per_click,
        prompt_used=outcome.prompt.describe(), prompt_json=outcome.prompt.to_json(), **protocol,
    )

