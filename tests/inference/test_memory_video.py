"""The memory predictor's logic on the tiny random SAM 2 model: prompts, propagation order, results on the
frame's own grid, bounded caches, corrections, early stops, MedSAM2's 3D procedure, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam.errors import MedsamError, PromptError
from medsam.inference.memory_video import (
    KeySlicePrompt,
    MemoryPredictor,
    fill_holes,
    medsam2_segment_volume,
    select_conditioning_frames,
)
from medsam.models.registry import build_model
from medsam.types import Box, Points


@pytest.fixture(scope="module")
def tiny_sam2():
    return build_model("tiny_sam2", device="cpu")


def stack(n: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:h, :w]
    out = rng.integers(10, 40, (n, h, w)).astype(np.uint8)
    for t in range(n):
        out[t][(xx - 20 - t) ** 2 + (yy - 24) ** 2 <= 8**2] = 220
    return out


def test_propagation_visits_frames_in_order_and_answers_on_the_frame_grid(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    frames = stack()
    state = predictor.init_state(frames)
    first = predictor.add_prompt(state, 3, 7, box=Box(10, 14, 30, 34))
    assert first.frame == 3 and first.object_ids == (7,) and first.masks.shape == (1, 48, 64)
    predictor.add_prompt(state, 3, 9, points=Points([[50, 10]], [1]))
    forward = list(predictor.propagate(state))
    backward = list(predictor.propagate(state, reverse=True))
    assert [r.frame for r in forward] == [3, 4, 5, 6, 7]
    assert [r.frame for r in backward] == [3, 2, 1, 0]
    for r in forward + backward:
        assert r.object_ids == (7, 9)
        assert r.masks.shape == (2, 48, 64) and r.masks.dtype == bool
        assert r.logits.shape == (2, 48, 64) and r.logits.dtype == np.float32
        assert np.array_equal(r.masks, r.logits > 0)
        assert r.object_scores.shape == (2,)
        assert r.low_res_logits.shape == (2, 1, 32, 32)
    # each frame was encoded once, whatever the number of objects and sweeps
    assert state.encoded == 8
    # the prompt frame's result is the stored one in both sweeps
    np.testing.assert_array_equal(forward[0].logits, backward[0].logits)


def test_max_frames_and_start(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    state = predictor.init_state(stack())
    predictor.add_prompt(state, 2, 1, box=[10, 14, 30, 34])
    assert [r.frame for r in predictor.propagate(state, max_frames=2)] == [2, 3, 4]
    assert [r.frame for r in predictor.propagate(state, start=4, reverse=True, max_frames=1)] == [4, 3]


def test_closing_the_generator_early_keeps_what_was_tracked(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    state = predictor.init_state(stack())
    predictor.add_prompt(state, 0, 1, box=[10, 14, 30, 34])
    run = predictor.propagate(state)
    frames = [next(run).frame for _ in range(3)]
    run.close()
    assert frames == [0, 1, 2]
    track = state.objects[1]
    assert sorted(track.tracked) == [0, 1, 2] and sorted(track.non_cond) == [1, 2]
    # a correction on a tracked frame, then re-propagation from it in the direction it was reached from
    corrected = predictor.add_prompt(state, 2, 1, points=Points([[22, 24]], [1]))
    assert 2 in track.pending_cond  # a correction becomes a conditioning frame
    again = list(predictor.propagate(state, start=2, max_frames=3))
    assert [r.frame for r in again] == [2, 3, 4, 5]
    np.testing.assert_array_equal(again[0].logits, corrected.logits)  # the correction is kept, not re-tracked
    assert 2 in track.cond and 2 not in track.non_cond and track.cond[2].maskmem is not None
    assert not track.pending_cond


def test_without_corrections_as_cond_a_correction_lasts_until_retracked(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2, corrections_as_cond=False)
    state = predictor.init_state(stack())
    predictor.add_prompt(state, 0, 1, box=[10, 14, 30, 34])
    list(predictor.propagate(state, max_frames=3))
    predictor.add_prompt(state, 2, 1, points=Points([[22, 24]], [1]))
    track = state.objects[1]
    assert 2 in track.pending_non_cond and 2 not in track.pending_cond
    list(predictor.propagate(state, start=2, max_frames=1))
    assert sorted(track.cond) == [0] and 2 in track.non_cond


def test_clicks_add_up_on_a_frame_with_clear_false(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    state = predictor.init_state(stack())
    predictor.add_prompt(state, 1, 1, box=[10, 14, 30, 34])
    predictor.add_prompt(state, 1, 1, points=Points([[20, 24]], [1]), clear=False)
    prompt = state.objects[1].points[1]
    assert prompt.labels.tolist() == [[2, 3, 1]]
    with pytest.raises(PromptError, match="box must come first"):
        predictor.add_prompt(state, 1, 1, box=[10, 14, 30, 34], clear=False)


def test_mask_prompt_is_taken_as_the_frame_s_mask(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    frames = stack(h=128, w=128)
    state = predictor.init_state(frames)
    mask = np.zeros((128, 128), bool)
    mask[30:80, 40:100] = True
    result = predictor.add_prompt(state, 4, 1, mask=mask)
    shown = result.masks[0]
    iou = (shown & mask).sum() / (shown | mask).sum()
    assert iou > 0.95
    assert result.object_scores[0] == pytest.approx(10.0)
    assert [r.frame for r in predictor.propagate(state)] == [4, 5, 6, 7]


def test_feature_cache_is_bounded_and_backed_by_disk(tiny_sam2, tmp_path):
    frames = stack(n=6)
    probe = MemoryPredictor(tiny_sam2)
    one = probe.frame_features(probe.init_state(frames), 0).nbytes
    predictor = MemoryPredictor(tiny_sam2, cache_bytes=2 * one, cache_dir=tmp_path / "features", fill_hole_area=0)
    state = predictor.init_state(frames)
    predictor.add_prompt(state, 0, 1, box=[10, 14, 30, 34])
    first = [r.logits for r in predictor.propagate(state)]
    assert len(state.cache) <= 2 and state.cache.nbytes <= 2 * one
    assert state.encoded == 6 and len(list((tmp_path / "features").glob("*.pt"))) == 6
    # a new predictor (a new process, say) on the same frames reads the features back instead of encoding them
    again = MemoryPredictor(tiny_sam2, cache_bytes=2 * one, cache_dir=tmp_path / "features", fill_hole_area=0)
    state2 = again.init_state(frames)
    again.add_prompt(state2, 0, 1, box=[10, 14, 30, 34])
    second = [r.logits for r in again.propagate(state2)]
    assert state2.encoded == 0 and again.cache.disk_reads >= 6
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_memory_bank_is_bounded(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2, max_memory_frames=14, cache_bytes=8 * 2**20)
    state = predictor.init_state(stack(n=26, h=32, w=32))
    predictor.add_prompt(state, 0, 1, box=[4, 4, 20, 20])
    for result in predictor.propagate(state):
        held = [t for t, o in state.objects[1].non_cond.items() if o.maskmem is not None]
        assert len(held) <= 14
        # what the next frame attends to is always there
        assert all(t in held for t in range(max(1, result.frame - 5), result.frame + 1))
    assert len(state.objects[1].non_cond) == 25  # the low-res logits of every frame stay for corrections


def test_bad_prompts_are_clear_errors_and_change_nothing(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    state = predictor.init_state(stack())
    with pytest.raises(PromptError, match=r"frame 8 is out of range.*8 frames \(0\.\.7\)"):
        predictor.add_prompt(state, 8, 1, box=[10, 14, 30, 34])
    with pytest.raises(PromptError, match="out of range"):
        predictor.add_prompt(state, -1, 1, box=[10, 14, 30, 34])
    with pytest.raises(PromptError, match="lies outside the image"):
        predictor.add_prompt(state, 0, 1, box=[100, 60, 120, 70])
    with pytest.raises(PromptError, match="has 3 values"):
        predictor.add_prompt(state, 0, 1, box=[10, 14, 30])
    with pytest.raises(PromptError, match="outside the image"):
        predictor.add_prompt(state, 0, 1, points=Points([[100, 10]], [1]))
    with pytest.raises(PromptError, match="mask is"):
        predictor.add_prompt(state, 0, 1, mask=np.zeros((10, 10), bool))
    with pytest.raises(PromptError, match="give a box, points or a mask"):
        predictor.add_prompt(state, 0, 1)
    assert state.objects == {} and state.encoded == 0
    with pytest.raises(PromptError, match="no prompt yet"):
        next(predictor.propagate(state))
    predictor.add_prompt(state, 0, 1, box=[10, 14, 30, 34])
    with pytest.raises(PromptError, match="out of range"):
        predictor.propagate(state, start=99)


def test_image_models_are_refused(tiny_sam):
    with pytest.raises(MedsamError, match="not a SAM 2 family model"):
        MemoryPredictor(tiny_sam)


def test_frames_must_be_uint8_stacks(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    with pytest.raises(MedsamError, match="uint8"):
        predictor.init_state(np.zeros((3, 20, 20), np.float32))


def test_fill_holes_fills_small_background_islands_only():
    logits = torch.full((1, 1, 12, 12), -5.0)
    logits[0, 0, 2:10, 2:10] = 5.0
    logits[0, 0, 4:6, 4:6] = -3.0  # a 4-pixel hole
    logits[0, 0, 7, 7] = -1.0  # a 1-pixel hole
    filled = fill_holes(logits, 4)
    assert torch.all(filled[0, 0, 4:6, 4:6] == 0.1) and filled[0, 0, 7, 7] == 0.1
    assert torch.all(filled[0, 0, :2] == -5.0)  # the outside is background, not a hole
    assert torch.equal(fill_holes(logits, 3)[0, 0, 4:6, 4:6], logits[0, 0, 4:6, 4:6])  # too big for area 3


def test_conditioning_frames_closest_in_time():
    cond = {1: "a", 5: "b", 9: "c", 20: "d"}
    selected, rest = select_conditioning_frames(8, cond, 3)
    assert list(selected) == [5, 9, 1] and list(rest) == [20]
    assert select_conditioning_frames(8, cond, -1) == (cond, {})


def test_medsam2_volume_procedure_labels_each_object(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    volume = stack(n=6)
    prompts = [KeySlicePrompt(z=2, box=Box(10, 14, 30, 34)), KeySlicePrompt(z=3, box=Box(40, 5, 60, 25))]
    labels = medsam2_segment_volume(predictor, volume, prompts, progress=False)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    from scipy import ndimage

    assert (labels == 2).any()
    _, count = ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))
    assert count == 1  # the largest 3D connected component (the last object is not overwritten by another)
    with pytest.raises(PromptError, match="out of range"):
        medsam2_segment_volume(predictor, volume, [KeySlicePrompt(z=6, box=Box(1, 1, 5, 5))], progress=False)


def test_a_click_on_any_slice_re_tracks_both_ways(tiny_sam2):
    predictor = MemoryPredictor(tiny_sam2)
    state = predictor.init_state(stack(n=6))
    predictor.add_prompt(state, 1, 1, box=[10, 14, 30, 34])
    list(predictor.propagate(state))
    predictor.add_prompt(state, 4, 1, points=Points([[26, 24]], [1]), clear=False)  # a click on a tracked slice
    frames = [r.frame for r in predictor.propagate_both_ways(state, 4)]
    assert frames == [4, 5, 3, 2, 1, 0]
    assert sorted(state.objects[1].cond) == [1, 4]
