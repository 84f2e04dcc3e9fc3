"""`medsam batch --jobs JOBS.csv|JOBS.jsonl|FOLDER -o OUT_DIR [--executor local|ray] [--workers N]
[--ray-address ADDR]`: many studies in one resumable run.

Examples:
    medsam batch --jobs cohort.jsonl -o runs/cohort --workers 2
    medsam batch --jobs cvpr24_imgs/ -o runs/cvpr --mode reference --precision fp32 --backend torch
    medsam batch --jobs detections.csv -o runs/det --executor ray --ray-address ray://head:10001 --workers 16 --threads 4

The same command again resumes: jobs already done are skipped, failed and unfinished ones run.
"""

from __future__ import annotations

import argparse
import sys

from medsam.cli.common import _positive_int, add_model_options


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "batch",
        help="segment many studies from a jobs file or folder, resumable (local processes or Ray)",
        description="Run many segmentation jobs (2D images, volumes, npz cases, videos; boxes, 3D boxes, key-slice "
        "boxes, clicks, RECIST markers, or nothing for segment-everything) into OUT_DIR/<job id>/. A journal in "
        "OUT_DIR records every job; running the same command again skips what is done and retries what failed or "
        "was cut short. One bad job never stops the run: OUT_DIR/summary.csv lists every job and "
        "OUT_DIR/failures.txt what failed and why. Fields of a job: see medsam.batch.jobs (README: batch).",
    )
    parser.add_argument("--jobs", required=True, metavar="JOBS",
                        help="JOBS.jsonl, JOBS.csv, or a folder (CVPR24/25 npz cases, or images with prompts.csv)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                        help="output folder: new, empty, or an earlier batch's folder to resume")
    run = parser.add_argument_group("execution")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: worker processes on this machine (default); ray: Ray actors (pip install 'medsam-toolkit[ray]')")
    run.add_argument("--workers", type=_positive_int, default=None,
                     help="worker processes / Ray actors, each holding one model (default 1; with --ray-address: "
                     "the cluster's CPUs divided by --threads)")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join a running Ray cluster (e.g. ray://head:10001 or auto); default: start Ray here")
    run.add_argument("--retries", type=int, default=2,
                     help="extra attempts for a job whose worker died while running it (default 2)")
    run.add_argument("--max-memory-mb", type=_positive_int, default=None, metavar="MB",
                     help="replace a worker whose resident memory exceeds this after a job (default: never)")
    run.add_argument("--batch-size", type=_positive_int, default=4, help="volume slices per encoder batch (default 4)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    defaults = parser.add_argument_group("job defaults (a job's own fields win)")
    defaults.add_argument("--window", default="auto", help="volume intensity window (default auto)")
    defaults.add_argument("--mode", choices=("default", "reference"), default="default", help="3D propagation mode")
    add_model_options(parser)
    for action in parser._actions:
        if action.dest == "threads":
            action.help = "CPU threads per worker (default: the cores divided by --workers)"
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from medsam.batch.executors import LocalExecutor, available_cores, plan_threads
    from medsam.batch.jobs import JobDefaults, ModelRef, load_jobs
    from medsam.batch.run import prepare_out_dir, run_batch
    from medsam.batch.runner import WorkerSettings
    from medsam.errors import InputError

    if args.retries < 0:
        raise InputError(f"--retries {args.retries}: give 0 or more")
    if args.ray_address and args.executor != "ray":
        raise InputError("--ray-address joins a Ray cluster: add --executor ray")
    jobs = load_jobs(args.jobs, JobDefaults(ModelRef(args.model, args.checkpoint), args.window, args.mode))
    prepare_out_dir(args.output)
    workers = args.workers
    if workers is None:
        workers = 1 if not args.ray_address else 0
    if workers == 0:  # a cluster: as many actors as its CPUs allow
        workers = _cluster_workers(args.threads or 1, args.ray_address)
    threads = plan_threads(workers, args.threads) if not args.ray_address else (args.threads or 1)
    cores = available_cores()
    if args.executor == "local" and workers * threads > cores:
        print(f"medsam batch: note: {workers} workers x {threads} threads exceed the {cores} cores here", file=sys.stderr)
    settings = WorkerSettings(device=args.device, precision=args.precision, backend=args.backend, threads=threads,
                              batch_size=args.batch_size, max_memory_mb=args.max_memory_mb)
    if args.executor == "ray":
        from medsam.batch.ray_executor import RayExecutor

        executor = RayExecutor(settings, workers, address=args.ray_address)
    else:
        executor = LocalExecutor(settings, workers)
    print(f"{len(jobs)} job(s) from {args.jobs} -> {args.output} on {executor.describe()}", file=sys.stderr)
    report = run_batch(jobs, args.output, executor, retries=args.retries, progress=not args.no_progress)
    print(f"{report.done} of {report.total} job(s) done ({report.skipped} before this run, {report.ran} finished now), "
          f"{report.failed} failed, in {report.seconds:.1f} s; summary {report.summary_csv}")
    if report.failures:
        for state in report.failures[:10]:
            print(f"  failed {state.job_id}: {state.error}", file=sys.stderr)
        if len(report.failures) > 10:
            print(f"  ... and {len(report.failures) - 10} more", file=sys.stderr)
        print(f"failures: {report.failures_path}; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0 if report.ok else 1


def _cluster_workers(threads: int, address: str) -> int:
    from medsam.batch.ray_executor import import_ray

    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // max(1, threads))
