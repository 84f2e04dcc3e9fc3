"""The `medsam` command end to end (tiny model for logic, real weights once)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsam.cli import main


@pytest.fixture
def image_file(tmp_path, disc_image):
    path = tmp_path / "disc.png"
    Image.fromarray(disc_image).save(path)
    return path


def test_segment_writes_mask_and_overlay(tmp_path, image_file, capsys):
    out, overlay = tmp_path / "out" / "mask.png", tmp_path / "out" / "overlay.png"
    rc = main(["segment", str(image_file), "--box", "40,20,80,60", "-o", str(out), "--overlay", str(overlay), "--model", "tiny_lite"])
    assert rc == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (96, 128) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(overlay)).shape == (96, 128, 3)
    assert "object 1" in capsys.readouterr().out


def test_several_boxes_give_a_label_map(tmp_path, image_file):
    out = tmp_path / "labels.png"
    rc = main(["segment", str(image_file), "--box", "40,20,80,60", "--box", "0,0,30,30", "-o", str(out), "--model", "tiny_sam"])
    assert rc == 0
    assert set(np.unique(np.asarray(Image.open(out)))) <= {0, 1, 2}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "1,2,3"], "exactly 4"),
        (["--box", "80,20,40,60"], "inverted"),
        (["--box", "500,500,600,600"], "outside"),
        (["--model", "nope", "--box", "1,1,5,5"], "unknown model"),
        (["--point", "10,10,7"], "labels must be 1"),
        ([], "no prompt"),
    ],
)
def test_bad_input_exits_2_without_output(tmp_path, image_file, capsys, extra, message):
    out = tmp_path / "mask.png"
    args = ["segment", str(image_file), "-o", str(out)] + extra
    if "--model" not in extra:
        args += ["--model", "tiny_lite"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["disc.png"]


def test_unreadable_and_blank_images(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["segment", str(bad), "--box", "1,1,5,5", "-o", str(tmp_path / "m.png"), "--model", "tiny_lite"]) == 2
    assert "bad.png" in capsys.readouterr().err
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(blank)
    assert main(["segment", str(blank), "--box", "1,1,5,5", "-o", str(tmp_path / "m.png"), "--model", "tiny_lite"]) == 2
    assert "same value" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_existing_output_is_not_overwritten(tmp_path, image_file, capsys):
    out = tmp_path / "mask.png"
    out.write_bytes(b"keep me")
    assert main(["segment", str(image_file), "--box", "40,20,80,60", "-o", str(out), "--model", "tiny_lite"]) == 2
    assert out.read_bytes() == b"keep me"
    assert main(["segment", str(image_file), "--box", "40,20,80,60", "-o", str(out), "--model", "tiny_lite", "--overwrite"]) == 0


def test_models_command(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lite_medsam", "medsam_vit_b", "sam_vit_h", "tiny_lite"):
        assert name in out
    assert "641.09M" in out  # ViT-H parameter count, from shapes only


@pytest.mark.slow
def test_readme_main_job_on_the_shipped_example(tmp_path, lite_medsam):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "ct_abdomen_amos_0006_90.png"
    out = tmp_path / "liver.png"
    assert main(["segment", str(example), "--box", "97,188,269,355", "-o", str(out), "--device", "cpu"]) == 0
    mask = np.asarray(Image.open(out)) > 0
    shared_mask = Path(__file__).resolve().parents[3] / "shared/data/ct_slices/masks/amos_0006_90_liver_000.png"
    if shared_mask.is_file():
        reference = np.asarray(Image.open(shared_mask)) > 0
        dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
        assert dice > 0.9
    else:
        assert 15000 < mask.sum() < 30000
