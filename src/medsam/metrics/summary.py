"""Collecting per-case metric values and summarising them per dataset and modality.

Statistics (mean, median, percentile-bootstrap confidence interval of the mean) are computed over the
finite values only; ``inf`` (e.g. HD95 with an empty prediction) and NaN values are left out and counted
in ``Summary.n_nonfinite`` so a table can show them beside the mean. The bootstrap is seeded: the same
values give the same interval on every run and in every call order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from medsam.errors import InputError
from medsam.metrics.scores import SegmentationScores

GroupKey = Literal["dataset", "modality"]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the cases with replacement ``n_resamples`` times.

    Returns (low, high); (v, v) for a single value and (nan, nan) for none. ``values`` must be finite.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return (math.nan, math.nan)
    if not np.all(np.isfinite(x)):
        raise InputError("bootstrap_ci: values contain inf or NaN; drop them first (MetricAccumulator does)")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"bootstrap_ci: confidence {confidence} must lie strictly between 0 and 1")
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // x.size)  # bound the (resamples, cases) index array's memory
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


@dataclass(frozen=True)
class CaseRecord:
    """One case's metric values with its identity and groups."""

    case_id: str
    dataset: str
    modality: str
    values: Mapping[str, float]


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric over one group of cases.

    dataset / modality: the group's value, or None when the summary pools over that key.
    n: cases that have this metric; n_nonfinite: how many of them are inf/NaN and left out of the
    statistics; mean / median / ci_low / ci_high over the finite ones (NaN when none is finite).
    """

    metric: str
    dataset: str | None
    modality: str | None
    n: int
    n_nonfinite: int
    mean: float
    median: float
    ci_low: float
    ci_high: float
    confidence: float


class MetricAccumulator:
    """Collects per-case metric values with case ids and groups, and summarises them.

    >>> acc = MetricAccumulator(seed=0)
    >>> acc.add("case_01", {"dsc": 0.9}, dataset="polyp", modality="endoscopy")  # doctest: +ELLIPSIS
    CaseRecord(...)
    >>> [s.mean for s in acc.summary("dsc", by=("dataset",))]
    [0.9]

    One accumulator holds one model/mode; make one per model to compare them side by side.
    """

    def __init__(self, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> None:
        if not 0.0 < confidence < 1.0:
            raise InputError(f"confidence {confidence} must lie strictly between 0 and 1 (e.g. 0.95)")
        if n_resamples < 1:
            raise InputError(f"n_resamples {n_resamples} must be at least 1 (e.g. 2000)")
        self.confidence = confidence
        self.n_resamples = n_resamples
        self.seed = seed
        self._records: list[CaseRecord] = []
        self._keys: set[tuple[str, str]] = set()
        self._metrics: dict[str, None] = {}

    def add(
        self,
        case_id: str,
        values: SegmentationScores | Mapping[str, float],
        *,
        dataset: str = "",
        modality: str = "",
    ) -> CaseRecord:
        """Record one case's values. A case id may appear once per dataset (InputError otherwise)."""
        if (dataset, case_id) in self._keys:
            raise InputError(
                f"case {case_id!r} of dataset {dataset!r} was already added: give each case a unique id "
                "(use one accumulator per model or mode)"
            )
        raw = values.as_dict() if isinstance(values, SegmentationScores) else dict(values)
        clean: dict[str, float] = {}
        for name, value in raw.items():
            try:
                clean[str(name)] = float(value)
            except (TypeError, ValueError) as exc:
                raise InputError(f"case {case_id!r}: metric {name!r} has non-numeric value {value!r}") from exc
        record = CaseRecord(str(case_id), str(dataset), str(modality), MappingProxyType(clean))
        self._records.append(record)
        self._keys.add((dataset, case_id))
        for name in clean:
            self._metrics.setdefault(name, None)
        return record

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> tuple[CaseRecord, ...]:
        return tuple(self._records)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names in the order first seen."""
        return tuple(self._metrics)

    def values(self, metric: str, *, dataset: str | None = None, modality: str | None = None) -> np.ndarray:
        """All values of ``metric`` (including inf/NaN), optionally of one dataset and/or modality."""
        return np.array(
            [
                r.values[metric]
                for r in self._records
                if metric in r.values
                and (dataset is None or r.dataset == dataset)
                and (modality is None or r.modality == modality)
            ],
            dtype=np.float64,
        )

    def summary(self, metric: str, *, by: Iterable[GroupKey] = ("dataset",)) -> list[Summary]:
        """One Summary per group of ``by`` (any of "dataset", "modality"; empty = all cases pooled).

        Groups come in order of first appearance. Raises InputError for an unknown metric or key.
        """
        keys = tuple(by)
        bad = [k for k in keys if k not in ("dataset", "modality")]
        if bad:
            raise InputError(f"summary by {bad}: group only by 'dataset' and/or 'modality'")
        if metric not in self._metrics:
            raise InputError(f"no case has metric {metric!r}; known metrics: {', '.join(self._metrics) or 'none'}")
        groups: dict[tuple[str | None, str | None], None] = {}
        for r in self._records:
            if metric in r.values:
                groups.setdefault(
                    (r.dataset if "dataset" in keys else None, r.modality if "modality" in keys else None), None
                )
        return [self._summarise(metric, dataset, modality) for dataset, modality in groups]

    def summaries(self, *, by: Iterable[GroupKey] = ("dataset",)) -> list[Summary]:
        """:meth:`summary` of every metric, metric by metric."""
        keys = tuple(by)
        return [s for m in self._metrics for s in self.summary(m, by=keys)]

    def _summarise(self, metric: str, dataset: str | None, modality: str | None) -> Summary:
        x = self.values(metric, dataset=dataset, modality=modality)
        finite = x[np.isfinite(x)]
        low, high = bootstrap_ci(
            finite, confidence=self.confidence, n_resamples=self.n_resamples, seed=self.seed
        )
        return Summary(
            metric=metric,
            dataset=dataset,
            modality=modality,
            n=int(x.size),
            n_nonfinite=int(x.size - finite.size),
            mean=float(finite.mean()) if finite.size else math.nan,
            median=float(np.median(finite)) if finite.size else math.nan,
            ci_low=low,
            ci_high=high,
            confidence=self.confidence,
        )
