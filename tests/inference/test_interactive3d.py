"""Corrective interaction in 3D with the oracle model (it segments the bright pixels inside the prompt box, so
every expected mask is exact): re-propagation rules, fixed slices, parts, undo, state round trips, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import PromptError
from medsam.inference.interactive3d import Click3D, InteractiveVolume, KeyBox
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import ObjectPrompt, PropagationConfig, segment_stack
from medsam.types import Box, Box3D

from oracle_model import OracleModel

SHAPE = (24, 64, 64)  # slices at the model's input size: masks are exact
CONFIG = PropagationConfig(min_area_fraction=0.0, max_intensity_shift=None, batch_size=2)


def ball(volume_labels: np.ndarray, centre, radius, value=1) -> None:
    z, y, x = np.indices(volume_labels.shape)
    cz, cy, cx = centre
    volume_labels[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = value


def tube(volume_labels: np.ndarray, z_range, centre_yx, radius, value=1) -> None:
    _, y, x = np.indices(volume_labels.shape)
    z0, z1 = z_range
    disc = (y - centre_yx[0]) ** 2 + (x - centre_yx[1]) ** 2 <= radius**2
    volume_labels[z0 : z1 + 1][disc[z0 : z1 + 1]] = value


def image_of(truth: np.ndarray) -> np.ndarray:
    volume = np.where(truth > 0, 200, 30).astype(np.uint8)
    for k in range(truth.shape[0]):
        volume[k, 0, : k + 1] = 31  # no two slices are the same image
    return volume


def z_span(mask: np.ndarray) -> tuple[int, int] | None:
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def session(volume, **kwargs) -> tuple[OracleModel, InteractiveVolume]:
    model = OracleModel()
    kwargs.setdefault("strategy", "box_update")  # as for LiteMedSAM (tiny_lite, which the oracle mimics, says sam)
    return model, InteractiveVolume(Predictor(model), volume, config=kwargs.pop("config", CONFIG), **kwargs)


def test_a_new_object_is_what_segment_stack_gives():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (12, 30, 30), 7)
    volume = image_of(truth)
    _, iv = session(volume)
    box = Box3D(20, 20, 6, 40, 40, 18)
    result = iv.add_object(box3d=box)
    expected = segment_stack(Predictor(OracleModel()), volume, [ObjectPrompt.from_box3d(box)], CONFIG, progress=False)
    assert np.array_equal(iv.labels(), expected.labels)
    assert result.label == 1 and set(result.changed_slices) == set(range(6, 19))
    assert iv.key_slices(1) == [12]


def test_negative_click_on_a_leak_ends_the_object_and_removes_the_chain_beyond():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (8, 30, 30), 7)  # the object: slices 1..15
    leak = np.zeros(SHAPE, np.uint8)
    tube(leak, (16, 21), (30, 30), 4)  # something else, bright too, right above it
    volume = image_of(truth | leak)
    _, iv = session(volume)
    iv.add_object(key_boxes=[KeyBox(8, Box(21, 21, 39, 39))])
    before = iv.object_mask(1)
    assert z_span(before) == (1, 21)  # the propagation ran into the leak
    result = iv.click(Click3D(z=19, y=30, x=30, label=0))
    after = iv.object_mask(1)
    assert not after[19].any()  # the clicked slice lost the leak
    assert not after[20:].any()  # the chain beyond it came from there: removed
    assert np.array_equal(after[:19], before[:19])  # towards the key slice nothing changed
    assert set(result.changed_slices) == {19, 20, 21}
    assert iv.key_slices(1) == [8, 19]
    iv.undo()
    assert np.array_equal(iv.object_mask(1), before)


def test_a_click_never_changes_an_accepted_or_edited_slice():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (12, 24, 24), 7)
    other = np.zeros(SHAPE, np.uint8)
    tube(other, (3, 21), (24, 44), 4)  # a bright neighbour the positive click will pull in
    volume = image_of(truth | other)
    _, iv = session(volume, agreement=0.99)
    iv.add_object(key_boxes=[KeyBox(12, Box(15, 15, 33, 33))])
    iv.accept(1, 15)
    drawn = np.zeros(SHAPE[1:], bool)
    drawn[20:25, 20:25] = True
    iv.edit(1, 8, drawn)
    before = iv.object_mask(1)
    result = iv.click(Click3D(z=12, y=24, x=44, label=1))
    after = iv.object_mask(1)
    assert after[12, 24, 44] and after[13, 24, 44]  # the click and its re-propagation took the neighbour in
    assert 15 not in result.changed_slices and 8 not in result.changed_slices
    assert np.array_equal(after[15], before[15]) and np.array_equal(after[8], drawn)
    assert np.array_equal(after[16:], before[16:])  # beyond the accepted slice nothing was touched
    assert np.array_equal(after[:8], before[:8])
    assert iv.fixed_slices(1) == [8, 15]
    # a negative click next to the accepted slice does not reach it either
    iv.click(Click3D(z=14, y=24, x=44, label=0))
    assert np.array_equal(iv.object_mask(1)[15], before[15])


def test_agreement_stops_the_re_propagation_at_once():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (12, 30, 30), 7)
    model, iv = session(image_of(truth))
    iv.add_object(key_boxes=[KeyBox(12, Box(21, 21, 39, 39))])
    encoded = model.encoded_images
    result = iv.click(Click3D(z=10, y=30, x=30, label=1))  # inside the mask already: nothing to change
    assert result.changed_slices == ()
    assert result.slices_decoded == 3  # the slice itself, then one slice each way that agrees
    assert model.encoded_images == encoded  # every slice was kept encoded


def test_a_positive_click_beyond_a_3d_box_extends_the_object():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (10, 30, 30), 7)  # slices 3..17
    _, iv = session(image_of(truth))
    iv.add_object(box3d=Box3D(20, 20, 7, 40, 40, 12))  # the box is short at the top
    assert z_span(iv.object_mask(1)) == (7, 12)
    iv.click(Click3D(z=15, y=30, x=30, label=1))
    mask = iv.object_mask(1)
    assert mask[13].any() and mask[14].any() and mask[15].any()  # filled down to the existing masks
    assert z_span(mask) == (7, 17)  # and beyond the click until the object ends
    assert not mask[:7].any()  # the lower limit still holds


def test_parts_are_propagated_on_their_own_and_joined_in_one_label():
    truth = np.zeros(SHAPE, np.uint8)
    tube(truth, (4, 9), (30, 16), 5)
    tube(truth, (6, 18), (30, 46), 5)
    volume = image_of(truth)
    _, iv = session(volume)
    iv.add_object(key_boxes=[KeyBox(7, Box(9, 23, 23, 37)), KeyBox(7, Box(39, 23, 53, 37)), KeyBox(16, Box(38, 22, 54, 38))])
    mask = iv.object_mask(1)
    assert z_span(mask[:, :, :32]) == (4, 9) and z_span(mask[:, :, 32:]) == (6, 18)
    assert np.array_equal(mask, truth > 0)
    state = iv.object_state(1)
    assert [sorted(int(z) for z in p["anchors"]) for p in state["parts"]] == [[7], [7, 16]]


def test_state_round_trip_continues_as_in_one_process():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (8, 30, 30), 7)
    leak = np.zeros(SHAPE, np.uint8)
    tube(leak, (16, 21), (30, 30), 4)
    volume = image_of(truth | leak)
    _, first = session(volume)
    first.add_object(box3d=Box3D(20, 20, 0, 40, 40, 23))
    first.click(Click3D(z=19, y=30, x=30, label=0))
    mask, state = first.object_mask(1), first.object_state(1)
    first.click(Click3D(z=17, y=30, x=30, label=0))
    _, second = session(volume)
    second.restore_object(mask, state)
    assert np.array_equal(second.labels(), (mask * 1).astype(np.uint8))
    second.click(Click3D(z=17, y=30, x=30, label=0))
    assert np.array_equal(second.labels(), first.labels())


def test_errors_are_clear():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (12, 30, 30), 7)
    _, iv = session(image_of(truth))
    with pytest.raises(PromptError, match="add one"):
        iv.click(Click3D(z=12, y=30, x=30, label=1))
    iv.add_object(key_boxes=[KeyBox(12, Box(21, 21, 39, 39))])
    with pytest.raises(PromptError, match="out of range"):
        iv.click(Click3D(z=24, y=30, x=30, label=1))
    with pytest.raises(PromptError, match="outside the slice"):
        iv.click(Click3D(z=3, y=64, x=30, label=1))
    with pytest.raises(PromptError, match="object 5 does not exist"):
        iv.click(Click3D(z=3, y=3, x=3, label=1, object_label=5))
    with pytest.raises(PromptError, match="label must be 1"):
        Click3D(1, 2, 3, 2)
    with pytest.raises(PromptError, match="z,y,x,1"):
        Click3D.parse("1,2,3")
    with pytest.raises(PromptError, match="Z:x0,y0,x1,y1"):
        KeyBox.parse("1,2,3,4")
    assert KeyBox.parse("4:1,2,30,40:2") == (KeyBox(4, Box(1, 2, 30, 40)), 2)
    assert Click3D.parse("4,10,12,0,3") == Click3D(4, 10.0, 12.0, 0, 3)
    with pytest.raises(PromptError, match="default propagation mode"):
        InteractiveVolume(Predictor(OracleModel()), image_of(truth), config=PropagationConfig(mode="reference"))
    with pytest.raises(PromptError, match="nothing to undo"):
        InteractiveVolume(Predictor(OracleModel()), image_of(truth)).undo()
    labels = iv.labels().copy()
    with pytest.raises(PromptError):
        iv.set_box(1, 30, Box(1, 1, 5, 5))
    assert np.array_equal(iv.labels(), labels)  # a refused interaction changes nothing


def test_a_propagation_prompt_with_clicks_is_one_part():
    from medsam.types import Points

    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (12, 30, 30), 7)
    _, iv = session(image_of(truth))
    prompt = ObjectPrompt(z=12, box=Box(21, 21, 39, 39), points=Points(np.array([[30.0, 30.0]]), np.array([1])))
    iv.add_object(prompt=prompt)
    assert iv.key_slices(1) == [12] and iv.object_state(1)["parts"][0]["anchors"]["12"]["clicks"] == [[30.0, 30.0, 1]]
    assert z_span(iv.object_mask(1)) == (5, 19)
    with pytest.raises(PromptError, match="first click must be positive"):
        iv.add_object(prompt=ObjectPrompt(z=12, points=Points(np.array([[3.0, 3.0]]), np.array([0]))))
