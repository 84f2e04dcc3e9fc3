"""Write an evaluation's results folder: CSVs, plots, worst-case overlays and one report.md linking them.

    RESULTS_DIR/
      report.md                 per-dataset and per-modality tables (DSC / NSD mean [95% CI]), links below
      cases.csv                 one row per case and run (metrics, prompt, predicted IoU, seconds, status)
      summary.csv               mean, median, 95% bootstrap CI per run x (dataset | modality | all) x metric
      clicks.csv                mean DSC after each corrective click (clicks:N runs only)
      plots/dsc_<dataset>.png   DSC box plot per dataset, runs side by side
      plots/dsc_per_click.png   DSC-per-click curves (clicks:N runs only)
      worst/<run>/...png        overlays (2D) or montages (3D) of the lowest-DSC cases

The folder is built under a temporary name and renamed when complete, so it is never half-written; an
existing folder is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from medsam.errors import BackendUnavailableError
from medsam.evaluation.results import EvaluationResult, RunSummary, WorstCase, rows_csv, summaries_csv
from medsam.io.atomic import atomic_dir, check_writable

#: Overlay colours (label values of medsam.io.raster's palette): correct, missed, false positive.
TRUE_POSITIVE, MISSED, FALSE_POSITIVE = 4, 2, 1
LEGEND = (
    "green = correct, blue = missed (reference only), red = false positive; on 2D overlays the white box and "
    "the dots (green inside, red outside) are the prompt"
)
_PROMPT_BOX_INDEX = 9  # render_overlay colours boxes[i] like label i + 1: index 9 is white


def slug(text: str) -> str:
    """A file-name-safe form of a run label or case id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def error_labels(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Label map of agreement: TRUE_POSITIVE, MISSED (reference only), FALSE_POSITIVE (prediction only)."""
    ref, pred = np.asarray(reference, bool), np.asarray(prediction, bool)
    labels = np.zeros(ref.shape, dtype=np.uint8)
    labels[ref & pred] = TRUE_POSITIVE
    labels[ref & ~pred] = MISSED
    labels[pred & ~ref] = FALSE_POSITIVE
    return labels


def write_case_picture(item: WorstCase, path: Path) -> Path:
    """An overlay PNG (2D, with the prompt drawn) or a montage of key slices (3D) of one case."""
    labels = error_labels(item.reference, item.prediction)
    if labels.ndim == 3:
        from medsam.io.montage import write_montage

        return write_montage(item.image, labels, path)
    from medsam.io.raster import write_overlay_png

    p = item.prompt
    boxes = [None] * _PROMPT_BOX_INDEX + [p.box.as_array()] if p.box is not None else None
    points = None
    if p.points is not None and len(p.points):
        points = [(float(x), float(y), int(lab)) for (x, y), lab in zip(p.points.coords, p.points.labels)]
    return write_overlay_png(item.image, labels, path, boxes=boxes, points=points)


def _f(value: float, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _ci(s) -> str:
    return f"{_f(s.mean)} [{_f(s.ci_low)}, {_f(s.ci_high)}]"


def _table(summaries: list[RunSummary], group: str) -> list[str]:
    """Markdown rows: one per (group value, run) with DSC/NSD mean [CI] and more."""
    index: dict[tuple, dict[str, RunSummary]] = {}
    for item in summaries:
        s = item.summary
        index.setdefault((s.dataset, s.modality, item.run), {})[s.metric] = item
    groups = list(dict.fromkeys((d, m) for d, m, _ in index))  # group by group, the runs side by side
    index = {k: index[k] for g in groups for k in index if k[:2] == g}
    head = {"dataset": "dataset", "modality": "modality", "all": "cases"}[group]
    lines = [
        f"| {head} | run | n | DSC mean [95% CI] | DSC median | NSD mean [95% CI] | NSD-CVPR24 mean | HD95 median | pred. IoU | s/case | not scored |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, modality, run), m in index.items():
        name = {"dataset": dataset, "modality": modality, "all": "all"}[group] or "(none)"
        dsc, nsd = m["dsc"], m["nsd"]
        hd = m["hd95"].summary
        hd_text = _f(hd.median, 2) + (f" ({hd.n_nonfinite} inf)" if hd.n_nonfinite else "")
        lines.append(
            f"| {name} | {run} | {dsc.summary.n} | {_ci(dsc.summary)} | {_f(dsc.summary.median)} | {_ci(nsd.summary)} | "
            f"{_f(m['nsd_challenge'].summary.mean)} | {hd_text} | {_f(m['predicted_iou'].summary.mean)} | "
            f"{_f(m['seconds'].summary.mean, 2)} | {dsc.n_failed} |"
        )
    return lines


def _clicks_csv(result: EvaluationResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "dataset", "n", "clicks", "mean_dsc", "mean_nsd"])
    for c in result.click_curves():
        for k, v in enumerate(c.mean_dsc):
            nsd = f"{c.mean_nsd[k]:.6g}" if k < len(c.mean_nsd) else ""
            writer.writerow([c.run, c.dataset or "(all)", c.n, k, f"{v:.6g}", nsd])
    return buffer.getvalue()


def write_results(
    result: EvaluationResult,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    command: str | None = None,
    plots: bool = True,
) -> Path:
    """Write the results folder described in the module doc; returns the path of report.md."""
    out_dir = Path(out_dir).expanduser()
    check_writable(out_dir, overwrite=overwrite)
    by_dataset = result.summaries(("dataset",))
    by_modality = result.summaries(("modality",))
    pooled = result.summaries(())
    curves = result.click_curves()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "cases.csv").write_text(rows_csv(result.rows), encoding="utf-8")
        (tmp / "summary.csv").write_text(summaries_csv(by_dataset + by_modality + pooled), encoding="utf-8")
        if curves:
            (tmp / "clicks.csv").write_text(_clicks_csv(result), encoding="utf-8")
        figures: dict[str, str] = {}
        notes: list[str] = []
        if plots:
            try:
                figures = _write_plots(result, curves, tmp)
            except BackendUnavailableError as exc:  # the numbers matter more than the figures: write them anyway
                notes.append(f"No plots: {exc}.")
                shutil.rmtree(tmp / "plots", ignore_errors=True)
        pictures = _write_pictures(result, tmp)
        text = _report_text(result, by_dataset, by_modality, pooled, figures, pictures, command, curves, notes)
        (tmp / "report.md").write_text(text, encoding="utf-8")
    return out_dir / "report.md"


def _write_plots(result: EvaluationResult, curves, folder: Path) -> dict[str, str]:
    from medsam.evaluation.plots import click_curve_plot, dsc_boxplot

    (folder / "plots").mkdir()
    figures: dict[str, str] = {}
    for dataset in result.datasets:
        runs = [r.label for r in result.runs]
        values = [[row.dsc for row in result.rows_of(run, dataset=dataset, ok_only=True)] for run in runs]
        if not any(values):
            continue
        name = f"plots/dsc_{slug(dataset)}.png"
        dsc_boxplot(values, runs, folder / name, title=f"{dataset}: DSC per case")
        figures[dataset] = name
    if curves:
        click_curve_plot(curves, folder / "plots" / "dsc_per_click.png")
        figures["__clicks__"] = "plots/dsc_per_click.png"
    return figures


def _write_pictures(result: EvaluationResult, folder: Path) -> list[tuple[WorstCase, str]]:
    out = []
    for item in result.worst:
        row = item.row
        name = f"worst/{slug(row.run)}/{slug(row.dataset)}__{slug(row.case)}.png"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_case_picture(item, path)
        out.append((item, name))
    return out


def _report_text(
    result: EvaluationResult,
    by_dataset: list[RunSummary],
    by_modality: list[RunSummary],
    pooled: list[RunSummary],
    figures: dict[str, str],
    pictures: Sequence[tuple[WorstCase, str]],
    command: str | None,
    curves,
    notes: Sequence[str] = (),
) -> str:
    n2 = sum(1 for c in result.cases if c.dims == "2d")
    n3 = len(result.cases) - n2
    lines = ["# Evaluation report", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        f"- data: `{result.settings.data}`: {len(result.cases)} cases ({n2} 2D, {n3} 3D) in "
        f"{len(result.datasets)} datasets",
        "- runs (model/mode/prompt): " + ", ".join(f"`{r.label}`" for r in result.runs),
        f"- prompt seed: {result.settings.seed} (per case: derived from the seed and the case id); "
        f"3D prompt: {result.settings.volume_prompt}; volumes seen in the {result.settings.orientation} orientation",
        f"- NSD tolerance: {result.settings.tolerance:g} (mm for volumes, px for 2D images)",
        "",
        "DSC and NSD are means over the scored cases with a 95% percentile-bootstrap interval. **NSD** is the "
        "boundary NSD (the in-plane contour for 2D images, boundary voxels with the voxel spacing for volumes); "
        "**NSD-CVPR24** is the official CVPR 2024 challenge score, which treats a 2D mask as a one-slice volume "
        "and so reads much higher than the boundary NSD on 2D images (identical idea in 3D). HD95 in px (2D) "
        "or mm (3D); `inf` when a prediction is empty. Cases that could not be scored are not in the "
        "statistics (column *not scored*; see the list at the end).",
        "",
        *[f"> {note}\n" for note in notes],
        "## Per dataset",
        "",
        *_table(by_dataset, "dataset"),
        "",
        "## Per modality",
        "",
        *_table(by_modality, "modality"),
        "",
        "## All cases",
        "",
        *_table(pooled, "all"),
        "",
    ]
    if curves:
        longest = max(len(c.mean_dsc) for c in curves)
        lines += [
            "## Corrective clicks",
            "",
            "Mean DSC with the box only (0) and after each simulated click (at the centre of the largest error "
            "region), turned into prompts by the model's refinement strategy (`clicks:N`: box_update for box-trained "
            "models such as LiteMedSAM, the SAM recipe for SAM) or the one the prompt names (`:sam` box + points + the "
            "previous logits as mask input, `:nologits` without the logits, `:box` box_update). [clicks.csv](clicks.csv)",
            "",
            "| run | dataset | n | " + " | ".join(f"DSC@{k}" for k in range(longest)) + " |",
            "|---|---|---|" + "---|" * longest,
        ]
        for c in curves:
            cells = [_f(v) for v in c.mean_dsc] + [""] * (longest - len(c.mean_dsc))
            lines.append(f"| {c.run} | {c.dataset or 'all'} | {c.n} | " + " | ".join(cells) + " |")
        lines.append("")
        if "__clicks__" in figures:
            lines += [f"![DSC per click]({figures['__clicks__']})", ""]
    protocol = result.protocol_summaries()
    if protocol:
        longest = max(len(p.dsc) for p in protocol)
        lines += [
            "## 3D interactive protocol (CVPR 2025)",
            "",
            "Volumes under `clicks:N`: the challenge's box (z_mid with its 2D box, z range), then N clicks each at the "
            "centre of the largest 3D error component (positive in a miss, negative in a false positive), as the "
            "challenge's harness places them. DSC / NSD after each step (0 = the box; NSD with surface elements at the "
            "tolerance, 0 where DSC <= 0.2 as the harness scores it), DSC_AUC / NSD_AUC the trapezoid over the click "
            "steps, seconds of model time per step.",
            "",
            "| run | dataset | n | " + " | ".join(f"DSC/NSD@{k}" for k in range(longest)) + " | DSC_AUC | NSD_AUC | s per step |",
            "|---|---|---|" + "---|" * (longest + 3),
        ]
        for p in protocol:
            cells = [f"{_f(d)}/{_f(n)}" for d, n in zip(p.dsc, p.nsd)] + [""] * (longest - len(p.dsc))
            secs = " ".join(f"{v:.2f}" for v in p.seconds)
            lines.append(f"| {p.run} | {p.dataset or 'all 3D'} | {p.n} | " + " | ".join(cells)
                         + f" | {_f(p.dsc_auc)} | {_f(p.nsd_auc)} | {secs} |")
        lines.append("")
    plot_names = [(d, f) for d, f in figures.items() if d != "__clicks__"]
    if plot_names:
        lines += ["## DSC per dataset", ""]
        for dataset, name in plot_names:
            lines += [f"### {dataset}", "", f"![{dataset} DSC]({name})", ""]
    if pictures:
        lines += ["## Worst cases", "", LEGEND + ".", ""]
        for item, name in pictures:
            row = item.row
            lines.append(f"- `{row.run}` {row.dataset} / {row.case}: DSC {_f(row.dsc)}, NSD {_f(row.nsd)} — [{name}]({name})")
        lines.append("")
    failures = result.failures
    if failures:
        lines += ["## Cases not scored", "", "| run | dataset | case | status | message |", "|---|---|---|---|---|"]
        for row in failures[:100]:
            message = row.message.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {row.run} | {row.dataset} | {row.case} | {row.status} | {message} |")
        if len(failures) > 100:
            lines.append(f"| … | | | | {len(failures) - 100} more in cases.csv |")
        lines.append("")
    lines += [
        "## Files",
        "",
        "- [cases.csv](cases.csv): one row per case and run",
        "- [summary.csv](summary.csv): mean, median and 95% CI per run, dataset, modality and metric",
    ]
    if curves:
        lines.append("- [clicks.csv](clicks.csv): mean DSC per click")
    return "\n".join(lines) + "\n"
