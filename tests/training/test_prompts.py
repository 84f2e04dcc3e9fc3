"""Prompt simulation: boxes, jitter, points, 3D boxes, key slices, corrective clicks, records."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsam.errors import InputError, PromptError
from medsam.training.prompts import (
    Click,
    SimulatedPrompt,
    append_click,
    box3d,
    case_seed,
    corrective_click,
    jittered_box,
    key_slice,
    sample_points,
    simulate_prompt,
    tight_box,
)
from medsam.types import Box, Box3D, Points


def rect(shape=(100, 120), y=(30, 59), x=(40, 79)):
    m = np.zeros(shape, bool)
    m[y[0] : y[1] + 1, x[0] : x[1] + 1] = True
    return m


def test_tight_box_is_inclusive_xyxy():
    assert tight_box(rect()) == Box(40.0, 30.0, 79.0, 59.0)
    with pytest.raises(PromptError, match="empty"):
        tight_box(np.zeros((5, 5)))
    with pytest.raises(InputError, match="2D"):
        tight_box(np.ones((2, 5, 5)))


def test_jitter_stays_within_0_to_20_px_and_covers_the_range():
    mask, tight = rect(), tight_box(rect())
    shifts = []
    for seed in range(400):
        b = jittered_box(mask, np.random.default_rng(seed))
        s = (tight.x0 - b.x0, tight.y0 - b.y0, b.x1 - tight.x1, b.y1 - tight.y1)
        assert all(0 <= v <= 20 and v == int(v) for v in s)
        shifts.extend(s)
    # every whole shift 0..20 is drawn (uniform per side, as MedSAM's randint(0, 20))
    assert sorted(set(shifts)) == list(range(21))


def test_jitter_is_clipped_to_the_image():
    mask = rect(shape=(50, 60), y=(0, 45), x=(3, 59))
    for seed in range(50):
        b = jittered_box(mask, np.random.default_rng(seed))
        assert b.x0 >= 0 and b.y0 == 0 and b.x1 == 59 and b.y1 <= 49
        assert b.x0 <= 3 and b.y1 >= 45


def test_jitter_is_reproducible_with_a_seed():
    a = jittered_box(rect(), np.random.default_rng(11))
    assert a == jittered_box(rect(), np.random.default_rng(11))
    assert len({jittered_box(rect(), np.random.default_rng(s)) for s in range(20)}) > 1
    assert jittered_box(rect(), np.random.default_rng(0), max_shift_px=0) == tight_box(rect())
    with pytest.raises(PromptError, match="max_shift_px"):
        jittered_box(rect(), np.random.default_rng(0), max_shift_px=-1)


def test_points_lie_in_the_interior():
    yy, xx = np.mgrid[:90, :90]
    disc = (yy - 45) ** 2 + (xx - 40) ** 2 <= 20**2
    dist = ndimage.distance_transform_edt(disc)
    pts = sample_points(disc, np.random.default_rng(5), n=8)
    assert isinstance(pts, Points) and len(pts) == 8 and pts.labels.tolist() == [1] * 8
    xy = pts.coords.astype(int)
    assert len({tuple(p) for p in xy}) == 8  # distinct
    for x, y in xy:
        assert disc[y, x] and dist[y, x] >= 0.5 * dist.max()
    again = sample_points(disc, np.random.default_rng(5), n=8)
    assert np.array_equal(pts.coords, again.coords)


def test_points_in_thin_or_tiny_objects():
    line = np.zeros((10, 30), bool)
    line[4, 3:25] = True
    pts = sample_points(line, np.random.default_rng(0), n=5)
    assert all(line[int(y), int(x)] for x, y in pts.coords)
    with pytest.raises(PromptError, match="fewer than"):
        sample_points(np.pad(np.ones((1, 2), bool), 2), np.random.default_rng(0), n=3)


def test_box3d_and_key_slice():
    vol = np.zeros((6, 40, 50), bool)
    vol[1, 10:15, 10:15] = True  # area 25
    vol[2, 5:25, 8:30] = True  # 20 x 22 = 440
    vol[4, 2:20, 20:45] = True  # 18 x 25 = 450: the key slice
    assert box3d(vol) == Box3D(8.0, 2.0, 1.0, 44.0, 24.0, 4.0)
    ks = key_slice(vol)
    assert ks.z == 4 and ks.area_px == 450 and ks.box == Box(20.0, 2.0, 44.0, 19.0)
    vol[2, 25, 8:18] = True  # slice 2 now has 450 too: the lower z wins the tie
    assert key_slice(vol).z == 2
    with pytest.raises(InputError, match="3D"):
        key_slice(vol[0])


def test_corrective_click_in_a_missed_region():
    ref = rect(shape=(60, 60), y=(10, 40), x=(10, 40))
    pred = ref.copy()
    pred[20:29, 30:39] = False  # a 9x9 miss, rows 20..28, cols 30..38: centre (x=34, y=24)
    pred[50:52, 50:52] = True  # a small false positive
    assert corrective_click(pred, ref) == Click(34, 24, 1)


def test_corrective_click_on_the_largest_false_positive():
    ref = rect(shape=(60, 60), y=(5, 20), x=(5, 20))
    pred = ref.copy()
    pred[30:37, 40:59] = True  # 7 x 19 false positive: rows 30..36, centre row 33
    pred[5:8, 5:8] = False  # 3x3 miss
    click = corrective_click(pred, ref)
    assert click is not None and click.label == 0 and click.y == 33
    assert pred[click.y, click.x] and not ref[click.y, click.x]


def test_corrective_click_picks_the_larger_miss_and_none_when_perfect():
    ref = np.zeros((40, 40), bool)
    ref[2:7, 2:7] = True  # 25 px
    ref[20:31, 20:31] = True  # 121 px: rows/cols 20..30, centre (25, 25)
    pred = np.zeros_like(ref)
    assert corrective_click(pred, ref) == Click(25, 25, 1)
    assert corrective_click(ref, ref) is None
    with pytest.raises(InputError):
        corrective_click(ref, ref[:-1])


def test_clicks_accumulate_into_points():
    pts = append_click(None, Click(3, 4, 1))
    pts = append_click(pts, Click(7, 8, 0))
    assert pts.coords.tolist() == [[3.0, 4.0], [7.0, 8.0]] and pts.labels.tolist() == [1, 0]


def test_simulated_prompt_records():
    mask = rect()
    jit = simulate_prompt("jitter", mask, seed=3)
    assert jit.box == jittered_box(mask, np.random.default_rng(3)) and jit.seed == 3
    back = SimulatedPrompt.from_json(jit.to_json())
    assert back.to_json() == jit.to_json() and back.box == jit.box
    assert jit.describe().startswith("jitter box=") and jit.describe().endswith("seed=3")

    pts = simulate_prompt("points", mask, seed=1, n_points=2)
    assert len(pts.points) == 2 and SimulatedPrompt.from_json(pts.to_json()).to_json() == pts.to_json()

    clicks = simulate_prompt("box", mask).with_click(Click(50, 40, 1)).with_click(Click(41, 31, 0))
    assert clicks.kind == "clicks" and clicks.n_clicks == 2 and clicks.box == tight_box(mask)
    assert "points=50,40,1;41,31,0" in clicks.describe()

    vol = np.zeros((5, 30, 30), bool)
    vol[1:4, 5:10, 6:12] = True
    vol[2, 5:20, 6:12] = True
    assert simulate_prompt("box3d", vol).box3d == Box3D(6.0, 5.0, 1.0, 11.0, 19.0, 3.0)
    ks = simulate_prompt("key_slice", vol)
    assert ks.slice_z == 2 and ks.box == Box(6.0, 5.0, 11.0, 19.0)
    assert SimulatedPrompt.from_json(ks.to_json()).slice_z == 2


def test_simulate_prompt_errors():
    with pytest.raises(PromptError, match="unknown"):
        simulate_prompt("lasso", rect())  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="seed"):
        simulate_prompt("jitter", rect())
    with pytest.raises(InputError, match="box3d"):
        simulate_prompt("box", np.ones((3, 4, 4)))
    with pytest.raises(PromptError, match="clicks need predictions"):
        simulate_prompt("clicks", rect())
    with pytest.raises(PromptError, match="not a recorded prompt"):
        SimulatedPrompt.from_json("{}")


def test_case_seed_is_stable_and_distinct():
    assert case_seed(0, "case_001") == case_seed(0, "case_001")
    assert case_seed(0, "case_001") != case_seed(1, "case_001") != case_seed(0, "case_002")
    assert 0 <= case_seed(123, "x") < 2**63
    assert case_seed(0, "case_001") == 1969748740099838150  # pinned: recorded seeds must not change
