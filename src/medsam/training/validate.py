"""Validation through the inference path: the predictor, the tight box of the reference, medsam.metrics.

Each validation sample is segmented by :class:`medsam.inference.predictor.Predictor` (``predict`` with the
tight box, then its own upscaling to the original size) and scored with :func:`medsam.metrics.score_case`:
DSC, the in-plane boundary NSD and the CVPR 2024 challenge NSD at ``tolerance`` (pixels for 2D files, mm
for volume slices). Embeddings come from the decoder strategy's cache when the encoder is frozen (the same
numbers the predictor would compute) or from the predictor itself when the encoder is being trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from medsam.inference.cache import forget_fingerprint
from medsam.inference.predictor import ImageEncoding, Predictor
from medsam.metrics import MetricAccumulator, score_case
from medsam.training.data import Sample
from medsam.training.prompts import tight_box

METRICS = ("dsc", "nsd", "nsd_challenge")


@dataclass(frozen=True)
class SampleScore:
    key: str
    dataset: str
    dsc: float
    nsd: float
    nsd_challenge: float


@dataclass(frozen=True)
class ValidationResult:
    """Means over the validation samples (NaN when there are none) and each sample's scores."""

    dsc: float
    nsd: float
    nsd_challenge: float
    n: int
    scores: tuple[SampleScore, ...] = ()

    def as_dict(self) -> dict[str, float]:
        return {"dsc": self.dsc, "nsd": self.nsd, "nsd_challenge": self.nsd_challenge, "n": self.n}


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    encoding_of: Callable[[int], ImageEncoding] | None = None,
    tolerance: float = 2.0,
) -> ValidationResult:
    """Score ``model`` on ``samples``. ``encoding_of(i)`` gives sample i's cached encoding; None encodes
    through the predictor (its LRU shares an image's embedding between the objects on it)."""
    if not samples:
        return ValidationResult(math.nan, math.nan, math.nan, 0)
    model.eval()  # the caller puts its training mode back
    forget_fingerprint(model)  # the weights changed since the last fingerprint
    predictor = Predictor(model)
    acc = MetricAccumulator(n_resamples=1)
    scores = []
    try:
        for i, sample in enumerate(samples):
            if encoding_of is not None:
                predictor.set_encoding(encoding_of(i))
            else:
                predictor.set_image(sample.image, source=sample.key)
            box = tight_box(sample.mask)
            pred = predictor.predict(boxes=box.as_array()).masks[0, 0]
            s = score_case(pred, sample.mask, spacing_mm=sample.spacing_mm, tolerance_mm=tolerance)
            acc.add(sample.key, {m: getattr(s, m) for m in METRICS}, dataset=sample.dataset)
            scores.append(SampleScore(sample.key, sample.dataset, s.dsc, s.nsd, s.nsd_challenge))
    finally:
        forget_fingerprint(model)
    means = {m: float(np.mean(acc.values(m))) for m in METRICS}
    return ValidationResult(means["dsc"], means["nsd"], means["nsd_challenge"], len(scores), tuple(scores))
