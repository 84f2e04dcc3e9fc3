"""Jobs files and folders become typed jobs; unusable rows become problems, never a stopped run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsam.batch.jobs import JobDefaults, ModelRef, build_job, default_id, load_jobs, recist_box
from medsam.errors import InputError, PromptError
from medsam.types import Box, Box3D


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_jobs_of_every_kind(tmp_path):
    jobs = load_jobs(write_jsonl(tmp_path / "jobs.jsonl", [
        "# a comment, then a blank line",
        "",
        {"input": "a/scan.png", "boxes": [[1, 2, 30, 40]], "points": [[10, 12, 1], [3, 4, 0]]},
        {"input": "ct.nii.gz", "boxes3d": [10, 20, 3, 40, 50, 9], "outputs": ["nrrd", "montage"], "labels": ["liver"]},
        {"id": "k", "input": "ct.nii.gz", "key_boxes": [{"z": 5, "box": [1, 2, 3, 4]}], "clicks": [[5, 2.5, 3, 1]]},
        {"input": "case.npz"},
        {"input": "clip.mp4", "frame": 3, "boxes": [[0, 0, 5, 5]], "outputs": ["overlay-video"]},
        {"input": "slice.png"},
    ]), JobDefaults(ModelRef("tiny_lite")))
    assert not jobs.problems
    image, volume, keyed, npz, video, everything = jobs.jobs
    assert (image.id, image.kind, image.boxes) == ("a__scan", "image", (Box(1, 2, 30, 40),))
    assert image.input == (tmp_path / "a" / "scan.png").resolve() and image.input.is_absolute()
    assert image.points.coords.tolist() == [[10, 12], [3, 4]] and image.points.labels.tolist() == [1, 0]
    assert (volume.kind, volume.boxes3d, volume.outputs, volume.labels) == (
        "volume", (Box3D(10, 20, 3, 40, 50, 9),), ("nrrd", "montage"), ("liver",))
    assert keyed.key_boxes[0].z == 5 and keyed.key_boxes[0].box == Box(1, 2, 3, 4)
    assert (keyed.clicks[0].z, keyed.clicks[0].y, keyed.clicks[0].x, keyed.clicks[0].label) == (5, 2.5, 3, 1)
    assert (npz.kind, npz.outputs) == ("npz", ("npz",))
    assert video.kind == "video" and video.outputs == ("npz", "overlay-video")  # the masks always come too
    assert everything.everything and everything.outputs == ("labels",)
    assert all(j.model == ModelRef("tiny_lite") for j in jobs.jobs)


def test_csv_lists_and_detector_rows(tmp_path):
    (tmp_path / "jobs.csv").write_text(
        "id,input,boxes,points,outputs,model\n"
        'one,x.png,"1,2,30,40;5,5,9,9",,mask;overlay,\n'
        'two,y.png,"1,2,30,40","4,5,1",,tiny_sam\n'
    )
    one, two = load_jobs(tmp_path / "jobs.csv", JobDefaults(ModelRef("tiny_lite", "w.pth"))).jobs
    assert one.boxes == (Box(1, 2, 30, 40), Box(5, 5, 9, 9)) and one.outputs == ("mask", "overlay")
    assert one.model == ModelRef("tiny_lite", "w.pth")
    assert two.points.coords.tolist() == [[4, 5]] and two.model == ModelRef("tiny_sam", None)

    (tmp_path / "det.csv").write_text(
        "image,x0,y0,x1,y1,z0,z1\n"
        "p1.png,1,2,10,20,,\n"
        "p2.png,3,3,9,9,,\n"
        "p1.png,5,6,15,25,,\n"
        "vol.nii.gz,4,5,20,30,2,8\n"
    )
    det = load_jobs(tmp_path / "det.csv")
    by_id = {j.id: j for j in det.jobs}
    assert by_id["p1"].boxes == (Box(1, 2, 10, 20), Box(5, 6, 15, 25))  # one job per image, rows in order
    assert by_id["p2"].boxes == (Box(3, 3, 9, 9),)
    assert by_id["vol"].boxes3d == (Box3D(4, 5, 2, 20, 30, 8),) and by_id["vol"].kind == "volume"


def test_folder_of_npz_cases_and_folder_of_images_with_prompts(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("b.npz", "a.npz"):
        np.savez(cases / name, imgs=np.zeros((4, 8, 8), np.uint8))
    jobs = load_jobs(cases)
    assert [j.id for j in jobs.jobs] == ["a", "b"] and {j.kind for j in jobs.jobs} == {"npz"}

    images = tmp_path / "images"
    images.mkdir()
    (images / "prompts.csv").write_text("input,x0,y0,x1,y1\nu.png,1,1,9,9\n")
    (only,) = load_jobs(images).jobs
    assert only.input == (images / "u.png").resolve() and only.boxes == (Box(1, 1, 9, 9),)

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="holds 1 images but no prompts.csv"):
        load_jobs(bare)


def test_recist_marker_becomes_the_box_of_its_ends():
    assert recist_box([45, 40, 75, 42, 61, 25, 59, 55]) == Box(45, 25, 75, 55)
    with pytest.raises(PromptError, match="needs 8"):
        recist_box([1, 2, 3, 4])
    job = build_job({"input": "ct.nii.gz", "slice": 4, "recist": "10,10,30,12,20,4,21,18;5,5,6,20,1,9,9,11"},
                    base=Path("/data"))
    assert job.boxes == (Box(10, 4, 30, 18), Box(1, 5, 9, 20))


def test_bad_rows_are_problems_and_the_rest_still_runs(tmp_path):
    jobs = load_jobs(write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": "good", "input": "a.png", "boxes": [[1, 1, 5, 5]]},
        {"id": "short", "input": "a.png", "boxes": [[1, 2, 3]]},
        "{not json",
        {"input": "v.nii.gz", "boxes": [[1, 1, 5, 5]]},  # a 2D box on a volume without its slice
        {"id": "vid", "input": "c.mp4", "boxes": [[1, 1, 5, 5]]},  # a video without its frame
        {"id": "fmt", "input": "a.png", "boxes": [[1, 1, 5, 5]], "outputs": ["nifti"]},
        {"id": "typo", "input": "a.png", "boxs": [[1, 1, 5, 5]]},
        {"id": "good", "input": "b.png", "boxes": [[1, 1, 5, 5]]},
        {"id": "bad id!", "input": "b.png"},
        {"input": "a.png", "points": [[1, 1]], "boxes": [[1, 1, 5, 5], [2, 2, 6, 6]]},
    ]))
    assert [j.id for j in jobs.jobs] == ["good"]
    messages = {p.id: p.message for p in jobs.problems}
    assert "exactly 4" in messages["short"]
    assert "not valid JSON" in messages["line3"]
    assert "need 'slice'" in messages["v"]
    assert "give 'frame'" in messages["vid"]
    assert "nifti do not exist for a image job" in messages["fmt"]
    assert "unknown field(s) boxs" in messages["typo"]
    assert "used twice" in messages["good.line8"]
    assert "letters, digits" in next(m for i, m in messages.items() if i.startswith("b"))
    assert "points refine one object" in messages["a"]
    assert all(p.source.startswith("jobs.jsonl line") for p in jobs.problems)
    assert len(set(jobs.ids)) == len(jobs.ids)  # every row keeps its own name (its summary row)


def test_unreadable_sources_stop_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_jobs(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("path_to,other\n1,2\n")
    with pytest.raises(InputError, match="no 'input' column"):
        load_jobs(tmp_path / "x.csv")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="unknown type"):
        load_jobs(tmp_path / "x.txt")
    write_jsonl(tmp_path / "empty.jsonl", ["# nothing"])
    with pytest.raises(InputError, match="lists no jobs"):
        load_jobs(tmp_path / "empty.jsonl")


def test_fingerprint_follows_what_the_job_computes(tmp_path):
    base = {"input": "a.png", "boxes": [[1, 1, 5, 5]]}
    a = build_job(base, base=tmp_path)
    assert build_job(dict(base), base=tmp_path).fingerprint == a.fingerprint
    for change in ({"boxes": [[1, 1, 5, 6]]}, {"outputs": ["mask", "overlay"]}, {"model": "tiny_sam"},
                   {"points": [[2, 2, 1]]}):
        assert build_job({**base, **change}, base=tmp_path).fingerprint != a.fingerprint


def test_default_ids_are_stable_and_safe(tmp_path):
    assert default_id(tmp_path / "sub" / "ct 001.nii.gz", tmp_path) == "sub__ct_001"
    assert default_id(tmp_path / "series_dir", tmp_path) == "series_dir"
    assert default_id(Path("/elsewhere/x.png"), tmp_path) == "x"
