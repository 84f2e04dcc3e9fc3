"""Predictor logic on tiny random models: caching, batching, prompt forms, refinement, bad prompts."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError, PromptError
from medsam.inference.predictor import Predictor
from medsam.types import Box, Points


@pytest.fixture
def predictor(tiny_lite):
    return Predictor(tiny_lite)


def _count_encodes(predictor):
    calls = []
    original = predictor._encoder

    def counting(batch):
        calls.append(batch.shape[0])
        return original(batch)

    predictor._encoder = counting
    return calls


def test_image_is_encoded_once_and_reused(predictor, disc_image):
    calls = _count_encodes(predictor)
    first = predictor.set_image(disc_image)
    for _ in range(3):
        predictor.predict(boxes=[40, 20, 80, 60])
    again = predictor.set_image(disc_image.copy())
    assert calls == [1]
    assert again.signature == first.signature
    predictor.set_image(disc_image[::-1].copy())
    assert calls == [1, 1]


def test_masks_come_back_at_the_original_size(predictor, disc_image):
    predictor.set_image(disc_image)
    result = predictor.predict(boxes=[40, 20, 80, 60])
    assert result.masks.shape == (1, 1, 96, 128) and result.masks.dtype == bool
    assert result.iou_scores.shape == (1, 1)
    assert result.low_res_logits.shape == (1, 1, 64, 64)
    multi = predictor.predict(boxes=[40, 20, 80, 60], multimask=True)
    assert multi.masks.shape == (1, 3, 96, 128)
    assert multi.best().masks.shape == (1, 1, 96, 128)


def test_many_boxes_batched_equal_one_by_one(predictor, disc_image):
    predictor.set_image(disc_image)
    boxes = np.array([[40, 20, 80, 60], [5, 5, 30, 30], [60, 50, 120, 90]], float)
    together = predictor.predict(boxes=boxes)
    for i, box in enumerate(boxes):
        alone = predictor.predict(boxes=Box(*box))
        np.testing.assert_allclose(together.low_res_logits[i], alone.low_res_logits[0], atol=1e-5)
        assert (together.masks[i] == alone.masks[0]).mean() > 0.999
    labels = together.label_map()
    assert labels.dtype == np.uint16 and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_point_forms_agree(predictor, disc_image):
    predictor.set_image(disc_image)
    a = predictor.predict(points=[[60, 40], [10, 10]], point_labels=[1, 0])
    b = predictor.predict(points=Points(np.array([[60, 40], [10, 10]]), np.array([1, 0])))
    np.testing.assert_allclose(a.low_res_logits, b.low_res_logits)
    with_box = predictor.predict(boxes=[40, 20, 80, 60], points=[[60, 40]], point_labels=[1])
    assert with_box.masks.shape == (1, 1, 96, 128)


def test_previous_logits_refine(predictor, disc_image):
    predictor.set_image(disc_image)
    first = predictor.predict(boxes=[40, 20, 80, 60])
    second = predictor.predict(points=[[60, 40]], point_labels=[1], mask_input=first.low_res_logits[:, 0:1])
    assert second.masks.shape == first.masks.shape
    with pytest.raises(PromptError, match="low-res logits"):
        predictor.predict(boxes=[40, 20, 80, 60], mask_input=np.zeros((1, 1, 32, 32)))


def test_sixteen_bit_and_float_images_are_windowed(predictor, disc_image):
    sixteen = disc_image.astype(np.uint16) * 250
    predictor.set_image(sixteen)
    assert predictor.predict(boxes=[40, 20, 80, 60]).masks.shape == (1, 1, 96, 128)
    predictor.set_image(disc_image.astype(np.float32) / 7.0 - 3.0)
    rgb = np.repeat(disc_image[:, :, None], 3, axis=2)
    predictor.set_image(rgb)


@pytest.mark.parametrize(
    "boxes, match",
    [
        ([1, 2, 3], "4"),
        ([80, 20, 40, 60], "inverted"),
        ([200, 200, 300, 300], "outside"),
        ([[1, 2, 3, 4, 5]], "exactly 4"),
        ([np.nan, 1, 5, 5], "NaN"),
    ],
)
def test_bad_boxes(predictor, disc_image, boxes, match):
    predictor.set_image(disc_image)
    with pytest.raises(PromptError, match=match):
        predictor.predict(boxes=boxes)


def test_box_partly_outside_is_clipped(predictor, disc_image):
    predictor.set_image(disc_image)
    assert predictor.predict(boxes=[-10, -10, 80, 60]).masks.shape == (1, 1, 96, 128)


def test_bad_points(predictor, disc_image):
    predictor.set_image(disc_image)
    with pytest.raises(PromptError, match="labels"):
        predictor.predict(points=[[60, 40]])
    with pytest.raises(PromptError, match="outside"):
        predictor.predict(points=[[600, 40]], point_labels=[1])
    with pytest.raises(PromptError, match="1 \\(inside\\) or 0"):
        predictor.predict(points=Points(np.array([[6, 4]]), np.array([2])))
    with pytest.raises(PromptError, match="no prompt"):
        predictor.predict()


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((32, 32), np.uint8), "same value"),
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((4, 32, 32, 3), np.uint8), "not a 2D image"),
    ],
)
def test_bad_images(predictor, image, match):
    with pytest.raises(InputError, match=match):
        predictor.set_image(image)


def test_predict_before_set_image(tiny_lite):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(tiny_lite).predict(boxes=[1, 1, 5, 5])


def test_sam_family_preprocessing_path(tiny_sam, disc_image):
    predictor = Predictor(tiny_sam)
    predictor.set_image(disc_image)
    result = predictor.predict(boxes=[[40, 20, 80, 60], [0, 0, 127, 95]])
    assert result.masks.shape == (2, 1, 96, 128)


def test_lru_cache_is_bounded(tiny_lite, disc_image):
    predictor = Predictor(tiny_lite, cache_bytes=3 * 32 * 16 * 16 * 4)
    for shift in range(6):
        predictor.set_image(np.roll(disc_image, shift, axis=1))
    assert len(predictor.cache) == 3 and predictor.cache.nbytes <= predictor.cache.max_bytes
