"""`medsam batch` end to end with the tiny model: a mixed cohort with bad jobs, then a run killed mid-way."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


from medsam.cli import main

from _data import BAD_IDS, GOOD_IDS, ball_volume, disc_image, mixed_studies, tree, write_nifti, write_png


def summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as fh:
        return {row["job"]: row for row in csv.DictReader(fh)}


def test_mixed_batch_writes_the_good_reports_the_bad_and_leaves_nothing_half_written(tmp_path, capsys):
    jobs = mixed_studies(tmp_path / "studies")
    out = tmp_path / "out"
    argv = ["batch", "--jobs", str(jobs), "-o", str(out), "--model", "tiny_lite", "--workers", "2", "--no-progress"]
    assert main(argv) == 1  # some jobs failed
    err = capsys.readouterr().err
    for job_id in BAD_IDS:
        assert f"failed {job_id}:" in err
    rows = summary(out)
    assert [rows[j]["state"] for j in GOOD_IDS] == ["done"] * len(GOOD_IDS)
    assert [rows[j]["state"] for j in BAD_IDS] == ["failed"] * len(BAD_IDS)
    assert "missing.nii.gz does not exist" in rows["missing"]["error"]
    assert "corrupt.png" in rows["corrupt"]["error"] and "exactly 4" in rows["badbox"]["error"]
    entries = sorted(p.name for p in out.iterdir())
    assert entries == sorted([*GOOD_IDS, ".batch.lock", "failures.txt", "journal.jsonl", "summary.csv"])
    for job_id in GOOD_IDS:  # each good job's folder holds exactly what the summary lists
        listed = sorted(rows[job_id]["outputs"].split(";"))
        assert listed == sorted(str(p.relative_to(out)) for p in (out / job_id).rglob("*") if p.is_file())
    failures = (out / "failures.txt").read_text()
    assert failures.startswith(f"{len(BAD_IDS)} of {len(GOOD_IDS) + len(BAD_IDS)} job(s) failed")

    before = tree(out)
    assert main(argv) == 1  # the same command again: only the failed jobs run, and fail again
    again = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    second_run = again[max(i for i, e in enumerate(again) if e["event"] == "run"):]
    assert sorted(e["job"] for e in second_run if e["event"] == "running") == sorted(set(BAD_IDS) - {"badbox"})
    assert tree(out) == before
    assert f"{len(GOOD_IDS)} of {len(GOOD_IDS) + len(BAD_IDS)} job(s) done ({len(GOOD_IDS)} before this run" in capsys.readouterr().out


def test_bad_command_lines_fail_before_any_work(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"input": "a.png", "boxes": [[1, 1, 5, 5]]}) + "\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("")
    assert main(["batch", "--jobs", str(jobs), "-o", str(tmp_path / "full")]) == 2
    assert "holds files but no batch journal" in capsys.readouterr().err
    assert main(["batch", "--jobs", str(tmp_path / "none.csv"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["batch", "--jobs", str(jobs), "-o", str(tmp_path / "o"), "--ray-address", "auto"]) == 2
    assert "add --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- kill and resume

def _cohort(root: Path, n_images: int = 28) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i in range(n_images):
        write_png(root / f"case{i:03d}.png", disc_image(size=(320, 384), centre=(150 + i, 140), radius=50, seed=i))
        rows.append({"input": f"case{i:03d}.png", "boxes": [[100 + i, 90, 200 + i, 190]],
                     "outputs": ["mask", "overlay"] if i % 2 else ["mask"]})
    for i in range(2):
        write_nifti(root / f"vol{i}.nii.gz", ball_volume(shape=(16, 48, 48), centre=(8, 24, 24), radius=7))
        rows.append({"input": f"vol{i}.nii.gz", "boxes3d": [[16, 16, 2, 32, 32, 14]], "window": "soft_tissue"})
    path = root / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _command(jobs: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "medsam.cli", "batch", "--jobs", str(jobs), "-o", str(out), "--model", "tiny_lite",
            "--workers", str(workers), "--threads", "1", "--precision", "fp32", "--backend", "torch", "--no-progress"]


def _events(out: Path) -> list[dict]:
    path = out / "journal.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return events


def _wait_for(out: Path, done: int, proc: subprocess.Popen, timeout: float = 180.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(out)
        if sum(e["event"] == "done" for e in events) >= done:
            return events
        assert proc.poll() is None, f"the batch ended early ({proc.returncode})"
        time.sleep(0.01)
    raise AssertionError(f"fewer than {done} jobs done after {timeout} s")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_a_worker_and_the_driver_then_rerunning_does_every_job_once_with_identical_outputs(tmp_path):
    jobs = _cohort(tmp_path / "cohort")
    total = 30
    clean = tmp_path / "clean"
    subprocess.run(_command(jobs, clean, 1), check=True, capture_output=True, timeout=600)

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_command(jobs, out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        events = _wait_for(out, 3, proc)
        finished = {e["job"] for e in events if e["event"] in ("done", "failed")}
        running = [e for e in events if e["event"] == "running" and e["job"] not in finished]
        victim = running[-1]["pid"]
        os.kill(victim, signal.SIGKILL)  # a worker dies mid-job
        events = _wait_for(out, 10, proc)
        os.kill(proc.pid, signal.SIGKILL)  # then the driver, at once
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    events = _events(out)
    workers = {e["pid"] for e in events if e["event"] == "running"}
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "workers outlived their driver"
    done_first = {e["job"] for e in events if e["event"] == "done"}
    assert 10 <= len(done_first) < total, "the driver was to be killed mid-way"
    assert any(e["event"] == "lost" for e in events), "the killed worker's job was not reported lost"
    expected = {j: sorted(f for f in tree(clean) if f.startswith(j + "/")) for j in {f.split("/")[0] for f in tree(clean)}}
    for folder in out.iterdir():  # whatever the kill left: job folders are whole, or hidden and temporary
        if folder.is_dir() and not folder.name.startswith("."):
            assert sorted(str(p.relative_to(out)) for p in folder.rglob("*") if p.is_file()) == expected[folder.name]

    rerun = subprocess.run(_command(jobs, out, 2), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    events = _events(out)
    done = Counter(e["job"] for e in events if e["event"] == "done")
    assert len(done) == total and set(done.values()) == {1}  # every job done exactly once over both runs
    assert sum(e["event"] == "run" for e in events) == 2
    assert not list(out.glob(".*.part"))
    assert tree(out) == tree(clean)  # byte for byte the outputs of an uninterrupted run
