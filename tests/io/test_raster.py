"""2D raster IO: bit depths and modes in, masks and overlays out, atomic writes and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsam.errors import InputError, OutputError
from medsam.io.raster import read_image, render_overlay, write_mask_png, write_overlay_png


@pytest.mark.parametrize(
    "array, mode",
    [
        (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20, "I;16"),
        (np.arange(64 * 48, dtype=np.uint8).reshape(48, 64), "L"),
        (np.dstack([np.arange(48 * 64).reshape(48, 64) % 256] * 4).astype(np.uint8), "RGBA"),
    ],
)
def test_png_round_trip_keeps_depth(tmp_path, array, mode):
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    back = read_image(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_tiff_float_and_jpeg(tmp_path):
    values = np.linspace(-1000, 2000, 40 * 30, dtype=np.float32).reshape(30, 40)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), values)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8) + 77).save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (20, 30, 3)


def test_unreadable_and_truncated_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"hello, not an image")
    with pytest.raises(InputError, match="junk.png"):
        read_image(junk)
    full = tmp_path / "full.png"
    Image.fromarray((np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8)).save(full)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[:3000])
    with pytest.raises(InputError, match="truncated"):
        read_image(truncated)


def test_mask_pngs(tmp_path):
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    write_mask_png(mask, tmp_path / "m.png")
    assert set(np.unique(np.asarray(Image.open(tmp_path / "m.png")))) == {0, 255}
    labels = np.zeros((10, 12), np.uint16)
    labels[0, 0], labels[5, 5] = 3, 300
    write_mask_png(labels, tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), labels)
    with pytest.raises(OutputError, match="exists"):
        write_mask_png(mask, tmp_path / "m.png")
    write_mask_png(mask, tmp_path / "m.png", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "m.png"]  # no temporary leftovers


def test_overlay_tints_objects_in_distinct_colours(tmp_path):
    image = np.full((40, 40), 100, np.uint8)
    labels = np.zeros((40, 40), np.uint8)
    labels[5:15, 5:15] = 1
    labels[25:35, 25:35] = 2
    rgb = render_overlay(image, labels, boxes=[[5, 5, 14, 14], None], points=[(30, 30, 1)])
    assert rgb.shape == (40, 40, 3)
    assert tuple(rgb[10, 10]) != tuple(rgb[1, 38]) and tuple(rgb[10, 10]) != tuple(rgb[28, 33])
    write_overlay_png(image, labels, tmp_path / "o.png")
    with pytest.raises(InputError, match="differs"):
        render_overlay(image, labels[:10])


def test_outputs_get_the_usual_permissions(tmp_path):
    import os

    path = write_mask_png(np.ones((4, 4), bool), tmp_path / "perm.png")
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)
