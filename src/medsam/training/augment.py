"""Augmentations in numpy, applied to the original image and mask before the model's preprocessing.

A :class:`Variant` names one deterministic transform of an image: a flip and an intensity change drawn
once from a seed. Applying it before ``prepare_image`` keeps the model's own geometry (resize longest side,
pad bottom/right) intact: a flipped image is padded like any other image, never mirrored padding.

How augmentation meets cached embeddings (the ``decoder`` strategy): the encoder is frozen, so an image's
embedding depends only on the pixels that go in. Each variant is therefore encoded once and cached on disk
under the signature of its own pixels; a training step draws one of the cached variants of its sample and a
fresh jittered box. So the decoder sees exactly ``len(variants)`` versions of each image (e.g. original,
horizontal flip, and K intensity versions pre-drawn from the seed), not a new intensity draw every step;
the ``full`` and ``lora`` strategies, which run the encoder on every step, draw a new intensity change each
time instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

FlipMode = Literal["none", "h", "v", "hv"]


@dataclass(frozen=True)
class IntensityChange:
    """gamma on the [0, 1]-scaled image, then contrast (about the mean) and brightness (in 0..255 units)."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0

    @property
    def identity(self) -> bool:
        return self.gamma == 1.0 and self.contrast == 1.0 and self.brightness == 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator, strength: float = 1.0) -> "IntensityChange":
        """gamma in [0.7, 1.5], contrast in [0.8, 1.2], brightness in [-20, 20] at strength 1."""
        s = float(strength)
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5)) * s))
        return cls(gamma, float(1.0 + rng.uniform(-0.2, 0.2) * s), float(rng.uniform(-20.0, 20.0) * s))

    def apply(self, display: np.ndarray) -> np.ndarray:
        """An image in 0..255 (uint8 or float) -> float32 in 0..255."""
        x = np.asarray(display, dtype=np.float32)
        if self.gamma != 1.0:
            x = 255.0 * np.power(np.clip(x / 255.0, 0.0, 1.0), self.gamma, dtype=np.float32)
        if self.contrast != 1.0 or self.brightness != 0.0:
            x = (x - x.mean()) * self.contrast + x.mean() + self.brightness
        return np.clip(x, 0.0, 255.0).astype(np.float32)


@dataclass(frozen=True)
class Variant:
    """A flip (horizontal: x mirrored; vertical: y mirrored) and an intensity change."""

    hflip: bool = False
    vflip: bool = False
    intensity: IntensityChange = IntensityChange()

    @property
    def name(self) -> str:
        parts = (["h"] if self.hflip else []) + (["v"] if self.vflip else [])
        if not self.intensity.identity:
            i = self.intensity
            parts.append(f"g{i.gamma:.4f}c{i.contrast:.4f}b{i.brightness:.3f}")
        return "+".join(parts) or "identity"

    def apply_image(self, display: np.ndarray) -> np.ndarray:
        """Flip and change the intensity of an image already in 0..255 (uint8 stays uint8 when unchanged)."""
        out = self.flip(display)
        return out if self.intensity.identity else self.intensity.apply(out)

    def flip(self, array: np.ndarray) -> np.ndarray:
        out = array
        if self.hflip:
            out = out[:, ::-1]
        if self.vflip:
            out = out[::-1]
        return np.ascontiguousarray(out) if (self.hflip or self.vflip) else out


def flip_variants(mode: FlipMode) -> list[Variant]:
    """The identity plus the flips of ``mode`` ("h": + horizontal; "v": + vertical; "hv": + both and each)."""
    if mode not in ("none", "h", "v", "hv"):
        raise ValueError(f"flip mode {mode!r}: use none, h, v or hv")
    out = [Variant()]
    if "h" in mode:
        out.append(Variant(hflip=True))
    if "v" in mode:
        out.append(Variant(vflip=True))
    if mode == "hv":
        out.append(Variant(hflip=True, vflip=True))
    return out


def cached_variants(flips: FlipMode, intensity_variants: int, seed: int, sample_index: int) -> list[Variant]:
    """The variants a sample's embeddings are cached for (decoder strategy): every flip, plus
    ``intensity_variants`` intensity changes (each with a random flip of ``flips``) drawn from the seed."""
    out = flip_variants(flips)
    rng = np.random.default_rng([int(seed), 7919, int(sample_index)])
    for _ in range(int(intensity_variants)):
        base = out[int(rng.integers(len(flip_variants(flips))))]
        out.append(Variant(base.hflip, base.vflip, IntensityChange.draw(rng)))
    return out


def random_variant(flips: FlipMode, intensity_prob: float, rng: np.random.Generator) -> Variant:
    """A fresh variant per step (full / lora strategies): a random flip of ``flips`` and, with probability
    ``intensity_prob``, an intensity change."""
    options = flip_variants(flips)
    base = options[int(rng.integers(len(options)))]
    change = IntensityChange.draw(rng) if rng.random() < intensity_prob else IntensityChange()
    return Variant(base.hflip, base.vflip, change)
