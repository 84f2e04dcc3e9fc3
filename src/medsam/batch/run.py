"""The batch driver: skip what is done, hand the rest to an executor, journal every step, report at the end.

    jobs = load_jobs("jobs.csv", JobDefaults(model=ModelRef("lite_medsam")))
    report = run_batch(jobs, "out/", LocalExecutor(WorkerSettings(threads=1), workers=2))
    report.done, report.failed, report.summary_csv, report.failures_path

Resuming: a job whose last journal event is ``done`` with the same fingerprint (the same input, prompts, model
and outputs) and whose folder ``OUT_DIR/<id>/`` exists is skipped; every other job runs (failed ones, ones a
killed run left ``running``, new or changed ones). A job whose worker dies is retried in the same run up to
``retries`` more times, then reported failed. The driver alone writes the journal, ``summary.csv`` and
``failures.txt``; outputs are renamed into place by the worker (local) or the driver (Ray), whole or not at all.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medsam.batch.executors import Executor, Lost
from medsam.batch.jobs import Job, JobList
from medsam.batch.journal import JOURNAL_NAME, BatchLock, Journal, JobState
from medsam.batch.runner import JobResult
from medsam.errors import OutputError
from medsam.io.atomic import atomic_path

SUMMARY_NAME = "summary.csv"
FAILURES_NAME = "failures.txt"
SUMMARY_COLUMNS = ("job", "kind", "input", "state", "attempts", "seconds", "outputs", "summary", "error")


@dataclass(frozen=True)
class BatchReport:
    """How a run went. done/failed count every job of the list (earlier runs included); ran: jobs this run
    finished; skipped: jobs already done before it."""

    out_dir: Path
    total: int
    done: int
    failed: int
    skipped: int
    ran: int
    lost: int
    seconds: float
    summary_csv: Path
    failures_path: Path | None
    failures: tuple[JobState, ...]

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.done == self.total


def prepare_out_dir(out_dir: str | Path) -> Path:
    """OUT_DIR must be new, empty, or an earlier batch's folder (it has a journal)."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output {out_dir} is a file; give a folder for the batch outputs")
    if out_dir.is_dir() and not (out_dir / JOURNAL_NAME).is_file() and any(out_dir.iterdir()):
        raise OutputError(
            f"output folder {out_dir} holds files but no batch journal ({JOURNAL_NAME}); give a new or empty folder, "
            "or the folder of an earlier `medsam batch` run to resume it"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output folder {out_dir} cannot be created: {exc}") from exc
    return out_dir


def _clean_partials(out_dir: Path, job_id: str | None = None) -> None:
    """Remove the hidden ``.<id>.*.part`` folders that killed jobs left (we hold the lock: none is live)."""
    pattern = f".{job_id}.*.part" if job_id else ".*.part"
    for path in out_dir.glob(pattern):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def is_done(state: JobState | None, job: Job, out_dir: Path) -> bool:
    return (state is not None and state.state == "done" and state.fingerprint == job.fingerprint
            and (out_dir / job.id).is_dir())


def run_batch(
    jobs: JobList,
    out_dir: str | Path,
    executor: Executor,
    *,
    retries: int = 2,
    progress: bool = True,
    on_event: Callable[[str, str], None] | None = None,
) -> BatchReport:
    """Run every job of ``jobs`` not already done into ``out_dir`` on ``executor`` (see the module doc)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_dir = prepare_out_dir(out_dir)
    lock = BatchLock(out_dir).acquire()
    journal = Journal(out_dir).open()
    run_id = uuid.uuid4().hex[:12]
    by_id = {j.id: j for j in jobs.jobs}
    ran = lost_count = 0
    try:
        _clean_partials(out_dir)
        states = journal.states()
        todo = [j for j in jobs.jobs if not is_done(states.get(j.id), j, out_dir)]
        skipped = len(jobs.jobs) - len(todo)
        todo.sort(key=lambda j: j.model.key)  # stable: file order within a model; one model load per worker
        journal.append("run", run=run_id, source=str(jobs.source), jobs=len(jobs), todo=len(todo),
                       skipped=skipped, executor=executor.describe())
        for p in jobs.problems:
            journal.append("failed", run=run_id, job=p.id, fingerprint=p.fingerprint, error=f"{p.source}: {p.message}",
                           input=p.input)
        pending = deque(todo)
        lost_in_run: dict[str, int] = {}
        if todo:
            executor.start(out_dir)
        done_now = failed_now = 0
        with tqdm(total=len(todo), desc="batch", unit="job", disable=not progress, dynamic_ncols=True,
                  smoothing=0.05) as bar:
            in_flight: set[str] = set()
            while pending or in_flight:
                while pending and executor.idle() > 0:
                    job = pending.popleft()
                    started = executor.submit(job)
                    in_flight.add(job.id)
                    journal.append("running", run=run_id, job=job.id, fingerprint=job.fingerprint,
                                   worker=started.worker, pid=started.pid)
                    if on_event:
                        on_event("running", job.id)
                for event in executor.wait(timeout=1.0):
                    job = by_id[event.job_id]
                    in_flight.discard(job.id)
                    if isinstance(event, Lost):
                        _clean_partials(out_dir, job.id)
                    if isinstance(event, Lost) and event.startup:
                        pending.appendleft(job)  # the worker never started: not the job's fault
                        continue
                    if isinstance(event, Lost):
                        lost_count += 1
                        lost_in_run[job.id] = lost_in_run.get(job.id, 0) + 1
                        if lost_in_run[job.id] <= retries:
                            journal.append("lost", run=run_id, job=job.id, fingerprint=job.fingerprint,
                                           worker=event.worker, error=event.reason)
                            pending.append(job)
                            continue
                        message = (f"{job.input}: {event.reason} while running this job, {lost_in_run[job.id]} times; "
                                   "it may need more memory than a worker has (try fewer workers)")
                        journal.append("failed", run=run_id, job=job.id, fingerprint=job.fingerprint,
                                       worker=event.worker, error=message)
                        failed_now += 1
                    else:
                        _record(journal, run_id, job, event)
                        if event.ok:
                            done_now += 1
                        else:
                            failed_now += 1
                    ran += 1
                    bar.update(1)
                    bar.set_postfix(done=done_now, failed=failed_now, refresh=False)
                    if on_event:
                        on_event("finished", job.id)
    finally:
        try:
            executor.close()
        finally:
            states = journal.states()
            journal.close()
            summary_csv, failures_path, failures = write_reports(out_dir, jobs, states)
            lock.release()
    done = sum(1 for j in jobs.jobs if is_done(states.get(j.id), j, out_dir))
    return BatchReport(out_dir, len(jobs), done, len(failures), skipped, ran, lost_count,
                       time.perf_counter() - start, summary_csv, failures_path, failures)


def _record(journal: Journal, run_id: str, job: Job, result: JobResult) -> None:
    if result.ok:
        journal.append("done", run=run_id, job=job.id, fingerprint=job.fingerprint, worker=result.worker,
                       seconds=round(result.seconds, 3), files=list(result.files), summary=result.summary)
    else:
        journal.append("failed", run=run_id, job=job.id, fingerprint=job.fingerprint, worker=result.worker,
                       seconds=round(result.seconds, 3), error=result.error, detail=result.detail)


def write_reports(out_dir: Path, jobs: JobList, states: dict[str, JobState]) -> tuple[Path, Path | None, tuple[JobState, ...]]:
    """``summary.csv`` (one row per job of the list) and ``failures.txt`` (only when something failed)."""
    rows = []
    failures: list[JobState] = []
    kinds = {j.id: (j.kind, str(j.input)) for j in jobs.jobs}
    kinds.update({p.id: ("", p.input) for p in jobs.problems})
    for job_id in jobs.ids:
        kind, source = kinds[job_id]
        state = states.get(job_id)
        name = state.state if state else "pending"
        if name == "running":
            name = "interrupted"
        if state is not None and state.state == "failed":
            failures.append(state)
        rows.append({
            "job": job_id, "kind": kind, "input": source, "state": name,
            "attempts": state.attempts if state else 0, "seconds": f"{state.seconds:.3f}" if state else "",
            "outputs": ";".join(f"{job_id}/{f}" for f in state.files) if state and state.state == "done" else "",
            "summary": state.summary if state else "", "error": state.error if state and state.state != "done" else "",
        })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    summary = out_dir / SUMMARY_NAME
    with atomic_path(summary, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    failures_path = out_dir / FAILURES_NAME
    if not failures:
        failures_path.unlink(missing_ok=True)
        return summary, None, ()
    lines = [f"{len(failures)} of {len(jobs)} job(s) failed; fix them and run the same command again: "
             "only these (and unfinished ones) run.", ""]
    for s in failures:
        lines.append(f"== {s.job_id} ({kinds[s.job_id][1]}), attempt(s) {s.attempts}" + (f", {s.worker}" if s.worker else ""))
        lines.append(s.error)
        if s.detail:
            lines.extend(["", s.detail.rstrip()])
        lines.append("")
    with atomic_path(failures_path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return summary, failures_path, tuple(failures)
