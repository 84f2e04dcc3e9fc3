"""``--executor ray``: the batch's workers are Ray actors, on this machine or on a running Ray cluster.

    RayExecutor(WorkerSettings(threads=1), workers=2)                         # ray.init(num_cpus=2) here
    RayExecutor(WorkerSettings(threads=4), workers=16, address="ray://head:10001")   # join a cluster

Each actor (``num_cpus`` = threads per worker, one GPU each with ``--device cuda``) loads its model once and
runs jobs one at a time through the same code as a local worker (:mod:`medsam.batch.runner`). What moves:
the job (a small frozen dataclass) to the actor; the job's output files, as bytes through Ray's object store,
back to the driver, which alone writes OUT_DIR and the journal (so OUT_DIR need not be shared by the nodes).
The inputs are read by the actors from their paths: on a cluster every node must see them at the same path
(a shared file system) and have the toolkit installed (the same environment as the driver).

A dead actor (killed, out of memory, node lost) makes its job ``lost``: the driver retries it and a fresh actor
takes the dead one's place. Ray is an optional extra (``pip install 'medsam-toolkit[ray]'``), imported only here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from medsam.batch.executors import Lost, Started, WorkerStartError, set_thread_env
from medsam.batch.jobs import Job
from medsam.batch.runner import JobResult, PredictorPool, WorkerSettings, run_job_in_memory, worker_label
from medsam.errors import BackendUnavailableError

ACTOR_START_TIMEOUT_S = 600.0  # model load included; a cluster without room for the actors fails after this


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            "--executor ray needs Ray: pip install 'medsam-toolkit[ray]' (or use --executor local)"
        ) from exc
    return ray


def init_local_ray(num_cpus: int, **kwargs: Any) -> None:
    """Start a local Ray instance for the batch: ``num_cpus`` CPUs, no dashboard, workers at normal priority.

    Ray starts its workers at nice 15 by default (so its own daemons stay responsive); the batch's actors are the
    work itself, and on a machine shared with other work a niced actor gets a fraction of the CPU it is given
    (measured here: Ray 2-5x slower than the local executor at nice 15, on par at 0)."""
    import logging

    ray = import_ray()
    os.environ.setdefault("RAY_worker_niceness", "0")
    options: dict[str, Any] = {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.WARNING}
    options.update(kwargs)
    ray.init(**options)


class RayWorker:
    """The actor: one model for its lifetime (loaded at its first job), jobs in, output bytes out."""

    def __init__(self, settings: WorkerSettings, index: int) -> None:
        set_thread_env(settings.threads)
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        self.pool = PredictorPool(settings, device_index=0)  # Ray hands each actor its own GPU
        self.label = worker_label("ray", index)

    def info(self) -> tuple[str, int]:
        return self.label, os.getpid()

    def run(self, job: Job) -> JobResult:
        return run_job_in_memory(job, self.pool, worker=self.label)


class RayExecutor:
    """``workers`` Ray actors with ``settings.threads`` CPUs each; started locally, or joined to ``address``."""

    name = "ray"

    def __init__(self, settings: WorkerSettings, workers: int = 1, *, address: str | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.settings = settings
        self.workers = workers
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self.out_dir: Path | None = None
        self.actors: list[Any] = []
        self.labels: list[tuple[str, int]] = []
        self.busy: list[str | None] = []
        self.in_flight: dict[Any, int] = {}
        self.spawned = 0
        self._ray: Any = None
        self._owns_ray = False
        self._actor_class: Any = None

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "local Ray"
        return f"ray ({where}), {self.workers} actor(s) x {self.settings.threads or 'default'} CPU(s)"

    def start(self, out_dir: Path) -> None:
        ray = self._ray = import_ray()
        self.out_dir = Path(out_dir)
        if not ray.is_initialized():
            if self.address:
                import logging

                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, **self.init_kwargs)
            else:
                init_local_ray(self.workers * int(self.settings.threads or 1), **self.init_kwargs)
            self._owns_ray = True
        options: dict[str, Any] = {"num_cpus": int(self.settings.threads or 1), "max_restarts": 0,
                                   "max_task_retries": 0}
        if str(self.settings.device or "").startswith("cuda"):
            options["num_gpus"] = 1
        if self.settings.max_memory_mb:
            options["memory"] = int(self.settings.max_memory_mb) * 2**20
        self._actor_class = ray.remote(RayWorker).options(**options)
        self.actors = [self._new_actor(i) for i in range(self.workers)]
        self.labels = self._ready(range(self.workers))
        self.busy = [None] * self.workers

    def _new_actor(self, index: int) -> Any:
        self.spawned += 1
        return self._actor_class.remote(self.settings, index)

    def _ready(self, indices: Any) -> list[tuple[str, int]]:
        ray = self._ray
        indices = list(indices)
        try:
            return list(ray.get([self.actors[i].info.remote() for i in indices], timeout=ACTOR_START_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError:
            raise WorkerStartError(
                f"Ray could not start {len(indices)} actor(s) with {self.settings.threads or 1} CPU(s) each within "
                f"{ACTOR_START_TIMEOUT_S:.0f} s; the cluster has {ray.cluster_resources()}: give fewer --workers or "
                "--threads"
            ) from None
        except ray.exceptions.RayError as exc:
            raise WorkerStartError(f"Ray actors could not start: {_first_line(exc)}") from exc

    def idle(self) -> int:
        return sum(1 for b in self.busy if b is None)

    def submit(self, job: Job) -> Started:
        index = self.busy.index(None)
        ref = self.actors[index].run.remote(job)
        self.in_flight[ref] = index
        self.busy[index] = job.id
        label, pid = self.labels[index]
        return Started(label, pid)

    def _replace(self, index: int) -> None:
        ray = self._ray
        try:
            ray.kill(self.actors[index])
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        self.actors[index] = self._new_actor(index)
        self.labels[index] = self._ready([index])[0]

    def wait(self, timeout: float | None = None) -> list[JobResult | Lost]:
        ray = self._ray
        if not self.in_flight:
            return []
        refs = list(self.in_flight)
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if done:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        events: list[JobResult | Lost] = []
        for ref in done:
            index = self.in_flight.pop(ref)
            job_id = self.busy[index]
            self.busy[index] = None
            label = self.labels[index][0]
            try:
                result: JobResult = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the job's code raised past run_job: report, go on
                events.append(JobResult(job_id, False, 0.0, error=f"Ray task failed: {_first_line(exc)}",  # type: ignore[arg-type]
                                        error_type=type(exc).__name__, worker=label))
                continue
            except ray.exceptions.RayError as exc:  # the actor (or its node) died
                events.append(Lost(job_id, label, f"the Ray actor died ({_first_line(exc)})"))  # type: ignore[arg-type]
                self._replace(index)
                continue
            events.append(self._commit(result))
            limit = self.settings.max_memory_mb
            if limit and result.rss_mb > limit:
                self._replace(index)
        return events

    def _commit(self, result: JobResult) -> JobResult:
        """Write a finished job's files into OUT_DIR/<id>/ (atomic) and drop the bytes."""
        if not result.ok or result.payload is None:
            return replace(result, payload=None)
        from medsam.io.atomic import atomic_dir

        try:
            with atomic_dir(self.out_dir / result.job_id, overwrite=True) as tmp:  # type: ignore[operator]
                for name, data in result.payload.items():
                    path = tmp / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
        except OSError as exc:
            return replace(result, ok=False, payload=None, error=f"outputs of {result.job_id} could not be written: {exc}",
                           error_type=type(exc).__name__)
        return replace(result, payload=None)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        self.actors, self.in_flight = [], {}
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
