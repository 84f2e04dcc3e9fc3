"""Evaluation: run models over a dataset with simulated prompts, score DSC/IoU/NSD/HD95, write reports.

    from medsam.evaluation import evaluate
    result = evaluate("cases.csv", models=["lite_medsam"], prompt=["box", "clicks:3"], mode=["default", "reference"])
    result.rows            # list[CaseResult], one per case and run (status "ok" or why not)
    result.summaries(("dataset",))   # mean / median / 95% bootstrap CI per run and dataset
    result.to_csv("cases.csv")
    result.write("results_dir")      # cases.csv, summary.csv, plots, worst-case overlays, report.md

Modules: cases (datasets -> Case), loading (pixels of a case), prompting (prompt kinds, click simulation),
image2d / volume3d (one case through the model: predictor / 3D propagation), runner (``evaluate``),
results (rows, summaries, CSV), plots (matplotlib Agg), report (the results folder).
The CLI is ``medsam evaluate`` (medsam.cli.evaluate).
"""

from medsam.evaluation.cases import Case, load_cases, read_manifest, read_npz_folder, read_paired_folders
from medsam.evaluation.loading import CaseLoader, CaseProblem, LoadedCase
from medsam.evaluation.prompting import ClickTrace, PromptSpec, StepOutput, simulate_clicks, simulate_refinement
from medsam.evaluation.results import CaseResult, ClickCurve, EvaluationResult, EvaluationSettings, RunInfo, RunSummary
from medsam.evaluation.runner import ModelChoice, RunSpec, evaluate

__all__ = [
    "Case",
    "CaseLoader",
    "CaseProblem",
    "CaseResult",
    "ClickCurve",
    "ClickTrace",
    "EvaluationResult",
    "EvaluationSettings",
    "LoadedCase",
    "ModelChoice",
    "PromptSpec",
    "RunInfo",
    "RunSpec",
    "RunSummary",
    "StepOutput",
    "evaluate",
    "load_cases",
    "read_manifest",
    "read_npz_folder",
    "read_paired_folders",
    "simulate_clicks",
    "simulate_refinement",
]
