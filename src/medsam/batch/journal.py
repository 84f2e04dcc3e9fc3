"""The batch journal: an append-only JSONL file in OUT_DIR recording each job's state, safe against SIGKILL.

Each line is one event, written with a single ``write`` on an ``O_APPEND`` descriptor and ``fsync``-ed before
the driver goes on, so after a kill at any instant the file holds every event up to the last one, plus at most
one torn last line, which reading skips. Only the driver writes it; an exclusive lock on ``OUT_DIR/.batch.lock``
(released by the kernel when the driver dies) keeps a second driver out.

Events (``event`` key): ``run`` (a driver started: executor, workers), ``running`` (a job was handed to a
worker), ``done`` (its outputs are in place: files, seconds), ``failed`` (message; the job is retried by the
next run), ``lost`` (its worker died while running it: retried in this run up to the retry limit). A job's state
is its last event; a job still ``running`` in a journal whose driver is gone is retried by the next run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from medsam.errors import OutputError

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = ".batch.lock"


@dataclass(frozen=True)
class JobState:
    """A job as the journal last saw it. attempts: times it was handed to a worker, over all runs."""

    job_id: str
    state: str  # running | done | failed | lost
    fingerprint: str = ""
    attempts: int = 0
    seconds: float = 0.0
    files: tuple[str, ...] = ()
    summary: str = ""
    error: str = ""
    detail: str = ""
    worker: str = ""
    run: str = ""


class Journal:
    """Append events to ``OUT_DIR/journal.jsonl`` (durable on return) and read the job states back."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME
        self._fd: int | None = None

    def open(self) -> "Journal":
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as fh:  # a line torn by a kill: start the next event on its own line
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    os.write(self._fd, b"\n")
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Journal":
        return self.open() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def append(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            self.open()
        record = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        os.write(self._fd, line.encode())  # type: ignore[arg-type]
        os.fsync(self._fd)  # type: ignore[arg-type]

    def events(self) -> Iterator[dict[str, Any]]:
        return read_events(self.path)

    def states(self) -> dict[str, JobState]:
        return job_states(self.events())


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """The journal's events in order; torn or foreign lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "event" in record:
                yield record


def job_states(events: Iterator[dict[str, Any]]) -> dict[str, JobState]:
    """Each job's last state, with its attempts counted over every run."""
    states: dict[str, JobState] = {}
    for e in events:
        job = e.get("job")
        if not isinstance(job, str):
            continue
        before = states.get(job)
        attempts = before.attempts if before else 0
        if e["event"] == "running":
            attempts += 1
        states[job] = JobState(
            job_id=job, state=str(e["event"]), fingerprint=str(e.get("fingerprint", before.fingerprint if before else "")),
            attempts=attempts, seconds=float(e.get("seconds", 0.0) or 0.0), files=tuple(e.get("files", ()) or ()),
            summary=str(e.get("summary", "") or ""), error=str(e.get("error", "") or ""),
            detail=str(e.get("detail", "") or ""), worker=str(e.get("worker", "") or ""), run=str(e.get("run", "")),
        )
    return states


class BatchLock:
    """An exclusive lock on OUT_DIR held by one driver; the kernel drops it when the driver dies."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fh: Any = None

    def acquire(self) -> "BatchLock":
        import fcntl

        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise OutputError(
                f"{self.path.parent} is in use by another `medsam batch` ({owner}); wait for it to finish or "
                "give another output folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "BatchLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
