"""`--executor ray` on a local Ray instance: the same journal and byte-identical outputs as the local executor."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'medsam-toolkit[ray]')")

from medsam.batch.jobs import JobDefaults, ModelRef, load_jobs  # noqa: E402
from medsam.batch.ray_executor import RayExecutor  # noqa: E402
from medsam.batch.runner import WorkerSettings  # noqa: E402
from medsam.cli import main  # noqa: E402

from _data import BAD_IDS, GOOD_IDS, mixed_studies, tree  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One small Ray instance for the module (the executors join it and leave it running)."""
    from medsam.batch.ray_executor import init_local_ray

    init_local_ray(2)
    yield
    ray.shutdown()


def states(out: Path) -> dict[str, tuple[str, str]]:
    with (out / "summary.csv").open() as fh:
        return {r["job"]: (r["state"], r["error"]) for r in csv.DictReader(fh)}


def again_pid(executor) -> int:
    return executor.labels[0][1]


def dicom_seg_content(path: Path):
    """What must agree between two DICOM-SEG files written at different times: pixels and geometry (their
    UIDs and dates differ by design)."""
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = [tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient) for f in frames]
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = tuple(float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    spacing = tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    return ds.pixel_array.copy(), positions, orientation, spacing, ds.Rows, ds.Columns


def test_ray_and_local_executors_give_the_same_journal_states_and_outputs(tmp_path, local_ray, capsys):
    jobs = mixed_studies(tmp_path / "studies", with_dicom=True)
    common = ["batch", "--jobs", str(jobs), "--model", "tiny_lite", "--workers", "2", "--no-progress"]
    assert main(common + ["-o", str(tmp_path / "local")]) == 1
    assert main(common + ["-o", str(tmp_path / "ray"), "--executor", "ray"]) == 1
    assert "on ray (local Ray), 2 actor(s) x 1 CPU(s)" in capsys.readouterr().err
    assert ray.is_initialized()  # joined, not shut down: the instance was not the executor's own

    local, remote = states(tmp_path / "local"), states(tmp_path / "ray")
    assert local == remote
    assert {j for j, (s, _) in local.items() if s == "done"} == set(GOOD_IDS) | {"dicom"}
    assert {j for j, (s, _) in local.items() if s == "failed"} == set(BAD_IDS)

    a, b = tree(tmp_path / "local"), tree(tmp_path / "ray")
    assert sorted(a) == sorted(b)
    dicom = [name for name in a if name.endswith(".dcm")]
    assert dicom == ["dicom/dicom_ct_seg.dcm"]
    for name in a:
        if name not in dicom:
            assert a[name] == b[name], f"{name} differs between the executors"
    pa, pos_a, ori_a, sp_a, *size_a = dicom_seg_content(tmp_path / "local" / dicom[0])
    pb, pos_b, ori_b, sp_b, *size_b = dicom_seg_content(tmp_path / "ray" / dicom[0])
    assert np.array_equal(pa, pb) and pa.any()
    assert (pos_a, ori_a, sp_a, size_a) == (pos_b, ori_b, sp_b, size_b)


def test_a_dead_actor_loses_its_job_and_a_fresh_one_takes_over(tmp_path, local_ray):
    jobs = load_jobs(mixed_studies(tmp_path / "studies", with_bad=False), JobDefaults(ModelRef("tiny_lite")))
    job = next(j for j in jobs.jobs if j.id == "ct")
    executor = RayExecutor(WorkerSettings(threads=1, precision="fp32", backend="torch"), workers=1)
    out = tmp_path / "out"
    out.mkdir()
    executor.start(out)
    try:
        started = executor.submit(job)
        os.kill(started.pid, signal.SIGKILL)
        events = []
        while not events:
            events = executor.wait(timeout=30)
        (lost,) = events
        assert type(lost).__name__ == "Lost" and lost.job_id == "ct" and "actor died" in lost.reason
        assert executor.spawned == 2 and executor.idle() == 1
        with open(f"/proc/{again_pid(executor)}/stat") as fh:
            assert int(fh.read().rsplit(")", 1)[1].split()[16]) == 0  # nice: Ray's default 15 is lifted
        again = executor.submit(job)
        assert again.pid != started.pid
        events = []
        while not events:
            events = executor.wait(timeout=30)
        (result,) = events
        assert result.ok and result.payload is None  # committed by the driver side
        assert sorted(p.name for p in (out / "ct").iterdir()) == ["ct_montage.png", "ct_seg.nii.gz"]
    finally:
        executor.close()
