"""One job on a worker, in this process: every kind through the toolkit's entry points, failures whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsam.batch.jobs import JobDefaults, ModelRef, build_job, load_jobs
from medsam.batch.runner import PredictorPool, WorkerSettings, object_prompts, run_job, run_job_in_memory

from _data import BAD_IDS, GOOD_IDS, mixed_studies


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    return load_jobs(mixed_studies(root), JobDefaults(ModelRef("tiny_lite")))


@pytest.fixture(scope="module")
def pool():
    return PredictorPool(WorkerSettings(precision="fp32", backend="torch"))


EXPECTED = {
    "img0": ["img0_mask.png", "img0_overlay.png"],
    "img1": ["img1_mask.png"],
    "recist": ["img2_mask.png"],
    "everything": ["img2_labels.png", "img2_proposals.json"],
    "ct": ["ct_montage.png", "ct_seg.nii.gz"],
    "ct_slice": ["ct_seg.nrrd"],
    "npz3d": ["3DBox_CT_0001.npz"],
    "npz2d": ["2DBox_US_0001.npz"],
    "video": ["clip_segs.npz"],
}


def test_every_kind_writes_its_outputs(studies, pool, tmp_path):
    from PIL import Image

    by_id = {j.id: j for j in studies.jobs}
    for job_id in GOOD_IDS:
        result = run_job(by_id[job_id], tmp_path, pool)
        assert result.ok, (job_id, result.error, result.detail)
        assert list(result.files) == EXPECTED[job_id]
        assert sorted(p.name for p in (tmp_path / job_id).iterdir()) == EXPECTED[job_id]
    assert pool.loads == 1  # one model for every job
    two = np.asarray(Image.open(tmp_path / "img1" / "img1_mask.png"))
    assert two.shape == (96, 128) and set(np.unique(two)) <= {0, 1, 2}  # a label map for two objects
    with np.load(tmp_path / "npz3d" / "3DBox_CT_0001.npz") as segs:
        assert segs["segs"].shape == (12, 40, 48)
    with np.load(tmp_path / "video" / "clip_segs.npz") as segs:
        assert segs["segs"].shape == (6, 96, 128)
    document = json.loads((tmp_path / "everything" / "img2_proposals.json").read_text())
    assert "seconds" not in json.dumps(document["info"])  # no timings: the same job gives the same bytes
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


def test_bad_jobs_fail_with_their_reason_and_leave_nothing(studies, pool, tmp_path):
    by_id = {j.id: j for j in studies.jobs}
    corrupt = run_job(by_id["corrupt"], tmp_path, pool)
    assert not corrupt.ok and "corrupt.png cannot be decoded" in corrupt.error and "corrupt" in corrupt.error
    missing = run_job(by_id["missing"], tmp_path, pool)
    assert not missing.ok and "missing.nii.gz does not exist" in missing.error and "jobs.jsonl line" in missing.error
    half = run_job(by_id["half"], tmp_path, pool)
    assert not half.ok and "DICOM" in half.error, half.error
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the NIfTI written before the failure is gone too
    assert "badbox" in {p.id for p in studies.problems} and set(BAD_IDS) - {"badbox"} <= {j.id for j in studies.jobs}


def test_unexpected_errors_are_named_with_a_traceback(studies, pool, tmp_path, monkeypatch):
    import medsam.batch.runner as runner

    def boom(*args, **kwargs):
        raise RuntimeError("deep inside torch\nmore lines\nthe last line")

    monkeypatch.setattr(runner, "_image", boom)
    result = run_job(next(j for j in studies.jobs if j.id == "img1"), tmp_path, pool)
    assert not result.ok and "unexpected RuntimeError: the last line" in result.error
    assert "Traceback" in result.detail and "boom" in result.detail


def test_in_memory_results_carry_the_same_bytes(studies, pool, tmp_path):
    job = next(j for j in studies.jobs if j.id == "ct")
    on_disk = run_job(job, tmp_path, pool)
    in_memory = run_job_in_memory(job, pool)
    assert in_memory.files == on_disk.files
    assert all(in_memory.payload[f] == (tmp_path / "ct" / f).read_bytes() for f in on_disk.files)


def test_key_boxes_and_clicks_go_through_the_interactive_volume(studies, pool, tmp_path):
    import SimpleITK as sitk

    from _data import ball_volume, write_nifti

    ct = write_nifti(tmp_path / "small.nii.gz", ball_volume(shape=(5, 32, 32), centre=(2, 16, 16), radius=5))
    job = build_job({"id": "keyed", "input": str(ct), "window": "soft_tissue", "outputs": ["nifti", "montage"],
                     "key_boxes": "1:10,10,22,22;3:11,11,21,21", "clicks": [[2, 16, 16, 1]]}, base=tmp_path)
    result = run_job(job, tmp_path, pool)
    assert result.ok, (result.error, result.detail)
    assert result.files == ("small_montage.png", "small_seg.nii.gz")
    assert result.summary.endswith("2 key box(es), 1 click(s)")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "keyed" / "small_seg.nii.gz")))
    assert labels.shape == (5, 32, 32) and set(np.unique(labels)) == {0, 1} and labels[1:4].any()

    reference = build_job({"id": "ref", "input": str(ct), "key_boxes": "5:16,12,32,28", "mode": "reference"},
                          base=tmp_path)
    failed = run_job(reference, tmp_path, pool)
    assert not failed.ok and "default propagation mode" in failed.error
    lonely = build_job({"id": "lonely", "input": str(ct), "clicks": [[6, 20, 24, 1]]}, base=tmp_path)
    failed = run_job(lonely, tmp_path, pool)
    assert not failed.ok and "clicks correct an object" in failed.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyed", "small.nii.gz"]


def test_pacs_series_are_volume_jobs_named_after_their_uid(tmp_path):
    job = build_job({"input": "dicomweb://pacs:8042/dicom-web/studies/1.2/series/1.2.3.4", "boxes3d": [[1, 1, 1, 5, 5, 3]]},
                    base=tmp_path)
    assert (job.kind, job.id, job.uri, job.source_path) == (
        "volume", "1.2.3.4", "dicomweb://pacs:8042/dicom-web/studies/1.2/series/1.2.3.4", job.uri)
    assert object_prompts(job)[0].z_limits == (1, 3)


def test_a_folder_of_cvpr25_cases_segments_each_class_box(tmp_path, pool):
    from _data import ball_volume

    cases = tmp_path / "cases"
    cases.mkdir()
    vol = np.clip(ball_volume() + 1000, 0, 255).astype(np.uint8)
    box = {"z_min": 3, "z_max": 9, "z_mid": 6, "z_mid_x_min": 16, "z_mid_y_min": 12, "z_mid_x_max": 32, "z_mid_y_max": 28}
    np.savez_compressed(cases / "CT_Abdomen_001.npz", imgs=vol, spacing=np.array([2.5, 0.8, 0.8]),
                        boxes=np.array([box, dict(box, z_min=5, z_max=6)], dtype=object))
    (job,) = load_jobs(cases, JobDefaults(ModelRef("tiny_lite"))).jobs
    assert job.kind == "npz"
    result = run_job(job, tmp_path / "out", pool)
    assert result.ok, result.error
    assert result.summary == "CVPR25 npz, step box, 2 class(es)"
    with np.load(tmp_path / "out" / job.id / "CT_Abdomen_001.npz") as data:
        segs = data["segs"]
    assert segs.shape == vol.shape and set(np.unique(segs)) <= {0, 1, 2}
    assert not segs[:3].any() and not segs[10:].any()  # each class stays inside its z extent
    assert not (segs == 2)[:5].any() and not (segs == 2)[7:].any()
    assert result.files == ("CT_Abdomen_001.npz",)  # the protocol's state stays out of the outputs
