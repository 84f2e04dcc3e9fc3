"""The driver's rules, with a scripted executor: skip what is done, retry the lost, report the failed."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from medsam.batch.executors import Lost, Started
from medsam.batch.jobs import build_job, JobList, JobProblem
from medsam.batch.journal import Journal
from medsam.batch.run import run_batch
from medsam.batch.runner import JobResult
from medsam.errors import OutputError


class Scripted:
    """Runs nothing: each job's next scripted outcome ("ok", "fail", "lost", "startup") comes back."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]], slots: int = 2) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.slots = slots
        self.queue: list[str] = []
        self.submitted: dict[str, int] = defaultdict(int)
        self.started = self.closed = 0
        self.out_dir: Path | None = None

    def describe(self) -> str:
        return "scripted"

    def start(self, out_dir: Path) -> None:
        self.started += 1
        self.out_dir = out_dir

    def idle(self) -> int:
        return self.slots - len(self.queue)

    def submit(self, job) -> Started:
        self.queue.append(job.id)
        self.submitted[job.id] += 1
        return Started("scripted-0", 4242)

    def wait(self, timeout=None):
        events = []
        for job_id in self.queue:
            outcome = self.script.get(job_id, ["ok"]).pop(0) if self.script.get(job_id) else "ok"
            if outcome == "ok":
                folder = self.out_dir / job_id
                folder.mkdir(exist_ok=True)
                (folder / "mask.png").write_bytes(b"x")
                events.append(JobResult(job_id, True, 0.5, ("mask.png",), "1 object(s)", worker="scripted-0"))
            elif outcome == "fail":
                events.append(JobResult(job_id, False, 0.1, error=f"{job_id}: cannot be read", worker="scripted-0"))
            else:
                (self.out_dir / f".{job_id}.abc.part").mkdir()  # what a killed worker leaves
                events.append(Lost(job_id, "scripted-0", "the worker died from SIGKILL", startup=outcome == "startup"))
        self.queue = []
        return events

    def close(self) -> None:
        self.closed += 1


def jobs(tmp_path: Path, ids, problems=()) -> JobList:
    made = tuple(build_job({"id": i, "input": f"{i}.png", "boxes": [[1, 1, 5, 5]]}, base=tmp_path) for i in ids)
    return JobList(tmp_path / "jobs.jsonl", made, tuple(problems))


def test_lost_jobs_are_retried_then_failed_and_the_rest_done(tmp_path):
    out = tmp_path / "out"
    executor = Scripted({"a": ["lost", "ok"], "b": ["lost", "lost", "lost"], "c": ["fail"], "d": ["startup", "ok"]})
    problem = JobProblem("e", "e.png", "box 1 has 3 values", "jobs.jsonl line 5")
    report = run_batch(jobs(tmp_path, "abcd", [problem]), out, executor, retries=2, progress=False)
    assert (report.total, report.done, report.failed, report.ran, report.lost) == (5, 2, 3, 4, 4)
    assert executor.submitted == {"a": 2, "b": 3, "c": 1, "d": 2} and executor.closed == 1
    assert sorted(p.name for p in out.iterdir()) == [".batch.lock", "a", "d", "failures.txt", "journal.jsonl", "summary.csv"]
    rows = {r["job"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert [rows[k]["state"] for k in "abcde"] == ["done", "failed", "failed", "done", "failed"]
    assert rows["a"]["outputs"] == "a/mask.png" and rows["a"]["attempts"] == "2"
    assert "SIGKILL while running this job, 3 times" in rows["b"]["error"]
    assert rows["c"]["error"] == "c: cannot be read"
    assert rows["e"]["error"] == "jobs.jsonl line 5: box 1 has 3 values"
    failures = (out / "failures.txt").read_text()
    assert failures.startswith("3 of 5 job(s) failed") and "== b (" in failures and "== e (e.png)" in failures
    events = [e["event"] for e in Journal(out).events() if e.get("job") == "b"]
    assert events == ["running", "lost", "running", "lost", "running", "failed"]


def test_a_rerun_skips_what_is_done_and_redoes_the_rest(tmp_path):
    out = tmp_path / "out"
    run_batch(jobs(tmp_path, "abc"), out, Scripted({"b": ["fail"]}), progress=False)
    again = Scripted({})
    report = run_batch(jobs(tmp_path, "abc"), out, again, progress=False)
    assert dict(again.submitted) == {"b": 1}
    assert (report.done, report.failed, report.skipped, report.ran) == (3, 0, 2, 1)
    assert not (out / "failures.txt").exists()  # nothing failed any more

    # a job that changed (another box) runs again; one whose folder was deleted too
    changed = JobList(tmp_path / "jobs.jsonl", (
        build_job({"id": "a", "input": "a.png", "boxes": [[1, 1, 6, 6]]}, base=tmp_path),
        *jobs(tmp_path, "bc").jobs))
    import shutil

    shutil.rmtree(out / "c")
    third = Scripted({})
    run_batch(changed, out, third, progress=False)
    assert dict(third.submitted) == {"a": 1, "c": 1}

    nothing = Scripted({})
    report = run_batch(changed, out, nothing, progress=False)
    assert report.ran == 0 and nothing.started == 0 and report.ok  # all done: no worker is even started


def test_a_killed_run_leaves_running_jobs_that_the_next_run_retries(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with Journal(out) as journal:  # what a driver killed mid-run leaves
        journal.append("run", run="old")
        journal.append("running", run="old", job="a", fingerprint=jobs(tmp_path, "a").jobs[0].fingerprint)
    (out / ".a.xyz.part").mkdir()
    executor = Scripted({})
    report = run_batch(jobs(tmp_path, "a"), out, executor, progress=False)
    assert dict(executor.submitted) == {"a": 1} and report.done == 1
    assert not list(out.glob(".*.part"))
    assert Journal(out).states()["a"].attempts == 2


def test_the_output_folder_must_be_new_empty_or_a_batch(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.docx").write_text("precious")
    with pytest.raises(OutputError, match="holds files but no batch journal"):
        run_batch(jobs(tmp_path, "a"), tmp_path / "other", Scripted({}), progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        run_batch(jobs(tmp_path, "a"), tmp_path / "file", Scripted({}), progress=False)
    assert (tmp_path / "other" / "thesis.docx").read_text() == "precious"
