"""Key boxes and 3D clicks through segment_volume and `medsam segment-volume`: given in stored indices, run in the
canonical view, labels back on the stored grid (oracle model: it segments the bright voxels inside the box)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import PromptError
from medsam.inference.interactive3d import Click3D, KeyBox
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import PropagationConfig
from medsam.inference.segment3d import segment_volume
from medsam.types import Box, Volume

from oracle_model import OracleModel

SHAPE = (16, 64, 64)
CONFIG = PropagationConfig(min_area_fraction=0.0, max_intensity_shift=None)


def two_tubes_and_a_leak() -> tuple[np.ndarray, np.ndarray]:
    """uint8 volume (stored as RAS: diag(-1, -1, 1)) with two bright tubes, slices 3..12, and a bright leak blob
    on slices 13..15 above the first tube; and the (z, y, x) truth of the tubes."""
    z, y, x = np.indices(SHAPE)
    truth = ((z >= 3) & (z <= 12) & (((y - 30) ** 2 + (x - 16) ** 2 <= 25) | ((y - 30) ** 2 + (x - 46) ** 2 <= 25)))
    leak = (z >= 13) & ((y - 30) ** 2 + (x - 16) ** 2 <= 9)
    volume = np.where(truth | leak, 200, 30).astype(np.uint8)
    volume[:, 0, :5] = 31
    for k in range(SHAPE[0]):
        volume[k, 63, : k + 1] = 31
    return volume, truth


def box_trained_oracle() -> Predictor:
    """The oracle with LiteMedSAM's refinement (box_update): clicks act on the box's logits."""
    from dataclasses import replace

    model = OracleModel()
    model.spec = replace(model.spec, refinement="box_update")
    return Predictor(model)


def ras(array: np.ndarray) -> Volume:
    return Volume(array, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]), None, {"source_path": "ras"})


@pytest.mark.parametrize("orientation", ["canonical", "stored"])
def test_key_boxes_make_parts_of_one_label_and_clicks_land_where_given(orientation):
    volume, truth = two_tubes_and_a_leak()
    predictor = box_trained_oracle()
    keys = [(KeyBox(8, Box(10, 24, 22, 36)), None), (KeyBox(8, Box(40, 24, 52, 36)), None)]
    done = segment_volume(predictor, ras(volume), [], window="passthrough", config=CONFIG, orientation=orientation,
                          key_boxes=keys)
    labels = done.labels
    assert set(np.unique(labels)) == {0, 1}
    assert (labels[truth] == 1).all()  # both tubes, one label
    assert labels[13:, 30, 16].all()  # and the chain ran into the leak above the first tube
    before = labels.copy()
    # a negative click on the leak in stored indices [z, y, x] ends the first tube's part there
    fixed = segment_volume(predictor, ras(volume), [], window="passthrough", config=CONFIG, orientation=orientation,
                           key_boxes=keys, clicks=[Click3D(14, 30, 16, 0)])
    assert not fixed.labels[14:].any() and fixed.labels[13, 30, 16] == before[13, 30, 16]
    assert np.array_equal(fixed.labels[:13], before[:13])
    assert [step.kind for step in fixed.interactions] == ["add", "click"]


def test_bad_clicks_and_key_boxes_are_clear():
    volume, _ = two_tubes_and_a_leak()
    predictor = box_trained_oracle()
    keys = [(KeyBox(8, Box(10, 24, 22, 36)), None)]
    with pytest.raises(PromptError, match="outside the volume"):
        segment_volume(predictor, ras(volume), [], window="passthrough", key_boxes=keys, clicks=[Click3D(16, 3, 3, 1)])
    with pytest.raises(PromptError, match="slices 0..15"):
        segment_volume(predictor, ras(volume), [], window="passthrough", key_boxes=[(KeyBox(20, Box(1, 1, 5, 5)), None)])
    with pytest.raises(PromptError, match="default propagation mode"):
        segment_volume(predictor, ras(volume), [], window="passthrough", key_boxes=keys,
                       config=PropagationConfig(mode="reference"))
