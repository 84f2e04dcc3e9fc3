"""Training items: a sample's (augmented) input, a simulated prompt, and the target in the decoder's frame.

Randomness is drawn per item from ``numpy.random.default_rng([seed, epoch, index])``: the item a sample
gives in an epoch does not depend on the process, the batch it falls in or the order of the loader, which
is what makes one process on a batch of 2B and two DDP processes on B each see the same data, and a resumed
run continue exactly as an uninterrupted one.

- :class:`EmbeddingItems` (``decoder`` strategy): picks one of the sample's cached variants and gives the
  index of its embedding in a table held in memory.
- :class:`ImageItems` (``full``, ``lora``): augments the image on the fly and gives the prepared image
  (3, h, w); the training step pads and normalises it with the model's own ``preprocess``.

Prompts follow MedSAM's training: the tight box of the (flipped) mask with each side pushed out by its own
random 0..jitter_px pixels (original-image pixels), optionally one interior point; both are mapped to the
input frame by the same :class:`CoordinateTransform` the predictor uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from medsam.preprocess.geometry import CoordinateTransform, PreprocessConfig, prepare_image
from medsam.preprocess.intensity import to_display_range
from medsam.training.augment import FlipMode, Variant, random_variant
from medsam.training.data import Sample
from medsam.training.losses import lowres_target
from medsam.training.prompts import jittered_box, sample_points


@dataclass(frozen=True)
class PromptSettings:
    jitter_px: int = 20
    point_prob: float = 0.0


@dataclass(frozen=True, eq=False)
class TrainItem:
    index: int
    embedding_index: int  # -1 when the item carries an image
    image: np.ndarray | None  # (3, h, w) float32 prepared image (full / lora)
    box: np.ndarray  # (4,) input frame
    point: np.ndarray  # (1, 2) input frame
    point_label: int  # 1, or -1 for "no point"
    target: np.ndarray  # (L, L)
    weight: np.ndarray  # (L, L)


@dataclass(frozen=True, eq=False)
class Batch:
    indices: torch.Tensor
    embedding_index: torch.Tensor
    images: list[torch.Tensor]
    boxes: torch.Tensor
    points: torch.Tensor | None
    point_labels: torch.Tensor | None
    target: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def collate(items: Sequence[TrainItem]) -> Batch:
    any_point = any(it.point_label != -1 for it in items)
    return Batch(
        indices=torch.tensor([it.index for it in items]),
        embedding_index=torch.tensor([it.embedding_index for it in items]),
        images=[torch.from_numpy(it.image) for it in items if it.image is not None],
        boxes=torch.from_numpy(np.stack([it.box for it in items]).astype(np.float32)),
        points=torch.from_numpy(np.stack([it.point for it in items]).astype(np.float32)) if any_point else None,
        point_labels=torch.tensor([[it.point_label] for it in items]) if any_point else None,
        target=torch.from_numpy(np.stack([it.target for it in items])),
        weight=torch.from_numpy(np.stack([it.weight for it in items])),
    )


def display_image(sample: Sample) -> np.ndarray:
    """The sample's image in 0..255, exactly as ``Predictor.prepare`` brings it there."""
    return to_display_range(sample.image, source=sample.key)


class _Items(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample], config: PreprocessConfig, low_res_hw: tuple[int, int],
                 prompts: PromptSettings, seed: int) -> None:
        self.samples = list(samples)
        self.config = config
        self.low_res_hw = tuple(low_res_hw)
        self.prompts = prompts
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _prompt_and_target(self, index: int, variant: Variant, rng: np.random.Generator):
        sample = self.samples[index]
        mask = variant.flip(sample.mask)
        transform = CoordinateTransform.for_image(mask.shape, self.config)
        box = transform.boxes_to_input(jittered_box(mask, rng, self.prompts.jitter_px).as_array())
        point, label = np.zeros((1, 2)), -1
        if rng.random() < self.prompts.point_prob:
            point, label = transform.points_to_input(sample_points(mask, rng, 1).coords), 1
        target, weight = lowres_target(mask, transform, self.low_res_hw)
        return box, point, label, target, weight


class EmbeddingItems(_Items):
    """Items for the decoder strategy: ``variant_rows[i]`` lists (variant, embedding row) of sample i."""

    def __init__(self, samples, config, low_res_hw, prompts, seed, variant_rows: Sequence[Sequence[tuple[Variant, int]]]):
        super().__init__(samples, config, low_res_hw, prompts, seed)
        self.variant_rows = [list(v) for v in variant_rows]

    def __getitem__(self, index: int) -> TrainItem:
        rng = self.rng(index)
        variant, row = self.variant_rows[index][int(rng.integers(len(self.variant_rows[index])))]
        box, point, label, target, weight = self._prompt_and_target(index, variant, rng)
        return TrainItem(index, row, None, box, point, label, target, weight)


class ImageItems(_Items):
    """Items for the full and lora strategies: augmentation on the fly, the prepared image in the item."""

    def __init__(self, samples, config, low_res_hw, prompts, seed, flips: FlipMode, intensity_prob: float):
        super().__init__(samples, config, low_res_hw, prompts, seed)
        self.flips = flips
        self.intensity_prob = float(intensity_prob)

    def __getitem__(self, index: int) -> TrainItem:
        rng = self.rng(index)
        variant = random_variant(self.flips, self.intensity_prob, rng)
        image = prepare_image(variant.apply_image(display_image(self.samples[index])), self.config,
                              source=self.samples[index].key)
        box, point, label, target, weight = self._prompt_and_target(index, variant, rng)
        return TrainItem(index, -1, image, box, point, label, target, weight)
