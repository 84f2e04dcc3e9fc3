"""The key-slice montage: which slices, the outline colours, and an atomic PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsam.errors import OutputError
from medsam.io.montage import montage_slices, render_montage, write_montage
from medsam.io.raster import colour_for
from medsam.types import Volume


def test_montage_slices_spread_over_the_labelled_range():
    labels = np.zeros((40, 4, 4), np.uint8)
    labels[10:31, 1, 1] = 1
    assert montage_slices(labels, 9) == [10, 12, 15, 18, 20, 22, 25, 28, 30]
    labels[:] = 0
    labels[5, 0, 0] = 1
    assert montage_slices(labels) == [5]
    assert montage_slices(np.zeros((3, 4, 4))) == [0, 1, 2]  # empty labels: the whole volume


def test_montage_outlines_labels_in_their_colours(tmp_path):
    image = np.full((6, 32, 32), 90, np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[1:3, 8:20, 8:20] = 1
    labels[2:5, 22:28, 22:28] = 2
    picture = render_montage(image, labels, tile_size=64)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert colour_for(1) in colours and colour_for(2) in colours
    out = write_montage(image, labels, tmp_path / "montage.png")
    assert Image.open(out).size[0] >= 2 * 32
    with pytest.raises(OutputError, match="exists"):
        write_montage(image, labels, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["montage.png"]


def test_montage_windows_raw_volumes():
    hu = np.full((3, 16, 16), -1000, np.int16)
    hu[:, 4:12, 4:12] = 40
    labels = np.zeros(hu.shape, np.uint8)
    labels[1, 5:10, 5:10] = 1
    picture = render_montage(Volume(hu, modality="CT"), labels)
    assert picture.max() == 255 and picture.dtype == np.uint8
    with pytest.raises(OutputError, match="same"):
        render_montage(hu, labels[:, :8])


def test_montage_names_view_slices_by_their_stored_index():
    """A view with z reversed writes the stored slice number on each tile; only the text differs."""
    image = np.full((6, 32, 32), 90, np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[2, 8:20, 8:20] = 1
    plain = render_montage(image, labels, tile_size=64)
    named = render_montage(image, labels, tile_size=64, slice_names={2: 3})
    same_as_plain = render_montage(image, labels, tile_size=64, slice_names={0: 5})  # slice 2 not renamed
    assert np.array_equal(plain, same_as_plain)
    differs = np.argwhere(np.any(plain != named, axis=2))
    assert differs.size and differs[:, 0].max() < 16  # only the "z=..." label in the tile's top rows
