"""`medsam segment-volume`, `medsam segment-video` and `medsam segment` on npz cases, end to end.

The model is the stand-in of tests/inference/oracle_model.py (it segments the bright voxels inside the box), so
the expected masks are known; geometry is checked by reading the outputs back with their own libraries.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam.cli import main

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "inference"))
sys.path.insert(0, str(TESTS / "io"))
import dicom_synth  # noqa: E402
from oracle_model import OracleModel  # noqa: E402

SHAPE = (20, 40, 48)  # z, y, x
CENTRE, RADIUS = (10, 20, 24), 6


@pytest.fixture(autouse=True)
def oracle_model(monkeypatch):
    """Every subcommand gets a predictor on the stand-in model instead of building one from the registry
    (patched where it is looked up: the shared helper and the modules that imported it)."""
    import medsam.cli.common
    import medsam.cli.segment_video
    import medsam.cli.segment_volume
    from medsam.inference.predictor import Predictor

    def fake(args, **kwargs):
        return Predictor(OracleModel(), **kwargs)

    for module in (medsam.cli.common, medsam.cli.segment_volume, medsam.cli.segment_video):
        monkeypatch.setattr(module, "load_predictor", fake, raising=False)


def ball(shape=SHAPE, centre=CENTRE, radius=RADIUS) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def nifti(tmp_path) -> Path:
    """A CT-like NIfTI in HU (-1000 air, a 60 HU ball) with anisotropic spacing and a rotated direction."""
    import SimpleITK as sitk

    hu = np.where(ball(), 60, -1000).astype(np.int16)
    for k in range(SHAPE[0]):
        hu[k, 0, : k + 1] = -100  # a faint slice number
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-30.0, 12.5, 80.0))
    image.SetDirection(tuple(dicom_synth.rotation(20, -15, 30).reshape(-1)))
    path = tmp_path / "input" / "ct.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(image, str(path))
    return path


def test_nifti_round_trip_lands_on_the_same_voxels(tmp_path, nifti, capsys):
    import SimpleITK as sitk

    out, montage = tmp_path / "out" / "ball.nii.gz", tmp_path / "out" / "ball.png"
    rc = main(["segment-volume", str(nifti), "--box3d", "16,12,4,32,28,16", "-o", str(out), "--montage", str(montage),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    source, result = sitk.ReadImage(str(nifti)), sitk.ReadImage(str(out))
    assert result.GetSize() == source.GetSize()
    assert np.allclose(result.GetSpacing(), source.GetSpacing())
    assert np.allclose(result.GetOrigin(), source.GetOrigin())
    assert np.allclose(result.GetDirection(), source.GetDirection())
    labels = sitk.GetArrayFromImage(result)
    assert set(np.unique(labels)) == {0, 1}
    assert dice(labels, ball()) > 0.9
    zs = np.flatnonzero(labels.reshape(SHAPE[0], -1).any(axis=1))
    assert zs[0] >= 4 and zs[-1] <= 16
    assert montage.stat().st_size > 0
    text = capsys.readouterr().out
    assert "label 1" in text and "soft_tissue" in text and "mL" in text


def test_slice_prompt_stops_where_the_ball_ends(tmp_path, nifti, capsys):
    import SimpleITK as sitk

    out = tmp_path / "ball.nrrd"
    rc = main(["segment-volume", str(nifti), "--slice", "10", "--box", "16,12,32,28", "-o", str(out),
               "--window", "400,40", "--label", "ball", "--batch-size", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert dice(labels, ball()) > 0.85
    text = capsys.readouterr().out
    # the one-voxel tips at z 4 and 16 fall under the area rule (5% of the key slice)
    assert "label 1 (ball): slices 5..15" in text and "up: area 1 px < 0.05" in text
    assert "encoded 13 slices, decoded 13" in text


def test_key_boxes_and_clicks(tmp_path, nifti, capsys):
    import SimpleITK as sitk

    out = tmp_path / "ball.nii.gz"
    rc = main(["segment-volume", str(nifti), "--key-box", "10:16,12,32,28", "--key-box", "8:17,13,31,27",
               "--click", "12,20,24,1", "-o", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(labels)) == {0, 1} and dice(labels, ball()) > 0.85
    assert "click for label 1" in capsys.readouterr().out
    for argv, words in (
        (["--key-box", "10:16,12,32,28", "--click", "1,2,3"], "z,y,x,1|0"),
        (["--key-box", "10:16,12,32,28", "--click", "30,20,24,1"], "outside the volume"),
        (["--key-box", "40:16,12,32,28"], "slices 0..19"),
        (["--key-box", "10-16,12,32,28"], "Z:x0,y0,x1,y1"),
        (["--click", "12,20,24,1"], "no prompt"),
    ):
        rc = main(["segment-volume", str(nifti), *argv, "-o", str(tmp_path / "bad.nii.gz"), "--no-progress"])
        assert rc == 2 and words in capsys.readouterr().err, argv
        assert not (tmp_path / "bad.nii.gz").exists()


def test_reference_mode_and_output_folder(tmp_path, nifti):
    folder = tmp_path / "results"
    assert main(["segment-volume", str(nifti), "--box3d", "16,12,6,32,28,14", "-o", str(folder), "--mode", "reference",
                 "--no-progress"]) == 0
    assert listing(folder) == ["ct_seg.nii.gz"]


@pytest.fixture
def dicom_series(tmp_path, monkeypatch):
    """A 10-slice synthetic CT series (rotated, shuffled files) holding a ball of 60 HU in air."""
    monkeypatch.setattr(dicom_synth, "hu_pattern", lambda shape: np.where(ball(shape, (5, 16, 15), 4), 60.0, -1000.0))
    return dicom_synth.write_ct_series(tmp_path / "series", num_slices=10, rows=32, cols=32)


def test_dicom_series_to_dicom_seg(tmp_path, dicom_series):
    import highdicom as hd

    from medsam.io.volume import read_volume

    out = tmp_path / "seg.dcm"
    assert main(["segment-volume", str(dicom_series.folder), "--box3d", "9,9,1,22,22,9", "-o", str(out),
                 "--label", "ball", "--no-progress"]) == 0
    seg = hd.seg.segread(out)
    assert seg.FrameOfReferenceUID == dicom_series.frame_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dicom_series.series_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["ball"]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=dicom_series.sop_uids, combine_segments=True,
                                             relabel=False)
    truth = ball((10, 32, 32), (5, 16, 15), 4)
    assert dice(back, truth) > 0.85
    volume = read_volume(dicom_series.folder)
    frames = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for item in seg.PerFrameFunctionalGroupsSequence}
    assert frames == {dicom_series.sop_uids[k] for k in range(10) if back[k].any()}
    assert volume.shape == back.shape


def test_dicom_series_to_rtstruct(tmp_path, dicom_series):
    import pydicom

    from medsam.io.rtstruct import read_rtstruct_labels
    from medsam.io.volume import read_volume

    out = tmp_path / "out"
    assert main(["segment-volume", str(dicom_series.folder), "--slice", "5", "--box", "9,9,22,22", "-o", str(out),
                 "--format", "rtstruct", "--label", "ball", "--no-progress"]) == 0
    (path,) = out.iterdir()
    assert path.name == "series_rtstruct.dcm"
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT"
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == dicom_series.frame_uid
    assert ds.StructureSetROISequence[0].ROIName == "ball"
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ds.ROIContourSequence[0].ContourSequence}
    assert referenced <= set(dicom_series.sop_uids)
    back, names = read_rtstruct_labels(path, read_volume(dicom_series.folder))
    assert names == {1: "ball"} and dice(back, ball((10, 32, 32), (5, 16, 15), 4)) > 0.8


def _expect_error(args: list[str], root: Path, capsys, *messages: str) -> None:
    before = listing(root)
    assert main(args + (["--no-progress"] if args[0] != "segment" else [])) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    assert listing(root) == before  # nothing written, no temporary left


@pytest.mark.parametrize(
    "prompt, messages",
    [
        (["--box3d", "100,100,2,140,140,8"], ["outside the image"]),
        (["--box3d", "16,12,15,32,28,30"], ["reaches beyond", "0..19"]),
        (["--slice", "25", "--box", "16,12,32,28"], ["slice 25 is out of range", "20 slices"]),
        (["--slice", "10", "--box", "1,30,8,38"], ["found nothing", "key slice 10"]),
        (["--box", "16,12,32,28"], ["need --slice"]),
        (["--box3d", "16,12,4,32,28"], ["exactly 6"]),
        ([], ["no prompt"]),
    ],
)
def test_bad_prompts(tmp_path, nifti, capsys, prompt, messages):
    _expect_error(["segment-volume", str(nifti), "-o", str(tmp_path / "out.nii.gz")] + prompt, tmp_path, capsys, *messages)


def test_bad_inputs(tmp_path, capsys):
    import SimpleITK as sitk
    from PIL import Image

    box = ["--box3d", "1,1,0,4,4,1"]
    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    _expect_error(["segment-volume", str(png), "-o", str(tmp_path / "a.nii.gz")] + box, tmp_path, capsys, "2D image")
    four = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(four))
    _expect_error(["segment-volume", str(four), "-o", str(tmp_path / "b.nii.gz")] + box, tmp_path, capsys, "4D")
    empty = tmp_path / "study"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    _expect_error(["segment-volume", str(empty), "-o", str(tmp_path / "c.nii.gz")] + box, tmp_path, capsys, "no DICOM")
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 99, (6, 32, 32)).astype(np.int16)), str(good))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _expect_error(["segment-volume", str(cut), "-o", str(tmp_path / "d.nii.gz")] + box, tmp_path, capsys, "damaged gzip")
    with gzip.open(tmp_path / "junk.nii.gz", "wb") as fh:
        fh.write(b"not a nifti header at all" * 40)
    _expect_error(["segment-volume", str(tmp_path / "junk.nii.gz"), "-o", str(tmp_path / "e.nii.gz")] + box, tmp_path,
                  capsys, "junk.nii.gz")


def test_output_problems_are_found_before_the_model_runs(tmp_path, nifti, capsys):
    box = ["--box3d", "16,12,4,32,28,16"]
    exists = tmp_path / "exists.nii.gz"
    exists.write_bytes(b"keep me")
    _expect_error(["segment-volume", str(nifti), "-o", str(exists)] + box, tmp_path, capsys, "already exists")
    assert exists.read_bytes() == b"keep me"
    _expect_error(["segment-volume", str(nifti), "-o", str(tmp_path / "x.dcm")] + box, tmp_path, capsys,
                  "DICOM source")
    _expect_error(["segment-volume", str(nifti), "-o", str(tmp_path / "x.png")] + box, tmp_path, capsys,
                  "unknown format")
    _expect_error(["segment-volume", str(nifti), "-o", str(tmp_path / "x.nrrd"), "--format", "nifti"] + box, tmp_path,
                  capsys, "--format is nifti")


def test_segment_video_cli(tmp_path, capsys):
    from medsam.io.video import read_mask_frames, write_video

    frames = np.full((8, 40, 48, 3), 25, np.uint8)
    yy, xx = np.mgrid[:40, :48]
    for t in range(1, 7):
        frames[t][(xx - 12 - 3 * t) ** 2 + (yy - 20) ** 2 <= 36] = 220
        frames[t, 0, : t + 1] = 26
    clip = write_video(frames, tmp_path / "clip.gif", fps=6)
    masks, overlay = tmp_path / "masks", tmp_path / "overlay.gif"
    assert main(["segment-video", str(clip), "--frame", "3", "--box", "12,12,30,28", "-o", str(masks),
                 "--overlay-video", str(overlay), "--no-progress"]) == 0
    back = read_mask_frames(masks)
    assert back.shape == (8, 40, 48) and back[1].any() and back[6].any() and not back[0].any() and not back[7].any()
    assert overlay.exists()
    assert "object 1: frames 1..6" in capsys.readouterr().out
    _expect_error(["segment-video", str(clip), "--frame", "9", "--box", "12,12,30,28", "-o", str(tmp_path / "m2")],
                  tmp_path, capsys, "out of range")


def test_segment_accepts_cvpr24_npz_files_and_folders(tmp_path, capsys):
    cases = tmp_path / "imgs"
    cases.mkdir()
    volume = np.where(ball(), 200, 30).astype(np.uint8)
    for k in range(SHAPE[0]):
        volume[k, 0, : k + 1] = 31
    np.savez_compressed(cases / "3DBox_CT_0001.npz", imgs=volume, boxes=np.array([[16, 12, 4, 32, 28, 16]]),
                        spacing=np.array([0.7, 0.9, 2.5]))
    image = np.full((50, 60, 3), 20, np.uint8)
    image[10:30, 15:40] = 220
    image[35:45, 45:55] = 180
    np.savez_compressed(cases / "2DBox_US_0001.npz", imgs=image, boxes=np.array([[13, 8, 42, 32], [43, 33, 57, 47]]))
    out = tmp_path / "segs"
    assert main(["segment", str(cases), "-o", str(out), "--mode", "reference"]) == 0, capsys.readouterr().err
    assert listing(out) == ["2DBox_US_0001.npz", "3DBox_CT_0001.npz"]
    segs3d = np.load(out / "3DBox_CT_0001.npz")["segs"]
    assert segs3d.shape == SHAPE and dice(segs3d, ball()) > 0.85
    segs2d = np.load(out / "2DBox_US_0001.npz")["segs"]
    assert segs2d.shape == (50, 60) and segs2d[20, 25] == 1 and segs2d[40, 50] == 2
    single = tmp_path / "one"
    assert main(["segment", str(cases / "3DBox_CT_0001.npz"), "-o", str(single)]) == 0
    assert listing(single) == ["3DBox_CT_0001.npz"]
    _expect_error(["segment", str(cases), "-o", str(out)], tmp_path, capsys, "already exists")
