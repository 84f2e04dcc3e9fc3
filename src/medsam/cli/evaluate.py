"""`medsam evaluate --data MANIFEST|FOLDER --model NAME [--checkpoint PATH] [--prompt KIND] [--mode MODE] -o DIR`.

Scores models on a dataset with simulated prompts and writes a results folder (cases.csv, summary.csv,
plots, worst-case overlays, report.md; see medsam.evaluation.report).

Examples:
    medsam evaluate --data ../shared/data/cases.csv --model lite_medsam -o runs/lite_box
    medsam evaluate --data ../shared/data/cases.csv --model lite_medsam --prompt clicks:3 -o runs/lite_clicks
    medsam evaluate --data cvpr24_npz_folder --model lite_medsam --model medsam_vit_b --checkpoint - \\
        --checkpoint medsam_vit_b.pth --mode default,reference --datasets ct -o runs/compare

--model, --mode and --prompt repeat (or take comma lists); every combination is one run, compared side by
side. With several models, give --checkpoint once per model in the same order ("-" = the variant's own).
"""

from __future__ import annotations

import argparse
import shlex
import sys


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score models on a dataset (DSC, NSD, HD95) with simulated prompts; write CSVs, plots and a report",
        description="Evaluate one or more models on a manifest CSV (dataset,case,modality,dims,image,mask,label,target), "
        "a CVPR24 npz folder (imgs, gts, boxes) or a folder with images/ and masks/. Each case's prompt is simulated "
        "from its reference mask (seeded per case); every model x mode x prompt combination is one run.",
    )
    parser.add_argument("--data", required=True, help="manifest CSV, CVPR24 npz folder, or folder with images/ and masks/")
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="model variant (see `medsam models`); repeat or comma-separate to compare; default lite_medsam")
    parser.add_argument("--checkpoint", action="append", default=None, metavar="PATH",
                        help="weights file for --model; with several models give one per model in order ('-' = the variant's own)")
    parser.add_argument("--prompt", action="append", default=None, metavar="KIND",
                        help="box (tight box, default), jitter (0-20 px per side), points[:N], clicks:N (box + N corrective clicks, "
                        "turned into prompts by the model's refinement strategy: box_update for LiteMedSAM/MedSAM, the SAM recipe "
                        "for SAM); clicks:N:sam (box + clicks as points + previous logits), clicks:N:nologits (without the "
                        "logits), clicks:N:box (box_update for any model); repeatable. On 3D cases clicks:N runs the CVPR 2025 "
                        "interactive protocol: the challenge's box, then N clicks at the centre of the largest 3D error, DSC and "
                        "NSD after every step, DSC_AUC/NSD_AUC over the click steps")
    parser.add_argument("--mode", action="append", default=None, metavar="MODE",
                        help="3D propagation mode: default and/or reference (repeatable or comma list); 2D cases do not depend on it")
    parser.add_argument("--volume-prompt", choices=("box3d", "key_slice"), default="box3d",
                        help="prompt of 3D cases: the 3D box (default) or the box on the slice with the largest area")
    parser.add_argument("--orientation", choices=("canonical", "lps", "stored"), default="canonical",
                        help="how volumes are seen: canonical (radiological display orientation of the slice plane, "
                        "default), lps, or stored; image, reference mask and given boxes are reoriented together")
    parser.add_argument("--datasets", default=None, help="comma list of dataset names to keep")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N cases of each dataset")
    parser.add_argument("--seed", type=int, default=0, help="run seed for jitter/points (per case: derived from it and the case id)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance: mm for volumes, px for 2D images (default 2)")
    parser.add_argument("--worst", type=int, default=3, metavar="K", help="overlays of the K lowest-DSC cases per run and dataset (default 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N; default: CUDA when available")
    from medsam.cli.common import add_execution_options

    add_execution_options(parser.add_argument_group("execution (default: the fast engine that keeps the exact masks)"))
    parser.add_argument("-o", "--output", required=True, metavar="RESULTS_DIR", help="results folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _model_choices(args: argparse.Namespace):
    from medsam.errors import InputError
    from medsam.evaluation import ModelChoice

    names = _split(args.model) or ["lite_medsam"]
    checkpoints = list(args.checkpoint or [])
    if checkpoints and len(checkpoints) != len(names):
        raise InputError(
            f"{len(checkpoints)} --checkpoint for {len(names)} models: give one --checkpoint per --model, in order "
            "('-' for a model's own weights)"
        )
    checkpoints = checkpoints or [None] * len(names)
    return [ModelChoice(n, None if c in (None, "", "-") else c) for n, c in zip(names, checkpoints)]


def run(args: argparse.Namespace) -> int:
    from medsam.cli.common import execution_options
    from medsam.evaluation import evaluate
    from medsam.io.atomic import check_writable

    # The output folder is checked first; evaluate() checks the data, prompts and modes before building models.
    check_writable(args.output, overwrite=args.overwrite)
    models = _model_choices(args)
    result = evaluate(
        args.data, models, prompt=_split(args.prompt) or ["box"], mode=_split(args.mode) or ["default"],
        volume_prompt=args.volume_prompt, datasets=_split([args.datasets]) if args.datasets else None,
        limit=args.limit, seed=args.seed, tolerance=args.tolerance, device=args.device, keep_worst=args.worst,
        execution=execution_options(args), progress=not args.no_progress, orientation=args.orientation,
    )
    command = "medsam " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] else None
    report = result.write(args.output, overwrite=args.overwrite, command=command)
    scored = sum(1 for r in result.rows if r.ok)
    print(f"{scored} of {len(result.rows)} case runs scored ({len(result.cases)} cases x {len(result.runs)} runs)")
    table: dict[tuple[str, str | None], dict] = {}
    for item in result.summaries(("dataset",), metrics=("dsc", "nsd")):
        table.setdefault((item.run, item.summary.dataset), {})[item.summary.metric] = item.summary
    for (run_label, dataset), m in table.items():
        d, n = m["dsc"], m["nsd"]
        print(f"  {run_label:<34} {dataset or '':<22} n={d.n:<4} DSC {d.mean:.3f} [{d.ci_low:.3f}, {d.ci_high:.3f}]  NSD {n.mean:.3f}")
    _print_protocol(result)
    print(f"wrote {report}")
    return 0


def _print_protocol(result) -> None:
    """The 3D interactive protocol's figures: mean DSC / NSD per step, AUCs and seconds per step, per run."""
    for p in result.protocol_summaries():
        steps = " ".join(f"{k}:{d:.3f}/{v:.3f}" for k, (d, v) in enumerate(zip(p.dsc, p.nsd)))
        secs = " ".join(f"{v:.2f}" for v in p.seconds)
        print(f"  {p.run} 3D protocol {p.dataset or 'all 3D'} n={p.n}: DSC/NSD per step (0 = box) {steps}; "
              f"DSC_AUC {p.dsc_auc:.3f} NSD_AUC {p.nsd_auc:.3f}; seconds per step {secs}")
