"""Executors: where the jobs run. The driver (:func:`medsam.batch.run.run_batch`) hands jobs to an executor's
workers and collects what comes back; the executor never touches the journal.

- :class:`LocalExecutor`: N worker processes on this machine (``spawn``, so CUDA works and no lock of the
  driver is inherited), each holding its model for the whole run, T threads each. A worker that dies (killed,
  out of memory, a crash in native code) is noticed at once through its process sentinel: the job it held is
  reported lost and a fresh worker takes its place. Workers die with the driver (``PR_SET_PDEATHSIG``), so a
  killed driver leaves no worker writing into OUT_DIR behind it.
- :class:`medsam.batch.ray_executor.RayExecutor`: the same over Ray actors (``--executor ray``).

Threads: ``plan_threads(workers)`` gives each worker ``cores // workers`` threads (at least one), so workers x
threads fit the cores this process may use.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medsam.batch.jobs import Job
from medsam.batch.runner import JobResult, PredictorPool, WorkerSettings, run_job, worker_label
from medsam.errors import MedsamError

READY = "ready"
MAX_STARTUP_FAILURES = 3


@dataclass(frozen=True)
class Lost:
    """A job whose worker died while running it. ``startup``: the worker died before it was ready (the job
    is not to blame and is handed out again without counting)."""

    job_id: str
    worker: str
    reason: str
    startup: bool = False


@dataclass(frozen=True)
class Started:
    """Where a job went: the worker's name and process id (the journal records both)."""

    worker: str
    pid: int | None = None


class WorkerStartError(MedsamError):
    """Workers die before they are ready: the batch cannot run here."""


class Executor(Protocol):
    name: str

    def start(self, out_dir: Path) -> None: ...

    def idle(self) -> int: ...

    def submit(self, job: Job) -> Started: ...

    def wait(self, timeout: float | None = None) -> list[JobResult | Lost]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def available_cores() -> int:
    from medsam.inference.engines.options import default_threads

    return default_threads()


def plan_threads(workers: int, threads: int | None = None, cores: int | None = None) -> int:
    """Threads per worker: the given number, else the cores shared out (at least 1)."""
    if threads is not None:
        return threads
    return max(1, (cores or available_cores()) // max(1, workers))


def set_thread_env(threads: int | None) -> None:
    """Limit the native thread pools of a fresh worker before torch/OpenVINO start theirs."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this worker when the driver dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _local_worker(index: int, conn: Any, settings: WorkerSettings, out_dir: str, parent_pid: int) -> None:
    """A local worker: one model, jobs in, results out, until the driver says stop or goes away."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    set_thread_env(settings.threads)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    pool = PredictorPool(settings, device_index=index)
    label = worker_label("local", index)
    conn.send(READY)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        result = run_job(job, Path(out_dir), pool, worker=label)
        try:
            conn.send(result)
        except OSError:
            return


@dataclass
class _Slot:
    index: int
    process: Any
    conn: Any
    job: str | None = None
    ready: bool = False

    @property
    def label(self) -> str:
        return f"local-{self.index} pid {self.process.pid}"


class LocalExecutor:
    """``workers`` processes on this machine with ``settings.threads`` threads each."""

    name = "local"

    def __init__(self, settings: WorkerSettings, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.settings = settings
        self.workers = workers
        self.out_dir: Path | None = None
        self.slots: list[_Slot] = []
        self.spawned = 0
        self.startup_failures = 0  # in a row
        self._ctx: Any = None

    def describe(self) -> str:
        return f"local, {self.workers} worker(s) x {self.settings.threads or 'default'} thread(s)"

    def start(self, out_dir: Path) -> None:
        import multiprocessing

        self.out_dir = Path(out_dir)
        self._ctx = multiprocessing.get_context("spawn")
        self.slots = [self._spawn(i) for i in range(self.workers)]

    def _spawn(self, index: int) -> _Slot:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_local_worker, args=(index, child, self.settings, str(self.out_dir), os.getpid()),
            name=f"medsam-batch-{index}", daemon=True,
        )
        process.start()
        child.close()
        self.spawned += 1
        return _Slot(index, process, parent)

    def idle(self) -> int:
        return sum(1 for s in self.slots if s.job is None)

    def submit(self, job: Job) -> Started:
        slot = next(s for s in self.slots if s.job is None)
        if not slot.process.is_alive():  # died between jobs (e.g. memory recycle): replace it first
            slot = self._replace(slot)
        try:
            slot.conn.send(job)
        except OSError:  # it died just now
            slot = self._replace(slot)
            slot.conn.send(job)
        slot.job = job.id
        return Started(slot.label, slot.process.pid)

    def _replace(self, slot: _Slot) -> _Slot:
        slot.process.join(timeout=5)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=5)
        slot.conn.close()
        fresh = self._spawn(slot.index)
        self.slots[self.slots.index(slot)] = fresh
        return fresh

    def _receive(self, slot: _Slot) -> JobResult | None:
        """The slot's result if one has arrived (a READY note on the way is taken in passing)."""
        try:
            while slot.conn.poll():
                message = slot.conn.recv()
                if message == READY:
                    slot.ready = True
                    self.startup_failures = 0
                else:
                    return message
        except (EOFError, OSError):
            pass
        return None

    def wait(self, timeout: float | None = None) -> list[JobResult | Lost]:
        from multiprocessing.connection import wait

        busy = [s for s in self.slots if s.job is not None]
        if not busy:
            return []
        handles = [s.conn for s in busy] + [s.process.sentinel for s in busy]
        ready = set(wait(handles, timeout))
        events: list[JobResult | Lost] = []
        for slot in busy:
            if slot.conn not in ready and slot.process.sentinel not in ready:
                continue
            result = self._receive(slot)
            if result is not None:
                events.append(result)
                slot.job = None
                limit = self.settings.max_memory_mb
                if limit and result.rss_mb > limit:  # recycle: a fresh process gives the memory back
                    slot.conn.send(None)
                    self._replace(slot)
            elif slot.process.sentinel in ready:
                slot.process.join(timeout=5)
                reason = _exit_reason(slot.process.exitcode)
                if not slot.ready:
                    self.startup_failures += 1
                    if self.startup_failures >= MAX_STARTUP_FAILURES:
                        raise WorkerStartError(
                            f"batch workers die before they are ready ({reason}, {self.startup_failures} times in a "
                            "row); see the messages above. From a Python script, call run_batch under "
                            "`if __name__ == \"__main__\":` (workers are started with multiprocessing's spawn)"
                        )
                events.append(Lost(slot.job, slot.label, reason, startup=not slot.ready))  # type: ignore[arg-type]
                self._replace(slot)
        return events

    def close(self) -> None:
        for slot in self.slots:
            try:
                if slot.job is None:
                    slot.conn.send(None)
            except OSError:
                pass
        for slot in self.slots:
            slot.process.join(timeout=5 if slot.job is None else 0)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            slot.conn.close()
        self.slots = []


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the worker stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: often the system running out of memory)" if -code == signal.SIGKILL else ""
        return f"the worker died from {name}{hint}"
    return f"the worker exited with status {code}"
