"""Seconds per interaction step of the CVPR 2025 interactive protocol on a 3D dev case, in one run:

    python benchmarks/interactive3d.py [--case CT_Lesion_000002_03_01_035-047] [--clicks 5] [--threads N]
                                       [--skip-cli]

Three ways of running the same six steps (the challenge's box, then 5 clicks at the centre of the largest 3D error)
with LiteMedSAM on the default engine:
- in process: one InteractiveVolume for the whole case (the Python API, the annotation server);
- as a submission: `medsam segment INPUTS -o OUTPUTS` run as a new process per step under the simulated harness
  (medsam.evaluation.protocol3d.simulate_harness), as the challenge runs a docker submission: the click steps
  continue from the state and the slice embeddings the previous call left in OUTPUTS/.medsam_cache;
- as a submission without that cache (a fresh cache folder each call, so every call replays the box and every
  click and encodes every slice again): what a tool that keeps nothing between calls pays.
Per step: seconds (wall), and each click step's cost as a fraction of its own box step. The process start (Python,
torch, the engine) is part of every submission call; it is printed apart. Numbers on a shared machine drift:
compare the rows of one run, and quote the load average printed with them.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"


def load_case(name: str):
    from medsam.evaluation import CaseLoader, load_cases

    cases = [c for c in load_cases(SHARED / "cases.csv") if c.case_id == name]
    if not cases:
        raise SystemExit(f"case {name} is not in {SHARED / 'cases.csv'}")
    return CaseLoader().load(cases[0])


def in_process(loaded, n_clicks: int, threads: int | None) -> list[float]:
    from medsam.evaluation.protocol3d import run_protocol
    from medsam.inference.engines import ExecutionOptions, make_predictor
    from medsam.models.registry import build_model

    predictor = make_predictor(build_model("lite_medsam"), ExecutionOptions(threads=threads))
    trace = run_protocol(predictor, loaded.image, loaded.reference, spacing_mm=loaded.spacing_mm, n_clicks=n_clicks, seed=0)
    print(f"  in process: DSC per step {' '.join(f'{d:.3f}' for d in trace.dsc)}; "
          f"{trace.slices_encoded} slices encoded, {trace.slices_decoded} decoded")
    return list(trace.seconds)


def submission(loaded, n_clicks: int, threads: int | None, keep_cache: bool, work: Path) -> list[float]:
    from medsam.evaluation.protocol3d import simulate_harness

    inputs, outputs = work / "inputs", work / "outputs"
    command = [sys.executable, "-m", "medsam.cli", "segment", str(inputs), "-o", str(outputs)]
    if threads:
        command += ["--threads", str(threads)]
    env = dict(os.environ)
    env.setdefault("MEDSAM_CACHE_DIR", str(work / "models"))  # exported engines once, as on a machine that ran before

    def run() -> None:
        if not keep_cache:
            shutil.rmtree(outputs / ".medsam_cache", ignore_errors=True)
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)

    gts = loaded.reference.astype(np.uint8)
    steps = simulate_harness(run, loaded.image, gts, loaded.spacing_mm, inputs, outputs, n_clicks=n_clicks, seed=0)
    print(f"  submission ({'cache kept' if keep_cache else 'no cache'}): DSC per step "
          f"{' '.join(f'{s.dsc[0]:.3f}' for s in steps)}")
    return [s.seconds for s in steps]


def start_up_seconds(threads: int | None) -> float:
    """A call that loads the model and the engine and does nothing else (medsam models)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medsam.cli", "models"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="CT_Lesion_000002_03_01_035-047")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-cli", action="store_true", help="only the in-process run")
    parser.add_argument("--csv", default=None, help="also write the table as CSV")
    args = parser.parse_args()
    if not (SHARED / "cases.csv").is_file():
        raise SystemExit(f"the dev data {SHARED} is absent")
    loaded = load_case(args.case)
    print(f"case {args.case}: volume {loaded.image.shape} (z, y, x), object on "
          f"{int(loaded.reference.any(axis=(1, 2)).sum())} slices; load average {os.getloadavg()[0]:.2f}")
    rows = {"in process": in_process(loaded, args.clicks, args.threads)}
    if not args.skip_cli:
        with tempfile.TemporaryDirectory() as tmp:
            rows["submission, cache kept"] = submission(loaded, args.clicks, args.threads, True, Path(tmp) / "a")
            rows["submission, no cache"] = submission(loaded, args.clicks, args.threads, False, Path(tmp) / "b")
        print(f"  process start-up (python, torch, registry; `medsam models`): {start_up_seconds(args.threads):.2f} s")
    header = ["run", "box step s"] + [f"click {k} s" for k in range(1, args.clicks + 1)] + ["click mean / box"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    table = []
    for name, secs in rows.items():
        clicks = secs[1:]
        ratio = float(np.mean(clicks)) / secs[0] if secs[0] > 0 else float("nan")
        row = [name, f"{secs[0]:.2f}"] + [f"{s:.2f}" for s in clicks] + [f"{ratio:.3f}"]
        table.append(row)
        print("| " + " | ".join(row) + " |")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *table])
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
