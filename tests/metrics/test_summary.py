"""MetricAccumulator and the bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.metrics import MetricAccumulator, SegmentationScores, bootstrap_ci, score_case

from ._shapes import square


def _filled():
    acc = MetricAccumulator(seed=7, n_resamples=500)
    acc.add("a1", {"dsc": 0.9, "hd95": 2.0}, dataset="A", modality="CT")
    acc.add("a2", {"dsc": 0.7, "hd95": math.inf}, dataset="A", modality="CT")
    acc.add("a3", {"dsc": 0.5, "hd95": 4.0}, dataset="A", modality="CT")
    acc.add("b1", {"dsc": 0.2, "hd95": 8.0}, dataset="B", modality="MR")
    return acc


def test_group_means_and_medians():
    acc = _filled()
    by_dataset = {s.dataset: s for s in acc.summary("dsc", by=("dataset",))}
    assert list(by_dataset) == ["A", "B"]
    assert by_dataset["A"].mean == pytest.approx(0.7) and by_dataset["A"].median == pytest.approx(0.7)
    assert by_dataset["A"].n == 3 and by_dataset["A"].modality is None
    assert by_dataset["B"].ci_low == by_dataset["B"].ci_high == 0.2  # one case: a point interval
    pooled = acc.summary("dsc", by=())
    assert len(pooled) == 1 and pooled[0].mean == pytest.approx(2.3 / 4) and pooled[0].dataset is None
    both = acc.summary("dsc", by=("dataset", "modality"))
    assert [(s.dataset, s.modality) for s in both] == [("A", "CT"), ("B", "MR")]


def test_nonfinite_values_are_counted_not_averaged():
    hd = {s.dataset: s for s in _filled().summary("hd95")}
    assert hd["A"].n == 3 and hd["A"].n_nonfinite == 1
    assert hd["A"].mean == pytest.approx(3.0) and math.isfinite(hd["A"].ci_high)


def test_ci_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).uniform(0.5, 1.0, 40)
    low, high = bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap_ci(values, seed=3)
    assert low < values.mean() < high
    # the interval of a mean shrinks like 1/sqrt(n): roughly 2 * 1.96 * sd / sqrt(n)
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(values.size), rel=0.2)
    assert bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    a = _filled().summary("dsc")
    b = _filled().summary("dsc")
    assert a == b


def test_scores_record_and_all_metric_summaries():
    acc = MetricAccumulator()
    scores = score_case(square(10, 12), square(10, 10))
    assert isinstance(scores, SegmentationScores)
    assert scores.dsc == pytest.approx(0.8) and scores.nsd == 1.0 and scores.hd95 == 2.0
    acc.add("c", scores, dataset="toy", modality="synthetic")
    assert acc.metrics == ("dsc", "iou", "nsd", "nsd_challenge", "hd95")
    assert [s.metric for s in acc.summaries()] == list(acc.metrics)
    assert acc.records[0].values["iou"] == pytest.approx(2 / 3)
    assert len(acc) == 1


def test_empty_case_scores_have_no_nan():
    empty = np.zeros((20, 20), bool)
    s = score_case(empty, square(5, 5, shape=(20, 20)), hd95_empty_value=28.3)
    assert (s.dsc, s.iou, s.nsd, s.nsd_challenge, s.hd95) == (0.0, 0.0, 0.0, 0.0, 28.3)
    s = score_case(empty, empty)
    assert (s.dsc, s.iou, s.nsd, s.nsd_challenge, s.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)


def test_accumulator_errors():
    acc = _filled()
    with pytest.raises(InputError, match="already added"):
        acc.add("a1", {"dsc": 0.1}, dataset="A")
    acc.add("a1", {"dsc": 0.1}, dataset="C")  # same id in another dataset is another case
    with pytest.raises(InputError, match="no case has metric"):
        acc.summary("nsd")
    with pytest.raises(InputError, match="group only by"):
        acc.summary("dsc", by=("case",))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="non-numeric"):
        acc.add("x", {"dsc": "high"})  # type: ignore[dict-item]
