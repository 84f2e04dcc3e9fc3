"""Resize/pad geometry and coordinate transforms, checked by hand."""

from __future__ import annotations

import numpy as np

from medsam.preprocess.geometry import LITE_MEDSAM, MEDSAM, SAM, CoordinateTransform, prepare_image, resized_shape


def test_resized_shapes():
    assert resized_shape((540, 800), LITE_MEDSAM) == (173, 256)  # int(540 * 0.32 + 0.5)
    assert resized_shape((1070, 1348), LITE_MEDSAM) == (203, 256)
    assert resized_shape((540, 800), MEDSAM) == (1024, 1024)
    assert resized_shape((512, 512), SAM) == (1024, 1024)


def test_lite_boxes_are_scaled_by_longest_side_then_floored():
    t = CoordinateTransform.for_image((540, 800), LITE_MEDSAM)
    np.testing.assert_array_equal(t.boxes_to_input(np.array([313, 270, 504, 486])), [100, 86, 161, 155])
    np.testing.assert_allclose(t.points_to_input(np.array([[400.0, 100.0]])), [[128.0, 32.0]])
    np.testing.assert_allclose(t.points_to_original(t.points_to_input(np.array([[401.0, 99.0]]))), [[401.0, 99.0]])


def test_square_stretch_scales_axes_separately():
    t = CoordinateTransform.for_image((500, 1000), MEDSAM)
    np.testing.assert_allclose(t.boxes_to_input(np.array([100, 100, 200, 250])), [102.4, 204.8, 204.8, 512.0])
    np.testing.assert_allclose(t.boxes_to_original(t.boxes_to_input(np.array([100, 100, 200, 250]))), [100, 100, 200, 250])


def test_prepare_image_minmax_and_channels():
    image = np.zeros((100, 50), np.uint8)
    image[10:20, 10:20] = 200
    out = prepare_image(image, LITE_MEDSAM)
    assert out.shape == (3, 256, 128) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    sam = prepare_image(image, SAM)
    assert sam.max() == 200.0  # SAM keeps 0..255; the model's mean/std normalise
