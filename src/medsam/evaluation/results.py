"""The results of an evaluation: one typed row per case and run, summaries, click curves, CSV output.

Statistics use :class:`medsam.metrics.MetricAccumulator` over the cases whose status is ``ok``; the others
(missing files, shape mismatches, ...) are left out of the statistics and counted as ``n_failed``.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from medsam.evaluation.cases import Case
from medsam.io.atomic import atomic_path
from medsam.metrics import MetricAccumulator, Summary
from medsam.training.prompts import SimulatedPrompt

#: Metrics summarised per dataset and modality, in table order.
SUMMARY_METRICS = ("dsc", "iou", "nsd", "nsd_challenge", "hd95", "predicted_iou", "seconds", "dsc_auc", "nsd_auc")


@dataclass(frozen=True)
class RunInfo:
    """One compared configuration: ``label`` = model[@checkpoint]/mode/prompt."""

    label: str
    model: str
    checkpoint: str
    mode: str
    prompt: str


@dataclass(frozen=True)
class CaseResult:
    """One case under one run.

    status: "ok", or why the case was not scored ("missing_file", "shape_mismatch", "empty_mask",
        "unreadable", "bad_row", "unavailable", "error"); message says it in words (and notes for ok rows).
    dsc, iou, nsd (in-plane boundary NSD), nsd_challenge (CVPR 2024 convention), hd95: NaN unless ok;
        distances in ``distance_unit`` ("mm" with the volume's spacing for 3D, "px" for 2D), NSD at
        ``tolerance``. predicted_iou: the model's own estimate (mean over slices for volumes).
    seconds: model time for this case and run (image encoding, counted in every run sharing it, plus decoding).
    prompt_used: the prompt as given (boxes, points, clicks); prompt_json: the same, machine-readable
        (``SimulatedPrompt.from_json``). dsc_per_click: DSC before the first click and after each click.
    3D cases under ``clicks:N`` (the CVPR 2025 protocol, :mod:`medsam.evaluation.protocol3d`): nsd_per_click the
        challenge's NSD after each step (0 where DSC <= 0.2, as the harness does), seconds_per_step the model time of
        each step, dsc_auc / nsd_auc the trapezoid over the click steps; dsc/nsd then are the final step's.
    """

    run: str
    model: str
    checkpoint: str
    mode: str
    prompt: str
    dataset: str
    case: str
    modality: str
    dims: str
    target: str
    status: str
    message: str = ""
    dsc: float = math.nan
    iou: float = math.nan
    nsd: float = math.nan
    nsd_challenge: float = math.nan
    hd95: float = math.nan
    tolerance: float = 2.0
    distance_unit: str = "px"
    predicted_iou: float = math.nan
    seconds: float = math.nan
    seed: int | None = None
    n_clicks: int = 0
    dsc_per_click: tuple[float, ...] = ()
    nsd_per_click: tuple[float, ...] = ()
    seconds_per_step: tuple[float, ...] = ()
    dsc_auc: float = math.nan
    nsd_auc: float = math.nan
    prompt_used: str = ""
    prompt_json: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


CSV_COLUMNS = tuple(f.name for f in fields(CaseResult))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value) if math.isinf(value) else f"{value:.6g}"
    if isinstance(value, tuple):
        return ";".join(_cell(v) for v in value)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class RunSummary:
    """A metric's statistics for one run over one group (``summary.dataset`` / ``.modality``; None = pooled).
    n_failed: cases of the group that could not be scored (not in the statistics)."""

    run: str
    summary: Summary
    n_failed: int


@dataclass(frozen=True)
class ClickCurve:
    """Mean DSC (and NSD, for the 3D protocol; else empty) over the cases of a dataset (None = all) before and after
    each click, for one run."""

    run: str
    dataset: str | None
    mean_dsc: tuple[float, ...]
    n: int
    mean_nsd: tuple[float, ...] = ()


@dataclass(frozen=True)
class ProtocolSummary:
    """The 3D interactive protocol over the cases of a dataset (None = all 3D datasets) for one run: means per step
    (0 = the box) and of the AUCs over the click steps."""

    run: str
    dataset: str | None
    n: int
    dsc: tuple[float, ...]
    nsd: tuple[float, ...]
    seconds: tuple[float, ...]
    dsc_auc: float
    nsd_auc: float


@dataclass(frozen=True)
class WorstCase:
    """What an overlay of a poorly segmented case needs: the (display) image, the reference and predicted
    masks, the prompt, and the case's row."""

    row: CaseResult
    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    prompt: SimulatedPrompt


class WorstCases:
    """Keeps the ``k`` lowest-DSC cases of every (run, dataset); a case's arrays are gathered only when kept."""

    def __init__(self, k: int) -> None:
        self.k = max(0, int(k))
        self._heaps: dict[tuple[str, str], list[tuple[float, int, WorstCase]]] = {}
        self._count = 0

    def wants(self, run: str, dataset: str, dsc: float) -> bool:
        """Would a case of this DSC be kept?"""
        if self.k == 0 or math.isnan(dsc):
            return False
        heap = self._heaps.get((run, dataset), [])
        return len(heap) < self.k or -dsc > heap[0][0]

    def offer(self, run: str, dataset: str, dsc: float, make: Callable[[], WorstCase]) -> None:
        """Keep the case ``make()`` builds when it is among the ``k`` worst of its run and dataset."""
        if not self.wants(run, dataset, dsc):
            return
        heap = self._heaps.setdefault((run, dataset), [])
        self._count += 1
        heapq.heappush(heap, (-dsc, self._count, make()))  # max-heap on DSC: the best kept is popped first
        if len(heap) > self.k:
            heapq.heappop(heap)

    def items(self) -> list[WorstCase]:
        """All kept cases, by run and dataset, worst first."""
        out: list[WorstCase] = []
        for heap in self._heaps.values():
            out.extend(item for _, _, item in sorted(heap, key=lambda e: (-e[0], e[1])))
        return out


@dataclass(frozen=True)
class EvaluationSettings:
    """The options an evaluation ran with, for the report: data source, run seed, NSD tolerance (mm for
    volumes, px for 2D images), the prompt given to volumes and the orientation volumes were seen in."""

    data: str = ""
    seed: int = 0
    tolerance: float = 2.0
    volume_prompt: str = "box3d"
    orientation: str = "canonical"


@dataclass
class EvaluationResult:
    """Rows of every case under every run, plus what the report needs.

    rows: one :class:`CaseResult` per (run, case), in case order then run order. runs: the compared runs.
    cases: the evaluated cases. settings: the options of the run (for the report). worst: arrays of the
    lowest-DSC cases (kept only for overlays; empty when ``keep_worst=0``).
    """

    runs: tuple[RunInfo, ...]
    rows: list[CaseResult]
    cases: tuple[Case, ...] = ()
    settings: EvaluationSettings = field(default_factory=EvaluationSettings)
    worst: list[WorstCase] = field(default_factory=list)

    # --- selection ------------------------------------------------------------------------------------

    def rows_of(self, run: str | None = None, *, dataset: str | None = None, ok_only: bool = False) -> list[CaseResult]:
        return [
            r
            for r in self.rows
            if (run is None or r.run == run) and (dataset is None or r.dataset == dataset) and (r.ok or not ok_only)
        ]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.rows))

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.rows if not r.ok]

    # --- statistics -----------------------------------------------------------------------------------

    def accumulator(self, run: str, *, seed: int = 0, n_resamples: int = 2000) -> MetricAccumulator:
        """The run's scored cases in a MetricAccumulator (metrics of SUMMARY_METRICS)."""
        acc = MetricAccumulator(seed=seed, n_resamples=n_resamples)
        for r in self.rows_of(run, ok_only=True):
            acc.add(r.case, {m: getattr(r, m) for m in SUMMARY_METRICS}, dataset=r.dataset, modality=r.modality)
        return acc

    def summaries(self, by: Sequence[str] = ("dataset",), metrics: Sequence[str] = SUMMARY_METRICS) -> list[RunSummary]:
        """Statistics of every run and metric per group of ``by`` ("dataset", "modality", both, or () = pooled)."""
        out: list[RunSummary] = []
        for run in self.runs:
            acc = self.accumulator(run.label)
            failed = [r for r in self.rows_of(run.label) if not r.ok]
            if len(acc) == 0:
                continue
            for metric in metrics:
                for s in acc.summary(metric, by=tuple(by)):  # type: ignore[arg-type]
                    n_failed = sum(
                        1
                        for r in failed
                        if (s.dataset is None or r.dataset == s.dataset) and (s.modality is None or r.modality == s.modality)
                    )
                    out.append(RunSummary(run.label, s, n_failed))
        return out

    def click_curves(self) -> list[ClickCurve]:
        """Mean DSC per click for every run with clicks: per dataset, then all datasets pooled."""
        curves: list[ClickCurve] = []
        for run in self.runs:
            rows = [r for r in self.rows_of(run.label, ok_only=True) if len(r.dsc_per_click) > 1]
            if not rows:
                continue
            for dataset in [*dict.fromkeys(r.dataset for r in rows), None]:
                group = [r for r in rows if dataset is None or r.dataset == dataset]
                sel = [r.dsc_per_click for r in group]
                length = min(len(s) for s in sel)
                mean = np.mean([s[:length] for s in sel], axis=0)
                nsds = [r.nsd_per_click[:length] for r in group]
                mean_nsd = tuple(float(v) for v in np.mean(nsds, axis=0)) if all(len(v) == length for v in nsds) else ()
                curves.append(ClickCurve(run.label, dataset, tuple(float(v) for v in mean), len(sel), mean_nsd))
        return curves

    def protocol_summaries(self) -> list["ProtocolSummary"]:
        """Per run and 3D dataset (then all 3D datasets pooled, dataset None) under the interactive protocol: mean
        DSC, NSD and seconds per step, mean DSC_AUC and NSD_AUC."""
        out: list[ProtocolSummary] = []
        for run in self.runs:
            rows = [r for r in self.rows_of(run.label, ok_only=True) if r.nsd_per_click]
            datasets = list(dict.fromkeys(r.dataset for r in rows))
            for dataset in datasets + ([None] if len(datasets) > 1 else []):
                group = [r for r in rows if dataset is None or r.dataset == dataset]
                n = min(len(r.dsc_per_click) for r in group)
                mean = lambda key: tuple(float(v) for v in np.mean([getattr(r, key)[:n] for r in group], axis=0))  # noqa: E731
                out.append(ProtocolSummary(
                    run.label, dataset, len(group), mean("dsc_per_click"), mean("nsd_per_click"), mean("seconds_per_step"),
                    _finite_mean([r.dsc_auc for r in group]), _finite_mean([r.nsd_auc for r in group]),
                ))
        return out

    # --- output ---------------------------------------------------------------------------------------

    def to_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write every row (columns ``CSV_COLUMNS``) atomically; an existing file is kept unless overwrite."""
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(rows_csv(self.rows), encoding="utf-8")
        return Path(path)


    def write(self, out_dir: str | Path, *, overwrite: bool = False, command: str | None = None) -> Path:
        """Write the results folder (CSVs, plots, overlays, report.md; see medsam.evaluation.report);
        returns the path of report.md."""
        from medsam.evaluation.report import write_results

        return write_results(self, out_dir, overwrite=overwrite, command=command)


def _finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values; NaN when there are none (an AUC needs two click steps)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def rows_csv(rows: Iterable[CaseResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([_cell(getattr(r, c)) for c in CSV_COLUMNS])
    return buffer.getvalue()


def summaries_csv(summaries: Iterable[RunSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["run", "dataset", "modality", "metric", "n", "n_failed", "n_nonfinite", "mean", "median", "ci_low", "ci_high", "confidence"]
    )
    for item in summaries:
        s = item.summary
        writer.writerow(
            [item.run, "(all)" if s.dataset is None else s.dataset, "(all)" if s.modality is None else s.modality,
             s.metric, s.n, item.n_failed, s.n_nonfinite]
            + [_cell(float(v)) for v in (s.mean, s.median, s.ci_low, s.ci_high)]
            + [f"{s.confidence:g}"]
        )
    return buffer.getvalue()
