"""The parts of fine-tuning: embedding cache, targets and loss, training items, augmentation, data, schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam.models.registry import build_model
from medsam.preprocess.geometry import CoordinateTransform, PreprocessConfig
from medsam.training.augment import IntensityChange, Variant, cached_variants, flip_variants
from medsam.training.embedding_store import EmbeddingStore, pixels_key
from medsam.training.losses import lowres_target, segmentation_loss
from medsam.training.trainer import lr_factor

# --- embedding cache ------------------------------------------------------------------------------------


def test_embedding_cache_is_reused_and_refused_when_stale(tmp_path):
    model = build_model("tiny_lite", device="cpu")
    store = EmbeddingStore(tmp_path, model)
    image = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    key = pixels_key(image)
    assert store.get(key) is None and store.stats.misses == 1
    emb = np.random.default_rng(0).normal(size=(32, 16, 16)).astype(np.float32)
    store.put(key, emb)
    np.testing.assert_array_equal(EmbeddingStore(tmp_path, model).get(key), emb)

    other = build_model("tiny_lite", device="cpu")
    with torch.no_grad():
        other.image_encoder.neck[0].weight.add_(1e-3)  # other encoder weights under the same model name
    stale = EmbeddingStore(tmp_path, other)
    assert stale.folder == store.folder
    assert stale.get(key) is None and stale.stats.stale == 1

    changed_decoder = build_model("tiny_lite", device="cpu")
    with torch.no_grad():
        changed_decoder.mask_decoder.iou_token.weight.add_(1.0)  # the decoder does not enter the signature
    assert EmbeddingStore(tmp_path, changed_decoder).get(key) is not None

    store.path(key).write_bytes(b"not an npz")
    damaged = EmbeddingStore(tmp_path, model)
    assert damaged.get(key) is None and damaged.stats.stale == 1


def test_pixels_key_sees_every_change():
    a = np.zeros((4, 5), np.uint8)
    b = a.copy()
    b[0, 0] = 1
    keys = {pixels_key(a), pixels_key(b), pixels_key(a.astype(np.uint16)), pixels_key(a.reshape(5, 4))}
    assert len(keys) == 4


def test_training_runs_reuse_cached_embeddings(disc_data, tmp_path):
    from medsam.training import FinetuneConfig, finetune

    cache = tmp_path / "cache"
    cfg = dict(data=str(disc_data), model="tiny_lite", device="cpu", epochs=1, flips="h", val_split=0.25,
               embedding_cache=str(cache), progress=False)
    finetune(FinetuneConfig(output_dir=str(tmp_path / "a"), **cfg))
    files = sorted(cache.rglob("*.npz"))
    assert len(files) == 6 * 2 + 2  # 6 training images x (identity, h-flip) + 2 validation images
    stamps = {f: f.stat().st_mtime_ns for f in files}
    finetune(FinetuneConfig(output_dir=str(tmp_path / "b"), **cfg))
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.rglob("*.npz"))} == stamps, "nothing re-encoded"


# --- targets and loss -----------------------------------------------------------------------------------


LITE64 = PreprocessConfig("t", 64, "longest_side", "area", True, box_rounding="floor", coord_scale="longest_side")


def test_lowres_target_covers_only_the_image_part_of_the_input():
    mask = np.zeros((40, 80), bool)
    mask[10:30, 20:60] = True
    t = CoordinateTransform.for_image(mask.shape, LITE64)  # resized to 32 x 64, padded to 64 x 64
    target, weight = lowres_target(mask, t, (64, 64))
    assert weight[:32].min() == 1 and weight[32:].max() == 0
    assert target[32:].max() == 0 and target[9:23, 17:47].min() == 1 and target[:7].max() == 0  # rows x 0.8
    # a decoder frame smaller than the input (SAM: 1024 -> 256): weights are the covered fraction
    target4, weight4 = lowres_target(mask, t, (16, 16))
    assert weight4[:8].min() == 1 and weight4[8:].max() == 0
    assert 0 < target4.sum() < 16 * 16


def test_loss_is_small_for_the_right_answer_and_ignores_padding():
    target = torch.zeros(2, 8, 8)
    target[:, 2:5, 2:5] = 1
    weight = torch.ones(2, 8, 8)
    weight[:, 6:] = 0
    good = (target * 2 - 1) * 20
    good_in_padding_wrong = good.clone()
    good_in_padding_wrong[:, 6:] = 20  # padding predicted as object: weight 0, no effect
    ones = torch.ones(2)
    a = segmentation_loss(good, ones, target, weight)
    b = segmentation_loss(good_in_padding_wrong, ones, target, weight)
    assert float(a.total) < 0.01 and a.true_iou == 1.0
    assert float(b.total) == pytest.approx(float(a.total))
    bad = segmentation_loss(-good, ones, target, weight)
    assert bad.dice > 0.9 and bad.true_iou == 0.0 and bad.iou_mse == pytest.approx(1.0)


def test_loss_of_a_batch_is_the_mean_of_its_halves():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 8, 8, generator=g, requires_grad=True)
    iou = torch.rand(4, generator=g)
    target = (torch.rand(4, 8, 8, generator=g) > 0.5).float()
    weight = torch.ones(4, 8, 8)
    whole = segmentation_loss(logits, iou, target, weight).total
    halves = (segmentation_loss(logits[:2], iou[:2], target[:2], weight[:2]).total
              + segmentation_loss(logits[2:], iou[2:], target[2:], weight[2:]).total) / 2
    torch.testing.assert_close(whole, halves)


# --- items, augmentation, schedule ----------------------------------------------------------------------


def test_items_are_deterministic_per_seed_epoch_and_index(disc_data):
    from medsam.training.data import load_samples, read_cases
    from medsam.training.dataset import ImageItems, PromptSettings

    samples, _ = load_samples(read_cases(disc_data))
    items = ImageItems(samples, LITE64, (64, 64), PromptSettings(20, 0.5), seed=1, flips="hv", intensity_prob=0.5)
    items.set_epoch(2)
    a, b = items[3], items[3]
    np.testing.assert_array_equal(a.box, b.box)
    np.testing.assert_array_equal(a.image, b.image)
    items.set_epoch(3)
    boxes = {tuple(items[3].box) for _ in range(1)} | {tuple(a.box)}
    assert len(boxes) == 2, "another epoch draws another prompt"
    h, w = samples[3].mask.shape
    t = CoordinateTransform.for_image((h, w), LITE64)
    box = a.box / np.array(t.scale_xy * 2)
    assert box[0] >= -1 and box[1] >= -1 and box[2] <= w and box[3] <= h


def test_jittered_box_stays_around_the_object(disc_data):
    from medsam.training.data import load_samples, read_cases
    from medsam.training.dataset import ImageItems, PromptSettings
    from medsam.training.prompts import tight_box

    samples, _ = load_samples(read_cases(disc_data))
    items = ImageItems(samples, LITE64, (64, 64), PromptSettings(5, 0.0), seed=0, flips="none", intensity_prob=0)
    tight = tight_box(samples[0].mask).as_array()
    t = CoordinateTransform.for_image(samples[0].mask.shape, LITE64)
    for epoch in range(5):
        items.set_epoch(epoch)
        box = items[0].box
        assert box[0] <= np.floor(tight[0] * t.scale_xy[0]) and box[2] >= np.floor(tight[2] * t.scale_xy[0])
        assert box[0] >= np.floor((tight[0] - 5) * t.scale_xy[0]) - 1


def test_variants():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert [v.name for v in flip_variants("hv")] == ["identity", "h", "v", "h+v"]
    np.testing.assert_array_equal(Variant(hflip=True).apply_image(image), image[:, ::-1])
    assert Variant().apply_image(image) is image
    changed = Variant(intensity=IntensityChange(0.8, 1.1, 5)).apply_image(image)
    assert changed.dtype == np.float32 and changed.min() >= 0 and changed.max() <= 255
    a = cached_variants("h", 2, seed=0, sample_index=4)
    b = cached_variants("h", 2, seed=0, sample_index=4)
    assert [v.name for v in a] == [v.name for v in b] and len(a) == 4
    assert cached_variants("h", 2, seed=1, sample_index=4)[2].name != a[2].name


def test_warmup_then_cosine():
    factors = [lr_factor(s, total=100, warmup=10, min_ratio=0.1) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_volume_cases_become_their_non_empty_slices(tmp_path):
    from medsam.training.data import load_samples, read_cases

    imgs = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    gts = np.zeros((6, 32, 32), np.uint8)
    gts[1:4, 8:20, 10:22] = 1
    gts[2, 0, 0] = 2  # a one-pixel object: too small to box
    np.savez(tmp_path / "CT_toy.npz", imgs=imgs, gts=gts, spacing=np.array([0.8, 0.8, 2.5]))
    samples, report = load_samples(read_cases(tmp_path))
    assert [s.slice_z for s in samples] == [1, 2, 3]
    assert samples[0].spacing_mm == pytest.approx((0.8, 0.8))
    np.testing.assert_array_equal(samples[1].image, imgs[2])
    assert report.status_counts() == {"too_small": 1}
    assert report.empty_slices == 3 + 5
