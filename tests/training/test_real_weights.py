"""LiteMedSAM on real images: validation from cached embeddings equals the predictor's own path."""

from __future__ import annotations

import pytest
import torch

from medsam.preprocess.geometry import CoordinateTransform


@pytest.mark.slow
def test_cached_embedding_validation_equals_predictor_path(lite_medsam, shared_dir, tmp_path):
    from medsam.inference.predictor import ImageEncoding
    from medsam.training.augment import Variant
    from medsam.training.data import load_samples, read_cases
    from medsam.training.embedding_store import EmbeddingStore, index_variants, load_or_encode
    from medsam.training.validate import validate

    cases = read_cases(shared_dir / "data" / "cases.csv", datasets=["ultrasound_fetal_head", "endoscopy_polyp"])
    samples, _ = load_samples([cases[0], cases[-1]])  # an 800x540 grey PNG and a colour JPEG
    index = index_variants(samples, [[Variant()]] * len(samples))
    table = load_or_encode(EmbeddingStore(tmp_path, lite_medsam), lite_medsam, index)
    cfg = lite_medsam.spec.preprocess

    def cached(i: int) -> ImageEncoding:
        t = CoordinateTransform.for_image(samples[i].mask.shape, cfg)
        return ImageEncoding(torch.from_numpy(table[index.rows[i][0][1]])[None], t, "cached")

    from_cache = validate(lite_medsam, samples, encoding_of=cached)
    from_predictor = validate(lite_medsam, samples)
    assert from_cache.scores == from_predictor.scores
    assert from_cache.dsc > 0.8
