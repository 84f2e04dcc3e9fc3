"""Canonical orientation: hand-built directions, exact round trips, prompts mapped with the voxels they cover,
and every view voxel at the physical point of the stored voxel it came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam.errors import InputError, PromptError
from medsam.preprocess.orientation import (
    ORIENTATIONS,
    AxisReorientation,
    orient_volume,
    oriented_with,
    reorientation_for,
    slice_plane,
    voxel_to_physical,
)
from medsam.types import Box, Box3D, Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_synth import rotation  # noqa: E402


def columns(x, y, z) -> np.ndarray:
    """An ITK direction from the physical directions of the x, y, z index axes."""
    return np.column_stack([x, y, z]).astype(np.float64)


L, P, S = np.eye(3)
R, A, I = -L, -P, -S  # noqa: E741
SHAPE = (5, 6, 7)

# name -> (direction, expected canonical (order, flip), plane)
CASES = {
    "LPS": (columns(L, P, S), ((0, 1, 2), (False, False, False)), "axial"),
    "RAS": (columns(R, A, S), ((0, 1, 2), (False, True, True)), "axial"),
    "LAS": (columns(L, A, S), ((0, 1, 2), (False, True, False)), "axial"),
    "RAI": (columns(R, A, I), ((0, 1, 2), (True, True, True)), "axial"),
    "medsam2 npz (PLI)": (columns(P, L, I), ((0, 2, 1), (True, False, False)), "axial"),
    "PIR sagittal": (columns(P, I, R), ((0, 1, 2), (False, False, False)), "sagittal"),
    "ASL sagittal": (columns(A, S, L), ((0, 1, 2), (True, True, True)), "sagittal"),
    "LIP coronal": (columns(L, I, P), ((0, 1, 2), (False, False, False)), "coronal"),
    "SRA coronal (transposed)": (columns(S, R, A), ((0, 2, 1), (True, True, True)), "coronal"),
    "RAS rotated 25 deg": (rotation(25, 0, 0) @ columns(R, A, S), ((0, 1, 2), (False, True, True)), "axial"),
    "RAS oblique 20/-15/30": (rotation(20, -15, 30) @ columns(R, A, S), ((0, 1, 2), (False, True, True)), "axial"),
    "PLI rotated 28 deg": (rotation(0, 0, 28) @ columns(P, L, I), ((0, 2, 1), (True, False, False)), "axial"),
}


def random_volume(direction: np.ndarray, shape=SHAPE, channels: int | None = None) -> Volume:
    rng = np.random.default_rng(abs(hash(direction.tobytes())) % 2**32)
    return Volume(rng.normal(size=shape), (2.5, 0.7, 0.9), (-12.0, 30.5, 7.0), direction, "CT", {"source_path": "v"})


@pytest.mark.parametrize("name", list(CASES))
def test_canonical_choice_on_hand_built_directions(name):
    direction, (order, flip), plane = CASES[name]
    reo = reorientation_for(direction, SHAPE, "canonical")
    assert slice_plane(direction) == plane == reo.plane
    assert (reo.order, reo.flip) == (order, flip)
    assert reo.keeps_slice_axis
    assert reo.is_identity == (order == (0, 1, 2) and not any(flip))
    assert reorientation_for(direction, SHAPE, "stored").is_identity


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2] == "axial"])
def test_canonical_equals_lps_for_axial_series(name):
    direction = CASES[name][0]
    assert reorientation_for(direction, SHAPE, "canonical") == _renamed(reorientation_for(direction, SHAPE, "lps"), "canonical")


def _renamed(reo: AxisReorientation, name: str) -> AxisReorientation:
    return AxisReorientation(reo.source_shape, reo.order, reo.flip, name, reo.plane)


def test_view_directions_are_the_radiological_display_frame():
    """The view's own direction matrix says where its axes point: L/P/S for axial, L/I/P coronal, P/I/R sagittal."""
    expected = {"axial": columns(L, P, S), "coronal": columns(L, I, P), "sagittal": columns(P, I, R)}
    for name, (direction, _, plane) in CASES.items():
        view = orient_volume(random_volume(direction), "canonical").view
        assert np.array_equal(nearest_axes(view.direction), expected[plane]), name
        lps = orient_volume(random_volume(direction), "lps").view
        assert np.array_equal(nearest_axes(lps.direction), np.eye(3)), name


def nearest_axes(direction: np.ndarray) -> np.ndarray:
    """Each column replaced by the signed patient axis it is nearest to."""
    out = np.zeros((3, 3))
    for c in range(3):
        r = int(np.argmax(np.abs(direction[:, c])))
        out[r, c] = np.sign(direction[r, c])
    return out


def test_lps_reslices_sagittal_and_coronal_series():
    sag = reorientation_for(columns(P, I, R), SHAPE, "lps")
    assert not sag.keeps_slice_axis
    # view x (L) = stored z (R, flipped), view y (P) = stored x, view z (S) = stored y (I, flipped)
    assert sag.order == (1, 2, 0) and sag.flip == (True, False, True)
    cor = reorientation_for(columns(L, I, P), SHAPE, "lps")
    assert cor.order == (1, 0, 2) and cor.flip == (True, False, False)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("name", list(CASES))
def test_every_view_voxel_keeps_its_physical_point(name, orientation):
    volume = random_volume(CASES[name][0])
    oriented = orient_volume(volume, orientation)
    reo, view = oriented.reorientation, oriented.view
    assert view.shape == reo.view_shape
    idx = np.indices(view.shape).reshape(3, -1).T
    src = reo.indices_to_source(idx)
    assert np.allclose(voxel_to_physical(view, idx), voxel_to_physical(volume, src), atol=1e-9)
    assert np.array_equal(view.array[tuple(idx.T)], volume.array[tuple(src.astype(int).T)])
    assert np.allclose(view.spacing_mm, reo.spacing_to_view(volume.spacing_mm))
    assert np.allclose(reo.spacing_to_source(view.spacing_mm), volume.spacing_mm)
    assert np.allclose(view.direction.T @ view.direction, np.eye(3), atol=1e-9)  # still a rotation (or reflection)
    assert view.modality == "CT" and view.metadata["source_path"] == "v"


@pytest.mark.parametrize("name", list(CASES))
def test_round_trips_are_exact_for_3d_and_4d_arrays(name):
    reo = reorientation_for(CASES[name][0], SHAPE, "lps")
    rng = np.random.default_rng(1)
    for array in (rng.integers(0, 255, SHAPE, dtype=np.uint8), rng.normal(size=(*SHAPE, 3))):
        view = reo.to_view(array)
        assert view.shape[:3] == reo.view_shape and view.shape[3:] == array.shape[3:]
        back = reo.to_source(view)
        assert back.shape == array.shape and np.array_equal(back, array)
    if array.ndim == 4:  # channels travel with their voxel
        zyx = np.array([[1, 2, 3]])
        v = reo.indices_to_view(zyx).astype(int)[0]
        assert np.array_equal(view[tuple(v)], array[1, 2, 3])
    pts = rng.uniform(0, 4, size=(20, 3))
    assert np.allclose(reo.indices_to_source(reo.indices_to_view(pts)), pts)


def test_index_maps_follow_the_voxels():
    for name, (direction, _, _) in CASES.items():
        for orientation in ORIENTATIONS:
            reo = reorientation_for(direction, SHAPE, orientation)
            marker = np.zeros(SHAPE, np.uint8)
            marker[1, 4, 2] = 1
            where = np.argwhere(reo.to_view(marker))[0]
            assert np.array_equal(reo.indices_to_view([[1, 4, 2]])[0], where), (name, orientation)


@pytest.mark.parametrize("name", list(CASES))
def test_3d_box_maps_to_the_box_of_the_same_voxels(name):
    reo = reorientation_for(CASES[name][0], SHAPE, "lps")
    box = Box3D(1, 2, 1, 5, 4, 3)
    mask = np.zeros(SHAPE, bool)
    mask[1:4, 2:5, 1:6] = True
    view_box = reo.box3d_to_view(box)
    assert view_box == Box3D.from_mask(reo.to_view(mask))
    assert reo.box3d_to_source(view_box) == box


@pytest.mark.parametrize("name", list(CASES))
def test_2d_box_and_points_on_a_stored_slice(name):
    reo = reorientation_for(CASES[name][0], SHAPE, "canonical")
    z, box = 3, Box(1, 2, 5, 4)
    mask = np.zeros(SHAPE, bool)
    mask[z, 2:5, 1:6] = True
    view = reo.to_view(mask)
    vz, vbox = reo.box_to_view(z, box)
    assert np.flatnonzero(view.any(axis=(1, 2))).tolist() == [vz]
    assert vbox == Box.from_mask(view[vz])
    assert reo.box_to_source(vz, vbox) == (z, box)
    assert reo.slice_to_source(reo.slice_to_view(z)) == z
    pts = np.array([[1.0, 2.0], [5.0, 3.0]])
    pz, vpts = reo.points_to_view(z, pts)
    assert pz == vz
    for (x, y), (vx, vy) in zip(pts.astype(int), vpts.astype(int)):
        single = np.zeros(SHAPE, bool)
        single[z, y, x] = True
        assert reo.to_view(single)[vz, vy, vx]
    assert np.allclose(reo.points_to_source(vz, vpts)[1], pts)


def test_a_2d_box_has_no_meaning_when_the_view_reslices():
    reo = reorientation_for(columns(P, I, R), SHAPE, "lps")
    with pytest.raises(PromptError, match="reslices this sagittal series.*3D box"):
        reo.box_to_view(2, Box(1, 1, 3, 3))
    with pytest.raises(PromptError, match="canonical"):
        reo.points_to_view(2, np.array([[1.0, 1.0]]))
    reo.box3d_to_view(Box3D(1, 1, 0, 3, 3, 2))  # a 3D box still maps


def test_records_round_trip_through_json():
    reo = reorientation_for(CASES["medsam2 npz (PLI)"][0], (13, 40, 30), "canonical")
    again = AxisReorientation.from_dict(json.loads(json.dumps(reo.to_dict())))
    assert again == reo and again.plane == "axial" and again.view_shape == (13, 30, 40)
    assert reo.summary() == "canonical (axial): rows and columns swapped, stored z flipped"
    assert reorientation_for(CASES["RAS"][0], SHAPE).describe() == "stored x flipped, y flipped"
    assert AxisReorientation.identity(SHAPE).describe() == "as stored"
    with pytest.raises(InputError, match="not valid"):
        AxisReorientation.from_dict({"order": [0, 1, 2]})
    with pytest.raises(InputError, match="permutation"):
        AxisReorientation(SHAPE, (0, 0, 1))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InputError, match="choose one of canonical, lps, stored"):
        reorientation_for(np.eye(3), SHAPE, "ras")
    with pytest.raises(InputError, match="degenerate"):
        reorientation_for(np.zeros((3, 3)), SHAPE, "canonical")
    reo = reorientation_for(CASES["RAS"][0], SHAPE)
    with pytest.raises(InputError, match="does not match the stored grid"):
        reo.to_view(np.zeros((5, 7, 6)))
    with pytest.raises(InputError, match="file changed"):
        oriented_with(random_volume(np.eye(3), shape=(4, 6, 7)), reo)


def test_view_volume_drops_the_dicom_description_and_records_the_orientation():
    volume = random_volume(CASES["RAS"][0])
    volume.metadata["dicom"] = object()
    oriented = orient_volume(volume)
    assert "dicom" not in oriented.view.metadata and "dicom" in oriented.source.metadata
    assert oriented.view.metadata["orientation"]["flip"] == [False, True, True]
    labels = np.zeros(oriented.view.shape, np.uint8)
    labels[0, 0, 0] = 3
    back = oriented.labels_to_source(labels)
    assert back.flags.c_contiguous and back[0, -1, -1] == 3
    same = orient_volume(random_volume(np.eye(3)))
    assert same.is_identity and same.view is same.source
