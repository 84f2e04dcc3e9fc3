"""Targets in the decoder's frame and the training loss (Dice + BCE + IoU-head MSE, as LiteMedSAM trains).

Where the loss is computed. The predictor turns the decoder's low-res logits (L x L, 256 for the SAM family)
into a mask by resizing them to the model input (S x S), cropping the padding (the resized image occupies
the top-left ``resized_hw``) and resizing to the original size. So the decoder's frame is the input frame
scaled by L / S, and only its top-left ``resized_hw * L / S`` part ever reaches a mask. The target is the
mask resized to ``resized_hw`` (area interpolation, thresholded at 0.5), placed top-left in S x S and
area-averaged down to L x L; the padding gets weight 0 (its logits are cropped at inference, so training
them would only waste capacity) and a low-res pixel straddling the edge gets the fraction it covers.
For LiteMedSAM L = S = 256, so the loss is on the exact pixels inference crops.

Every term is computed per sample and then averaged over the batch, so a batch split across processes (DDP
averages gradients) gives the same gradient as the whole batch in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from medsam.preprocess.geometry import CoordinateTransform


def lowres_target(
    mask: np.ndarray, transform: CoordinateTransform, low_res_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool mask -> (target, weight), both (L, L) float32 in [0, 1] in the decoder's frame."""
    rh, rw = transform.resized_hw
    size = transform.input_size
    resized = cv2.resize(mask.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA) >= 0.5
    target = np.zeros((size, size), np.float32)
    target[:rh, :rw] = resized
    weight = np.zeros((size, size), np.float32)
    weight[:rh, :rw] = 1.0
    lh, lw = low_res_hw
    if (lh, lw) != (size, size):
        target = cv2.resize(target, (lw, lh), interpolation=cv2.INTER_AREA)
        weight = cv2.resize(weight, (lw, lh), interpolation=cv2.INTER_AREA)
    return target, weight


@dataclass(frozen=True)
class LossTerms:
    """The batch-mean loss and its parts (detached floats for logging)."""

    total: torch.Tensor
    dice: float
    bce: float
    iou_mse: float
    true_iou: float


def segmentation_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    iou_weight: float = 1.0,
    eps: float = 1e-6,
) -> LossTerms:
    """logits (B, L, L), iou_pred (B,), target and weight (B, L, L) -> per-sample Dice + BCE + iou_weight *
    (iou_pred - true IoU)^2, averaged over the batch. The true IoU is of (logits > 0) against (target > 0.5)
    over the weighted (non-padding) pixels, as LiteMedSAM's IoU head is trained."""
    x = logits.float()
    w = weight.float()
    t = target.float()
    wsum = w.flatten(1).sum(1).clamp_min(eps)
    bce = (F.binary_cross_entropy_with_logits(x, t, reduction="none") * w).flatten(1).sum(1) / wsum
    p = torch.sigmoid(x)
    inter = (p * t * w).flatten(1).sum(1)
    dice = 1.0 - (2.0 * inter + eps) / ((p * w).flatten(1).sum(1) + (t * w).flatten(1).sum(1) + eps)
    with torch.no_grad():
        valid = w > 0.5
        pm, tm = (x > 0) & valid, (t > 0.5) & valid
        union = (pm | tm).flatten(1).sum(1).float()
        true_iou = torch.where(union > 0, (pm & tm).flatten(1).sum(1).float() / union.clamp_min(1), torch.ones_like(union))
    mse = (iou_pred.float() - true_iou) ** 2
    per_sample = dice + bce + iou_weight * mse
    return LossTerms(
        total=per_sample.mean(),
        dice=float(dice.detach().mean()),
        bce=float(bce.detach().mean()),
        iou_mse=float(mse.detach().mean()),
        true_iou=float(true_iou.mean()),
    )
