"""`segment-volume` / `segment-video` / `segment` with SAM 2 family models: the memory predictor end to end on
the tiny random SAM 2, and the checkpoint mistakes people make (missing file, a LiteMedSAM or SAM 1 file, a SAM 2
file of another size), each a clear error with nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam.cli import main


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def ct(tmp_path) -> Path:
    import SimpleITK as sitk

    z, y, x = np.indices((6, 40, 48))
    hu = np.where((z - 3) ** 2 + (y - 20) ** 2 + (x - 24) ** 2 <= 36, 60, -1000).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.8, 2.0))
    path = tmp_path / "in" / "ct.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(image, str(path))
    return path


def test_segment_volume_with_a_memory_model(tmp_path, ct, capsys):
    import SimpleITK as sitk

    out = tmp_path / "out" / "seg.nii.gz"
    rc = main(["segment-volume", str(ct), "--slice", "3", "--box", "16,12,32,28", "-o", str(out), "--model", "tiny_sam2",
               "--device", "cpu", "--no-progress"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == (48, 40, 6) and result.GetSpacing() == pytest.approx((0.8, 0.8, 2.0))
    assert "decoded 7" in text.out  # 6 slices, the key slice in both sweeps (identical slices are encoded once)


def test_segment_video_with_a_memory_model(tmp_path, capsys):
    from medsam.io.video import read_mask_frames, write_video

    frames = np.full((5, 32, 40, 3), 25, np.uint8)
    for t in range(5):  # a moving square (a GIF merges identical frames)
        frames[t, 10:20, 8 + t : 20 + t] = 200
    clip = write_video(frames, tmp_path / "clip.gif", fps=5)
    masks = tmp_path / "masks.npz"
    rc = main(["segment-video", str(clip), "--frame", "2", "--box", "10,10,22,20", "--box", "24,4,36,14", "-o",
               str(masks), "--model", "tiny_sam2", "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with np.load(masks) as data:
        assert data["segs"].shape == (5, 32, 40)
    before = listing(tmp_path)
    assert main(["segment-video", str(clip), "--frame", "7", "--box", "10,10,22,20", "-o", str(tmp_path / "m2"),
                 "--model", "tiny_sam2", "--device", "cpu", "--no-progress"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert listing(tmp_path) == before


def _expect_error(args: list[str], root: Path, capsys, *messages: str) -> None:
    before = listing(root)
    assert main(args) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    assert listing(root) == before


def test_missing_checkpoint_names_the_file_and_where_to_get_it(tmp_path, ct, capsys):
    _expect_error(["segment-volume", str(ct), "--slice", "3", "--box", "16,12,32,28", "-o", str(tmp_path / "a.nii.gz"),
                   "--model", "medsam2", "--checkpoint", str(tmp_path / "MedSAM2_latest.pt"), "--no-progress"],
                  tmp_path, capsys, "MedSAM2_latest.pt", "does not exist", "wanglab/MedSAM2", "Nothing is downloaded")
    _expect_error(["segment-volume", str(ct), "--slice", "3", "--box", "16,12,32,28", "-o", str(tmp_path / "a.nii.gz"),
                   "--model", "sam2.1_hiera_t", "--no-progress"], tmp_path, capsys, "sam2.1_hiera_tiny.pt", "--checkpoint")


def test_a_litemedsam_file_is_not_a_sam2_checkpoint(tmp_path, ct, capsys):
    from medsam.models.registry import build_model

    lite = tmp_path / "lite_medsam.pth"
    torch.save(build_model("tiny_lite", device="cpu").state_dict(), lite)
    _expect_error(["segment-volume", str(ct), "--slice", "3", "--box", "16,12,32,28", "-o", str(tmp_path / "a.nii.gz"),
                   "--model", "medsam2", "--checkpoint", str(lite), "--no-progress"],
                  tmp_path, capsys, "not a SAM 2 checkpoint", "TinyViT", "lite_medsam.pth")


def test_a_sam2_file_of_another_size_is_named(tmp_path, ct, capsys):
    from medsam.models.registry import build_model

    small = tmp_path / "tiny_sam2.pt"
    torch.save({"model": build_model("tiny_sam2", device="cpu").state_dict()}, small)
    _expect_error(["segment-video", str(ct), "--frame", "1", "--box", "1,1,5,5", "-o", str(tmp_path / "m"),
                   "--model", "sam2.1_hiera_t", "--checkpoint", str(small), "--no-progress"],
                  tmp_path, capsys, "does not fit model 'sam2.1_hiera_t'", "SAM 2", "Hiera of width 8")


def test_hiera_sizes_are_told_apart():
    from medsam.errors import CheckpointError
    from medsam.models.checkpoints import LoadedCheckpoint, load_into
    from medsam.models.registry import build_architecture, get_spec

    with torch.device("meta"):
        small = build_architecture(get_spec("sam2.1_hiera_s")).state_dict()
        tiny = build_architecture(get_spec("sam2.1_hiera_t"))
    tiny.spec = get_spec("sam2.1_hiera_t")
    with pytest.raises(CheckpointError) as err:
        load_into(tiny, LoadedCheckpoint(small, Path("sam2.1_hiera_small.pt"), "torch"), model_name="sam2.1_hiera_t")
    message = str(err.value)
    assert "unexpected keys" in message and "Hiera-S (--model sam2.1_hiera_s)" in message


def test_2d_commands_refuse_memory_models():
    """Checked on the shared helper itself (other test modules swap the CLI modules' own reference to it)."""
    from argparse import Namespace

    from medsam.cli.common import load_predictor
    from medsam.errors import MedsamError

    for command in ("segment", "everything", "serve"):
        with pytest.raises(MedsamError, match="SAM 2 memory model.*segment-volume"):
            load_predictor(Namespace(command=command, model="medsam2", checkpoint=None, device="cpu"))
