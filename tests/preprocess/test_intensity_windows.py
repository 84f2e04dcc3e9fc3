"""CT windows, MR percentile clipping and the auto choice, on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.preprocess.intensity import (
    CT_WINDOWS,
    WindowSpec,
    apply_window,
    choose_window,
    parse_window,
    resolve_window,
)
from medsam.types import Volume


def test_parse_window_names_numbers_and_aliases():
    soft = parse_window("soft_tissue")
    assert (soft.kind, soft.width, soft.level, soft.bounds) == ("ct", 400.0, 40.0, (-160.0, 240.0))
    assert parse_window("Soft Tissue") == soft and parse_window("soft-tissue") == soft
    assert parse_window("lung").bounds == (-1350.0, 150.0)
    assert parse_window("bone").bounds == (-500.0, 1300.0)
    assert parse_window("brain").bounds == (0.0, 80.0)
    assert parse_window("liver").bounds == (-45.0, 105.0)
    custom = parse_window("400,40")
    assert (custom.kind, custom.bounds) == ("ct", (-160.0, 240.0))
    assert parse_window(" 1500 , -600 ").bounds == (-1350.0, 150.0)
    assert parse_window(None).kind == "auto" and parse_window("auto").kind == "auto"
    assert parse_window("percentile") == WindowSpec("percentile", "percentile", lower_percentile=0.5, upper_percentile=99.5)
    pct = parse_window("percentile:1,99")
    assert (pct.lower_percentile, pct.upper_percentile) == (1.0, 99.0)
    assert parse_window("mr").kind == "percentile"
    assert parse_window("passthrough").kind == "passthrough"
    assert set(CT_WINDOWS) >= {"soft_tissue", "lung", "bone", "brain", "liver"}


@pytest.mark.parametrize("text", ["ribs", "400", "400,40,3", "-400,40", "0,40", "percentile:90,10", "W,L", "nan,1"])
def test_parse_window_rejects_bad_text(text):
    with pytest.raises(InputError, match="window"):
        parse_window(text)


def test_soft_tissue_window_hand_computed():
    hu = np.array([[[-1000, -160, -60, 40, 240, 1000]]], dtype=np.int16)
    out = apply_window(hu, "soft_tissue")
    # (v + 160) / 400 * 255, truncated: -60 -> 63.75 -> 63; 40 -> 127.5 -> 127
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 0, 63, 127, 255, 255]]]


def test_numeric_window_hand_computed():
    values = np.array([[-10.0, 0.0, 25.0, 50.0, 99.0, 100.0, 300.0]], dtype=np.float32)
    out = apply_window(values, "100,50")  # [0, 100]
    assert out.tolist() == [[0, 0, 63, 127, 252, 255, 255]]


def test_ct_window_matches_medsam_formula_when_volume_spans_the_window():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(4, 20, 24)).astype(np.int16)
    lo, hi = 40 - 200, 40 + 200
    clipped = np.clip(hu, lo, hi)
    medsam = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)
    assert np.array_equal(apply_window(hu, "soft_tissue"), medsam)


def test_percentile_window_over_nonzero_keeps_background_zero():
    values = np.concatenate([np.zeros(50), np.arange(1, 201)]).reshape(1, 10, 25).astype(np.int16)
    out = apply_window(values, "percentile:0,100")  # window = [1, 200] from the non-zero voxels
    flat = out.reshape(-1)
    assert np.all(flat[:50] == 0)
    assert flat[50] == 0  # value 1 -> 0
    assert flat[50 + 99] == int((100 - 1) / 199 * 255)  # value 100 -> 126
    assert flat[-1] == 255


def test_mr_percentile_matches_medsam_formula():
    rng = np.random.default_rng(1)
    mr = rng.gamma(2.0, 300.0, size=(3, 30, 30)).astype(np.float32)
    mr[:, :5] = 0
    lo, hi = np.percentile(mr[mr > 0], 0.5), np.percentile(mr[mr > 0], 99.5)
    clipped = np.clip(mr.astype(np.float64), lo, hi)
    medsam = (clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0
    medsam[mr == 0] = 0
    assert np.array_equal(apply_window(mr, "percentile"), np.uint8(medsam))


def test_auto_choice():
    u8 = np.zeros((2, 4, 4), np.uint8)
    u8[0, 0, 0] = 9
    assert choose_window(u8).kind == "passthrough"
    assert apply_window(u8) is u8
    ct = np.full((2, 4, 4), -1000, np.int16)
    ct[:, 1:3, 1:3] = 50
    assert choose_window(ct).name == "soft_tissue"  # unknown modality, values below -500
    assert choose_window(np.abs(ct)).kind == "percentile"  # unknown modality, no negative HU
    assert choose_window(np.abs(ct), modality="CT").name == "soft_tissue"
    assert choose_window(ct, modality="MR").kind == "percentile"
    vol = Volume(np.abs(ct).astype(np.int16), modality="CT")
    assert resolve_window(vol).spec.name == "soft_tissue"
    assert choose_window(Volume(ct, modality="MRI")).kind == "percentile"
    assert apply_window(vol).dtype == np.uint8


def test_window_errors():
    with pytest.raises(InputError, match="passthrough"):
        apply_window(np.zeros((2, 3, 3), np.int16), "passthrough")
    with pytest.raises(InputError, match="NaN"):
        apply_window(np.array([[[np.nan, 1.0]]]), "soft_tissue")
    with pytest.raises(InputError, match="same value"):
        apply_window(np.full((2, 3, 3), 7, np.int16), "percentile")


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(2)
    hu = rng.normal(0, 500, size=(37, 8, 9)).astype(np.float32)
    assert np.array_equal(apply_window(hu, "lung", chunk_slices=1), apply_window(hu, "lung", chunk_slices=64))
