"""Geometry in numpy: how each model family resizes and pads, and the matching coordinate transforms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from medsam.errors import InputError

ResizeMode = Literal["longest_side", "square"]
Interpolation = Literal["area", "bilinear", "bicubic"]
BoxRounding = Literal["floor", "none"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How images and prompts are brought to a model's input frame.

    input_size: side of the square model input (256 for LiteMedSAM, 1024 for SAM/MedSAM).
    resize: "longest_side" keeps the aspect ratio and pads bottom/right; "square" stretches to S x S.
    interpolation: "area" (OpenCV INTER_AREA, LiteMedSAM), "bilinear" (PIL, SAM / Hugging Face),
        "bicubic" (PIL with antialiasing, close to MedSAM's skimage order-3 resize).
    minmax: min-max normalise the resized image to [0, 1] (LiteMedSAM, MedSAM); otherwise pixels stay 0..255
        and the model's pixel_mean/pixel_std apply.
    pixel_mean, pixel_std: per-channel normalisation applied by the model after this step.
    box_rounding: "floor" truncates scaled boxes to integers, as the official LiteMedSAM inference does.
    coord_scale: "longest_side" scales prompts by input_size / max(H, W) (LiteMedSAM); "resized" by the
        resized/original ratio of each axis (SAM's ResizeLongestSide, MedSAM's square stretch).
    """

    name: str
    input_size: int
    resize: ResizeMode = "longest_side"
    interpolation: Interpolation = "area"
    minmax: bool = True
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    box_rounding: BoxRounding = "none"
    coord_scale: Literal["longest_side", "resized"] = "resized"


LITE_MEDSAM = PreprocessConfig(
    "lite_medsam", 256, "longest_side", "area", True, box_rounding="floor", coord_scale="longest_side"
)
MEDSAM = PreprocessConfig("medsam", 1024, "square", "bicubic", True)
SAM = PreprocessConfig(
    "sam", 1024, "longest_side", "bilinear", False, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
)
# Hugging Face SamProcessor: longest side 1024 (size int(x * scale + 0.5), bilinear), rescale by 1/255, ImageNet
# mean/std (= SAM's pixel_mean/std on 0..255), zero-pad bottom/right after normalising; prompts scaled per axis.
# With its PIL backend this is SAM's own pipeline (tests/models/test_hf.py checks HF_SAM against it); its torchvision
# backend (transformers' default when torchvision is installed) resizes with torch's antialiased bilinear, which can
# differ slightly from PIL. It is not MedSAM's training pipeline (square stretch, min-max to [0, 1], no mean/std,
# no padding), so a MedSAM checkpoint used through SamProcessor sees other inputs and gives other masks than the
# official MedSAM code. See medsam.models.hf.
HF_SAM = PreprocessConfig(
    "hf_sam", 1024, "longest_side", "bilinear", False, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
)
PRESETS = {c.name: c for c in (LITE_MEDSAM, MEDSAM, SAM, HF_SAM)}


def resized_shape(original_hw: tuple[int, int], config: PreprocessConfig) -> tuple[int, int]:
    h, w = original_hw
    if config.resize == "square":
        return config.input_size, config.input_size
    scale = config.input_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class CoordinateTransform:
    """Maps prompts from original pixels to the model input frame and masks back.

    original_hw: (H, W) of the image the user gave; resized_hw: (h, w) of the image inside the model input;
    scale_xy: factors from original to input pixels along x and y.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_size: int
    scale_xy: tuple[float, float]
    box_rounding: BoxRounding = "none"

    @classmethod
    def for_image(cls, original_hw: tuple[int, int], config: PreprocessConfig) -> "CoordinateTransform":
        h, w = (int(v) for v in original_hw)
        rh, rw = resized_shape((h, w), config)
        if config.coord_scale == "longest_side":
            scale = (config.input_size / max(h, w),) * 2
        else:
            scale = (rw / w, rh / h)
        return cls((h, w), (rh, rw), config.input_size, scale, config.box_rounding)

    def points_to_input(self, coords: np.ndarray) -> np.ndarray:
        """(..., 2) xy in original pixels -> input frame (float)."""
        sx, sy = self.scale_xy
        out = np.asarray(coords, dtype=np.float64).copy()
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) xyxy in original pixels -> input frame; floored when the model was run that way."""
        sx, sy = self.scale_xy
        out = np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])
        if self.box_rounding == "floor":
            out = np.floor(out)
        return out

    def points_to_original(self, coords: np.ndarray) -> np.ndarray:
        sx, sy = self.scale_xy
        out = np.asarray(coords, dtype=np.float64).copy()
        out[..., 0] /= sx
        out[..., 1] /= sy
        return out

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        sx, sy = self.scale_xy
        return np.asarray(boxes, dtype=np.float64) / np.array([sx, sy, sx, sy])


def check_image_shape(image: np.ndarray, *, source: str = "image") -> None:
    """A 2D image is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with H, W >= 1."""
    ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    if not ok:
        raise InputError(
            f"{source}: shape {image.shape} is not a 2D image; expected (H, W), (H, W, 3) or (H, W, 4). "
            "For volumes use `medsam segment-volume`"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{source}: the image is empty (shape {image.shape})")


def to_three_channels(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3); alpha is dropped."""
    image = np.asarray(image)
    check_image_shape(image, source=source)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise InputError(
        f"{source}: shape {image.shape} is not a 2D image; expected (H, W), (H, W, 3) or (H, W, 4). "
        "For volumes use `medsam segment-volume`"
    )


def resize_image(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Resize an (H, W, 3) image with values in 0..255 to the model's resized shape, keeping its dtype
    when it is uint8 (the reference pipelines resize the 8-bit image itself)."""
    h, w = resized_shape(image.shape[:2], config)
    if (h, w) == image.shape[:2]:
        return image
    if config.interpolation == "area":
        import cv2  # imported here: `import medsam` and building a model stay free of OpenCV

        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    from PIL import Image

    resample = Image.BILINEAR if config.interpolation == "bilinear" else Image.BICUBIC
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), resample=resample))
    channels = [
        np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize((w, h), resample=resample))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


def minmax_normalise(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    low = image.min()
    return (image - low) / np.clip(image.max() - low, 1e-8, None)


def prepare_image(image: np.ndarray, config: PreprocessConfig, *, source: str = "image") -> np.ndarray:
    """An (H, W[, C]) image in 0..255 -> (3, h, w) float32, resized and intensity-normalised for the model.

    Padding to the square input and the model's mean/std normalisation happen in the model
    (``SamModel.preprocess``), so this array stays independent of the device.
    """
    rgb = to_three_channels(image, source=source)
    resized = resize_image(rgb, config)
    out = minmax_normalise(resized) if config.minmax else resized.astype(np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
