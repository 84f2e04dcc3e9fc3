"""`medsam everything` end to end with the tiny model, and its refusals of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsam.cli import main
from medsam.inference.amg.rle import Rle, decode_rle

LOOSE = ["--model", "tiny_lite", "--grid", "4", "--pred-iou", "0", "--stability", "0", "--no-skip-background", "--min-area", "0"]


@pytest.fixture
def image_file(tmp_path, disc_image):
    # a textured frame: no background is found, so the tiny model's image-wide masks are not filtered out
    image = disc_image.copy()
    noise = np.random.default_rng(0).integers(0, 255, image.shape).astype(np.uint8)
    frame = np.ones(image.shape, bool)
    frame[4:-4, 4:-4] = False
    image[frame] = noise[frame]
    path = tmp_path / "disc.png"
    Image.fromarray(image).save(path)
    return path


def test_everything_writes_labels_overlay_and_coco(tmp_path, image_file, capsys):
    out, overlay, coco = tmp_path / "o" / "labels.png", tmp_path / "o" / "overlay.png", tmp_path / "o" / "p.json"
    rc = main(["everything", str(image_file), "-o", str(out), "--overlay", str(overlay), "--json", str(coco), *LOOSE])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "objects in disc.png" in printed and "wrote" in printed
    labels = np.asarray(Image.open(out))
    assert labels.shape == (96, 128) and labels.dtype == np.uint8
    doc = json.loads(coco.read_text())
    anns = doc["annotations"]
    assert doc["images"] == [{"id": 1, "file_name": "disc.png", "height": 96, "width": 128}]
    assert len(anns) >= 1 and labels.max() == len(anns)
    for i, ann in enumerate(anns):
        mask = decode_rle(Rle.from_coco(ann["segmentation"]))
        assert mask.sum() == ann["area"]
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert {"score", "predicted_iou", "stability_score", "point_coords"} <= set(ann)
        assert np.all((labels == i + 1) <= mask)  # a label only where its mask is
    assert np.asarray(Image.open(overlay)).shape == (96, 128, 3)


def test_label_map_is_16_bit_beyond_255_objects():
    from medsam.inference.amg.export import label_map
    from medsam.inference.everything import InstanceMask

    def inst(i):
        m = np.zeros((20, 20), bool)
        m.flat[i] = True
        return InstanceMask(m, (0, 0, 0, 0), 1, 1.0, 1.0, (0.0, 0.0), None, (0, 0, 20, 20))

    assert label_map([inst(i) for i in range(255)], (20, 20)).dtype == np.uint8
    labels = label_map([inst(i) for i in range(300)], (20, 20))
    assert labels.dtype == np.uint16 and labels.max() == 300


def _no_outputs(tmp_path, keep=("disc.png",)):
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "0"], "grid 0"),
        (["--grid", "5000"], "from 1 to 128"),
        (["--points-per-batch", "0"], "points_per_batch"),
        (["--pred-iou", "2"], "pred_iou_thresh"),
        (["--slice", "3"], "--slice is for volumes"),
        (["--anchors", "2:x"], "SIZE[:STRIDE[:r]]"),
        (["--model", "nope"], "unknown model"),
    ],
)
def test_bad_options_exit_2_without_output(tmp_path, image_file, capsys, extra, message):
    out = tmp_path / "labels.png"
    args = ["everything", str(image_file), "-o", str(out), "--overlay", str(tmp_path / "ov.png")] + extra
    if "--model" not in extra:
        args += ["--model", "tiny_lite"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert _no_outputs(tmp_path)


def test_unreadable_empty_and_flat_images_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(flat)
    missing = tmp_path / "missing.png"
    for path, message in ((bad, "cannot be decoded"), (flat, "same value"), (missing, "does not exist")):
        out = tmp_path / "labels.png"
        assert main(["everything", str(path), "-o", str(out), "--model", "tiny_lite"]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "flat.png"]


def test_existing_output_is_not_overwritten_unasked(tmp_path, image_file, capsys):
    out = tmp_path / "labels.png"
    out.write_bytes(b"keep me")
    assert main(["everything", str(image_file), "-o", str(out), "--model", "tiny_lite"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["everything", str(image_file), "-o", str(out), "--json", str(out), "--model", "tiny_lite"]) == 2
    assert "different files" in capsys.readouterr().err


def test_volume_slice(tmp_path, capsys):
    from medsam.io.npz import write_npz_segs  # noqa: F401  (npz IO present)

    vol = np.zeros((5, 48, 48), np.uint8)
    vol[:, 10:38, 12:36] = 150
    vol[2, 20:28, 20:28] = 250
    path = tmp_path / "vol.npz"
    np.savez(path, imgs=vol, gts=np.zeros_like(vol), spacing=np.array([1.0, 1.0, 2.0]))
    out = tmp_path / "labels.png"
    assert main(["everything", str(path), "--slice", "9", "-o", str(out), "--model", "tiny_lite"]) == 2
    assert "has 5 slices" in capsys.readouterr().err
    assert main(["everything", str(path), "--slice", "2", "-o", str(out), *LOOSE]) == 0
    assert "vol.npz#z=2" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (48, 48)
