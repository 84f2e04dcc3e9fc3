"""Datasets: manifest CSV, CVPR24 npz folder, paired folders -> typed Cases; empty inputs are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.evaluation import Case, load_cases, read_manifest
from medsam.types import Box, Box3D

from ._synthetic import disc_case, lesion_volume, small_manifest, write_manifest


def test_manifest_cases_resolve_paths_against_the_csv(tmp_path):
    cases = load_cases(small_manifest(tmp_path))
    assert [c.case_id for c in cases] == ["d0", "d1", "d2", "b0", "b1", "lesion"]
    first = cases[0]
    assert isinstance(first, Case) and first.dataset == "discs" and first.dims == "2d" and first.label == 255
    assert first.image_path == tmp_path / "discs" / "images" / "d0.png" and first.image_path.is_file()
    assert cases[-1].dims == "3d" and cases[-1].image_path == cases[-1].mask_path
    assert "cases.csv line 2" in first.source


def test_folder_holding_cases_csv_is_read_as_its_manifest(tmp_path):
    small_manifest(tmp_path, with_3d=False)
    assert len(load_cases(tmp_path)) == 5


def test_optional_columns_have_defaults(tmp_path):
    img, mask = disc_case(tmp_path, "only")
    path = tmp_path / "minimal.csv"
    path.write_text("image,mask\nimages/only.png,masks/only.png\n")
    (case,) = read_manifest(path)
    assert case.dataset == tmp_path.name and case.case_id == "only" and case.dims == "2d"
    assert case.label is None and case.problem is None


def test_bad_row_values_become_reported_problems(tmp_path):
    disc_case(tmp_path, "a")
    path = write_manifest(tmp_path / "m.csv", [
        dict(dataset="x", case="a", dims="2d", image="images/a.png", mask="masks/a.png", label="liver"),
        dict(dataset="x", case="b", dims="4d", image="images/a.png", mask="masks/a.png", label="1"),
    ])
    a, b = read_manifest(path)
    assert "label 'liver' is not a positive whole number" in a.problem and "m.csv line 2" in a.problem
    assert "dims '4d'" in b.problem


@pytest.mark.parametrize("content", ["dataset,case,image,mask\n", "dataset,case,image,mask\n,,,\n"])
def test_empty_manifest_is_a_clear_error(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(InputError, match="lists no cases"):
        load_cases(path)


def test_manifest_without_image_column_names_what_is_missing(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("dataset,case,picture,mask\nx,a,a.png,a.png\n")
    with pytest.raises(InputError, match="lacks the column"):
        load_cases(path)


def test_empty_folder_and_missing_path_are_clear_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="no cases found"):
        load_cases(tmp_path / "nothing")
    with pytest.raises(InputError, match="does not exist"):
        load_cases(tmp_path / "absent.csv")


def test_datasets_filter_and_limit_per_dataset(tmp_path):
    manifest = small_manifest(tmp_path)
    assert [c.case_id for c in load_cases(manifest, datasets=["blobs"])] == ["b0", "b1"]
    assert [c.case_id for c in load_cases(manifest, limit=1)] == ["d0", "b0", "lesion"]
    with pytest.raises(InputError, match="known datasets: discs, blobs, vols"):
        load_cases(manifest, datasets=["nope"])


def test_duplicate_case_ids_are_refused(tmp_path):
    disc_case(tmp_path, "a")
    row = dict(dataset="x", case="a", image="images/a.png", mask="masks/a.png")
    with pytest.raises(InputError, match="listed twice"):
        load_cases(write_manifest(tmp_path / "m.csv", [row, row]))


def test_npz_folder_gives_one_case_per_label_with_given_boxes(tmp_path):
    folder = tmp_path / "npz"
    lesion_volume(folder / "3DBox_CT_0001.npz")
    gts = np.zeros((6, 20, 20), np.uint8)
    gts[1:3, 2:6, 2:6] = 1
    gts[3:5, 10:15, 10:16] = 2
    np.savez(folder / "3DBox_MR_0002.npz", imgs=np.zeros((6, 20, 20), np.uint8), gts=gts,
             boxes=np.array([[2, 2, 1, 5, 5, 2], [10, 10, 3, 15, 14, 4]]), spacing=np.array([1.0, 1.0, 3.0]))
    cases = load_cases(folder)
    assert [c.case_id for c in cases] == ["3DBox_CT_0001", "3DBox_MR_0002_label1", "3DBox_MR_0002_label2"]
    assert [c.modality for c in cases] == ["CT", "MR", "MR"]
    assert all(c.dims == "3d" for c in cases) and cases[0].box is None
    assert cases[2].box == Box3D(10, 10, 3, 15, 14, 4) and cases[2].label == 2


def test_npz_folder_2d_case(tmp_path):
    gts = np.zeros((30, 40), np.uint8)
    gts[5:15, 8:20] = 1
    np.savez(tmp_path / "2DBox_US_0001.npz", imgs=np.zeros((30, 40, 3), np.uint8), gts=gts, boxes=np.array([[8, 5, 19, 14]]))
    (case,) = load_cases(tmp_path)
    assert case.dims == "2d" and case.box == Box(8, 5, 19, 14)


def test_paired_folders_match_by_name_and_report_orphans(tmp_path):
    root = tmp_path / "pairs"
    disc_case(root, "one")
    disc_case(root, "two")
    (root / "masks" / "two.png").rename(root / "masks" / "three.png")
    cases = {c.case_id: c for c in load_cases(root)}
    assert set(cases) == {"one", "two", "three"}
    assert cases["one"].problem is None and cases["one"].dataset == "pairs" and cases["one"].label == 255
    assert "has no mask named two" in cases["two"].problem
    assert "has no image named three" in cases["three"].problem
