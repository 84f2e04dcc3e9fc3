"""Inference in the view, labels on the stored grid: prompts mapped to the view, and a volume and its RAS copy
(same physical voxels, arrays flipped) giving the same view slices, the same labels in physical space and the
same montage, with the tiny random model; ``stored`` keeps the old behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam.cli import main
from medsam.errors import PromptError
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import ObjectPrompt, PropagationConfig, prompt_to_view, segment_stack
from medsam.inference.segment3d import segment_volume, segment_volume_file
from medsam.preprocess.intensity import apply_window
from medsam.preprocess.orientation import AxisReorientation, oriented_with, reorientation_for, voxel_to_physical
from medsam.types import Box, Box3D, Points, Volume

SHAPE = (10, 40, 48)
CONFIG = PropagationConfig(require_key_mask=False)  # random weights: a key slice may come out empty


def lps_volume() -> Volume:
    """CT-like HU volume stored LPS: a soft-tissue body with a bright off-centre ball (anterior-left)."""
    z, y, x = np.indices(SHAPE)
    hu = np.full(SHAPE, -1000, np.int16)
    hu[((y - 20) / 17.0) ** 2 + ((x - 24) / 21.0) ** 2 <= 1] = 40
    hu[(z - 5) ** 2 + (y - 14) ** 2 + (x - 30) ** 2 <= 36] = 250
    hu[:, 30:34, 20:28] = 700  # a "spine" at the back
    return Volume(hu, (2.5, 0.8, 0.7), (-20.0, 10.0, 55.0), np.eye(3), "CT", {"source_path": "lps"})


def flipped_copy(volume: Volume, flip=(False, True, True)) -> Volume:
    """The same physical voxels stored with the given array axes reversed (y, x: an LPS volume becomes RAS)."""
    copy = oriented_with(volume, AxisReorientation(volume.shape, flip=flip, name="copy")).view
    return Volume(copy.array, copy.spacing_mm, copy.origin_mm, copy.direction, volume.modality, {"source_path": "ras"})


def ras_box3d(box: Box3D, shape=SHAPE) -> Box3D:
    """A stored-index 3D box of the LPS volume as the RAS copy's stored indices."""
    h, w = shape[1], shape[2]
    return Box3D(w - 1 - box.x1, h - 1 - box.y1, box.z0, w - 1 - box.x0, h - 1 - box.y0, box.z1)


def physical_set(volume: Volume, labels: np.ndarray) -> np.ndarray:
    pts = voxel_to_physical(volume, np.argwhere(labels > 0))
    return pts[np.lexsort(np.round(pts, 3).T[::-1])]


@pytest.fixture(scope="module")
def predictor(tiny_lite):
    return Predictor(tiny_lite)


# --- prompts ----------------------------------------------------------------------------------------------


def test_prompts_in_stored_indices_map_to_the_same_voxels_of_the_view():
    reo = reorientation_for(np.diag([-1.0, -1.0, 1.0]), SHAPE, "canonical")  # RAS
    pts = Points(np.array([[30.0, 14.0], [10.0, 5.0]]), np.array([1, 0]))
    p = ObjectPrompt(z=5, box=Box(24, 8, 36, 20), points=pts, z_limits=(2, 8), extent=Box(20, 6, 40, 22))
    v = prompt_to_view(p, reo)
    assert v.z == 5 and v.z_limits == (2, 8)
    assert v.box == Box(47 - 36, 39 - 20, 47 - 24, 39 - 8)
    assert v.extent == Box(47 - 40, 39 - 22, 47 - 20, 39 - 6)
    assert np.allclose(v.points.coords, [[17.0, 25.0], [37.0, 34.0]]) and list(v.points.labels) == [1, 0]

    z_and_swap = reorientation_for(np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]]), SHAPE, "canonical")
    w = prompt_to_view(ObjectPrompt.from_box3d(Box3D(24, 8, 2, 36, 20, 6)), z_and_swap)
    assert w.z == 9 - 4 and w.z_limits == (3, 7)  # the stored key slice 4 keeps being the key slice
    assert w.box == Box(8, 24, 20, 36)  # rows and columns swapped
    assert prompt_to_view(p, reorientation_for(np.eye(3), SHAPE)) == p  # identity: the prompt as checked


def test_prompt_errors_speak_of_the_stored_frame():
    reo = reorientation_for(np.diag([-1.0, -1.0, 1.0]), SHAPE, "canonical")
    with pytest.raises(PromptError, match="slice 12 is out of range.*10 slices"):
        prompt_to_view(ObjectPrompt(z=12, box=Box(1, 1, 5, 5)), reo)
    with pytest.raises(PromptError, match=r"\(60,1,70,5\) lies outside the image of width 48"):
        prompt_to_view(ObjectPrompt(z=2, box=Box(60, 1, 70, 5)), reo)


def test_a_reslicing_view_takes_3d_boxes_only():
    sagittal = np.column_stack([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]).astype(float)  # x -> P, y -> I, z -> R
    reo = reorientation_for(sagittal, SHAPE, "lps")
    assert not reo.keeps_slice_axis
    box = Box3D(10, 5, 2, 30, 20, 6)
    v = prompt_to_view(ObjectPrompt.from_box3d(box), reo)
    view_box = reo.box3d_to_view(box)
    assert v.z_limits == (int(view_box.z0), int(view_box.z1)) and v.box == view_box.box2d()
    with pytest.raises(PromptError, match="reslices this sagittal series.*give a 3D box"):
        prompt_to_view(ObjectPrompt(z=3, box=Box(10, 5, 30, 20)), reo)


# --- a volume and its RAS copy ------------------------------------------------------------------------------


def test_ras_copy_gives_the_same_view_and_the_same_physical_labels(predictor):
    lps = lps_volume()
    ras = flipped_copy(lps)
    assert np.allclose(voxel_to_physical(ras, [[0, 0, 0]]), voxel_to_physical(lps, [[0, SHAPE[1] - 1, SHAPE[2] - 1]]))
    box = Box3D(22, 6, 2, 38, 22, 8)
    a = segment_volume(predictor, lps, [ObjectPrompt.from_box3d(box)], config=CONFIG, progress=False)
    b = segment_volume(predictor, ras, [ObjectPrompt.from_box3d(ras_box3d(box))], config=CONFIG, progress=False)
    assert a.reorientation.is_identity and b.reorientation.flip == (False, True, True)
    assert np.array_equal(a.view_u8, b.view_u8)  # the model saw the same slices
    assert np.array_equal(a.segmentation.labels, b.segmentation.labels)
    assert a.labels.any() and b.labels.shape == ras.shape
    assert np.array_equal(b.labels, a.labels[:, ::-1, ::-1])  # on the copy's own grid
    assert np.allclose(physical_set(lps, a.labels), physical_set(ras, b.labels))
    assert [o.z_range for o in a.objects] == [o.z_range for o in b.objects]


def test_stored_orientation_is_the_old_behaviour(predictor):
    ras = flipped_copy(lps_volume())
    prompt = ObjectPrompt(z=5, box=Box(10, 18, 26, 33))
    stored = segment_volume(predictor, ras, [prompt], config=CONFIG, orientation="stored", progress=False)
    old = segment_stack(predictor, apply_window(ras, "auto"), [prompt], CONFIG, progress=False)
    assert stored.reorientation.is_identity
    assert np.array_equal(stored.labels, old.labels) and stored.labels.any()
    reference = segment_volume(predictor, ras, [ObjectPrompt.from_box3d(Box3D(10, 18, 3, 26, 33, 7))],
                               config=PropagationConfig(mode="reference"), progress=False)
    assert reference.reorientation.is_identity  # the reference mode defaults to the arrays as stored


def test_z_reversed_view_reports_ends_in_stored_slices(predictor):
    lps = lps_volume()
    upside_down = flipped_copy(lps, flip=(True, False, False))  # stored from head to feet
    box = Box3D(22, 6, 2, 38, 22, 8)  # an odd number of slices: the middle (key) slice is the same both ways
    up = Box3D(box.x0, box.y0, SHAPE[0] - 1 - box.z1, box.x1, box.y1, SHAPE[0] - 1 - box.z0)
    a = segment_volume(predictor, lps, [ObjectPrompt.from_box3d(box)], config=CONFIG, progress=False)
    b = segment_volume(predictor, upside_down, [ObjectPrompt.from_box3d(up)], config=CONFIG, progress=False)
    assert b.reorientation.flip == (True, False, False)
    assert np.array_equal(b.labels, a.labels[::-1])
    (obj,) = b.objects
    assert obj.z_range == (SHAPE[0] - 1 - a.objects[0].z_range[1], SHAPE[0] - 1 - a.objects[0].z_range[0])
    ends = {e.direction: e for e in obj.ends}
    assert ends[+1].last_z == obj.z_range[1] and ends[-1].last_z == obj.z_range[0]
    assert f"z limit {int(up.z1)}" in ends[+1].reason


def write_nifti(volume: Volume, path: Path) -> Path:
    from medsam.io.volume_writers import to_sitk_image
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk_image(volume.array, volume), str(path))
    return path


def test_files_round_trip_with_montage_and_cli_report(tmp_path, predictor, monkeypatch, capsys):
    import SimpleITK as sitk
    from PIL import Image

    import medsam.cli.segment_volume

    lps = lps_volume()
    ras = flipped_copy(lps)
    a_in, b_in = write_nifti(lps, tmp_path / "in" / "lps.nii.gz"), write_nifti(ras, tmp_path / "in" / "ras.nii.gz")
    box = Box3D(22, 6, 2, 38, 22, 8)
    a = segment_volume_file(predictor, a_in, tmp_path / "a.nii.gz", prompts=[ObjectPrompt.from_box3d(box)],
                            montage_path=tmp_path / "a.png", config=CONFIG, progress=False)
    b = segment_volume_file(predictor, b_in, tmp_path / "b.nii.gz", prompts=[ObjectPrompt.from_box3d(ras_box3d(box))],
                            montage_path=tmp_path / "b.png", config=CONFIG, progress=False)
    img_a, img_b = sitk.ReadImage(str(tmp_path / "a.nii.gz")), sitk.ReadImage(str(tmp_path / "b.nii.gz"))
    assert np.allclose(img_b.GetDirection(), sitk.ReadImage(str(b_in)).GetDirection())  # the source's geometry
    la, lb = sitk.GetArrayFromImage(img_a), sitk.GetArrayFromImage(img_b)
    assert la.any() and np.array_equal(lb, la[:, ::-1, ::-1]) and np.array_equal(lb, b.labels)
    # the montage shows the view, so both are the same picture
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))

    monkeypatch.setattr(medsam.cli.segment_volume, "load_predictor", lambda args, **kw: predictor)
    spec = ",".join(str(int(v)) for v in ras_box3d(box).as_array())
    rc = main(["segment-volume", str(b_in), "--box3d", spec, "-o", str(tmp_path / "c.nii.gz"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "orientation canonical (axial): stored x flipped, y flipped" in out.out
    rc = main(["segment-volume", str(b_in), "--box3d", spec, "-o", str(tmp_path / "d.nii.gz"), "--orientation",
               "stored", "--no-progress"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "orientation stored (axial): as stored" in text.out


def test_medsam2_npz_is_segmented_in_the_view_and_segs_land_on_the_stored_grid(tmp_path, predictor):
    """A MedSAM2 npz stored like the dev cases (rows/columns transposed, z reversed) gives the segs of its LPS
    twin mapped onto its own grid; without a direction (CVPR24 layout) a file is taken as stored."""
    from medsam.inference.cvpr24 import segment_npz_case

    lps = lps_volume()
    u8 = apply_window(lps, "auto")
    pli = AxisReorientation(SHAPE, order=(0, 2, 1), flip=(True, False, False), name="pli")
    stored = oriented_with(lps.with_array(u8), pli).view
    box = Box3D(22, 6, 2, 38, 22, 8)
    np.savez_compressed(tmp_path / "lps.npz", imgs=u8, boxes=np.array([box.as_array()]))
    np.savez_compressed(
        tmp_path / "pli.npz", imgs=stored.array, boxes=np.array([pli.box3d_to_view(box).as_array()]),
        spacing=np.array(stored.spacing_mm[::-1]), direction=stored.direction.reshape(-1), origin=np.array(stored.origin_mm),
    )
    a = segment_npz_case(predictor, tmp_path / "lps.npz", tmp_path / "out" / "lps.npz")
    b = segment_npz_case(predictor, tmp_path / "pli.npz", tmp_path / "out" / "pli.npz")
    assert a.orientation.endswith("as stored") and "rows and columns swapped, stored z flipped" in b.orientation
    segs_a = np.load(tmp_path / "out" / "lps.npz")["segs"]
    segs_b = np.load(tmp_path / "out" / "pli.npz")["segs"]
    assert segs_a.any() and segs_b.shape == stored.shape
    assert np.array_equal(segs_b, pli.to_view(segs_a))
    c = segment_npz_case(predictor, tmp_path / "pli.npz", tmp_path / "out" / "pli_stored.npz", orientation="stored")
    assert c.orientation.endswith("as stored")
    old = segment_stack(predictor, stored.array, [ObjectPrompt.from_box3d(pli.box3d_to_view(box))],
                        PropagationConfig(require_key_mask=False), progress=False)
    assert np.array_equal(np.load(tmp_path / "out" / "pli_stored.npz")["segs"], old.labels)


def test_dicom_series_with_unusual_orientation_writes_dicom_seg_on_its_slices(tmp_path, predictor):
    import sys

    import highdicom as hd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
    from dicom_synth import write_ct_series

    from medsam.io.volume import read_volume

    series = write_ct_series(tmp_path / "ct", num_slices=6, rows=32, cols=28,
                             direction=np.column_stack([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]))
    prompt = ObjectPrompt.from_box3d(Box3D(6, 6, 1, 20, 24, 5))
    result = segment_volume_file(predictor, series.folder, tmp_path / "seg.dcm", prompts=[prompt], window="400,40",
                                 config=CONFIG, progress=False)
    assert result.reorientation.flip == (False, True, True) and result.output.format == "dicom-seg"
    volume = read_volume(series.folder)
    uids = list(volume.metadata["dicom"].sop_instance_uids)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    assert back.any() and np.array_equal(back, result.labels)
    assert np.array_equal(result.oriented.oriented.labels_to_view(result.labels), result.segmentation.labels)


def test_an_empty_key_slice_is_named_by_its_stored_index():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from oracle_model import OracleModel

    upside_down = flipped_copy(lps_volume(), flip=(True, False, False))
    dark = ObjectPrompt(z=2, box=Box(1, 1, 4, 4))  # air: the stand-in model finds nothing there
    with pytest.raises(PromptError, match="found nothing on its key slice 2 "):
        segment_volume(Predictor(OracleModel()), upside_down, [dark], window="400,40", progress=False)
