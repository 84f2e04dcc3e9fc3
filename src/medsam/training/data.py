"""Training data: which cases, how they are split, and the 2D samples (image, one object's mask) they give.

Cases are listed and read by the evaluation room, so training and evaluation agree on what a dataset is:
:func:`medsam.evaluation.cases.load_cases` lists a manifest (``cases.csv`` layout: ``dataset, case, modality,
dims, image, mask, label, target``, or a folder holding one), a folder pair ``images/`` + ``masks/``, or a
CVPR24 npz folder as :class:`~medsam.evaluation.cases.Case` values, and
:class:`~medsam.evaluation.loading.CaseLoader` reads a case's pixels (2D image as read; 3D volume after
the ``auto`` intensity window, as the volume commands do).

This module turns cases into 2D :class:`Sample` values: a 2D case is one sample; a 3D case gives its
non-empty slices (at most ``max_slices_per_volume``, evenly spaced; empty slices are skipped). A sample's
``image`` is exactly what inference gives :class:`medsam.inference.predictor.Predictor`, so training and
validation share its preprocessing.

Bad cases never crash a run mid-epoch: they are read and checked before training starts and skipped with
a counted reason (the evaluation loader's status: missing_file, shape_mismatch, empty_mask, unreadable,
bad_row; plus too_small for an object less than 2 px wide or high, which no box can prompt); when nothing
usable is left, :func:`load_samples` raises an InputError that lists the reasons.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medsam.errors import InputError
from medsam.evaluation.cases import Case, load_cases


@dataclass(frozen=True, eq=False)
class Sample:
    """One 2D training or validation item: an image and one object's mask on it.

    image: what the predictor is given at inference ((H, W) or (H, W, C) as read for 2D files, a windowed
        uint8 slice for volumes). mask: (H, W) bool, non-empty. spacing_mm: (y, x) in-plane pixel size for
        volume slices (None for 2D files: NSD is then in pixels).
    key: unique id: the case key ``dataset/case`` plus ``@z<slice>`` for volume slices.
    """

    key: str
    case_key: str
    dataset: str
    modality: str
    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    slice_z: int | None = None


@dataclass
class DataReport:
    """What loading found: cases used, samples made, and each skipped case with its status and reason."""

    cases_read: int = 0
    cases_used: int = 0
    samples: int = 0
    empty_slices: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (case key, status, message)

    def skip(self, what: str, status: str, message: str) -> None:
        self.skipped.append((what, status, message))

    def status_counts(self) -> dict[str, int]:
        return dict(Counter(status for _, status, _ in self.skipped).most_common())

    def describe(self) -> str:
        text = f"{self.samples} samples from {self.cases_used} of {self.cases_read} cases"
        if self.skipped:
            counts = ", ".join(f"{n} {s}" for s, n in self.status_counts().items())
            text += f" (skipped {len(self.skipped)}: {counts})"
        return text


# --- choosing and splitting ---------------------------------------------------------------------------


def read_cases(data: str | Path, *, datasets: Sequence[str] | None = None) -> list[Case]:
    """The cases of a manifest, an images/masks folder or an npz folder (the evaluation room's reader)."""
    return load_cases(data, datasets=datasets or None)


def select_cases(cases: Sequence[Case], case_ids: Iterable[str]) -> list[Case]:
    """The cases named by ``case_ids`` (``case`` or ``dataset/case``), in the order given."""
    index: dict[str, Case] = {}
    for c in cases:
        index.setdefault(c.key, c)
        index.setdefault(c.case_id, c)
    picked, missing = [], []
    for name in (i.strip() for i in case_ids):
        if name:
            (picked.append(index[name]) if name in index else missing.append(name))
    if missing:
        raise InputError(f"case id(s) {', '.join(missing[:5])} are not among the selected cases")
    return picked


def split_cases(cases: Sequence[Case], *, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """A seeded random split by image: cases that share an image file (several organs of one slice) stay
    on one side, so validation never sees a training image. Both sides keep the listed order."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_split {val_fraction} must lie strictly between 0 and 1 (e.g. 0.2)")
    groups: dict[Path, list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault(c.image_path, []).append(i)
    keys = list(groups)
    if len(keys) < 2:
        raise InputError("a validation split needs at least 2 distinct images; give --val with other data")
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(len(keys) - 1, max(1, int(round(val_fraction * len(keys)))))
    val_idx = {i for k in order[:n_val] for i in groups[keys[k]]}
    return ([c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx])


# --- loading samples ----------------------------------------------------------------------------------


def load_samples(
    cases: Sequence[Case],
    *,
    max_slices_per_volume: int = 16,
    report: DataReport | None = None,
    what: str = "training",
) -> tuple[list[Sample], DataReport]:
    """Read every case and make its 2D samples; bad cases are skipped and counted in the report.

    Raises InputError when no usable sample remains (naming the reasons), before any training step.
    """
    from medsam.evaluation.loading import CaseLoader, CaseProblem

    report = report if report is not None else DataReport()
    loader = CaseLoader()
    samples: list[Sample] = []
    for case in cases:
        report.cases_read += 1
        try:
            loaded = loader.load(case)
        except CaseProblem as exc:
            report.skip(case.key, exc.status, str(exc))
            continue
        except InputError as exc:
            report.skip(case.key, "unreadable", str(exc))
            continue
        if loaded.is_3d:
            made = _slices(case, loaded.image, loaded.reference, loaded.spacing_mm, max_slices_per_volume, report)
        else:
            made = _one(case, case.key, loaded.image, loaded.reference, None, None, report)
        if made:
            report.cases_used += 1
            samples.extend(made)
    report.samples = len(samples)
    if not samples:
        reasons = "; ".join(f"{w}: {m}" for w, _, m in report.skipped[:4])
        more = f" (and {len(report.skipped) - 4} more)" if len(report.skipped) > 4 else ""
        raise InputError(
            f"no usable {what} case among {report.cases_read}: {reasons or 'no case was given'}{more}. "
            "Check the image and mask paths, that each mask has its image's size and contains the label"
        )
    return samples, report


def _one(case: Case, key: str, image: np.ndarray, mask: np.ndarray, spacing, z, report: DataReport) -> list[Sample]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    if xs.max() == xs.min() or ys.max() == ys.min():
        report.skip(key, "too_small", f"{key}: the object is {xs.max() - xs.min() + 1}x{ys.max() - ys.min() + 1} px; "
                    "a box prompt needs at least 2x2")
        return []
    return [Sample(key, case.key, case.dataset, case.modality, image, np.ascontiguousarray(mask), spacing, z)]


def _slices(case: Case, volume: np.ndarray, reference: np.ndarray, spacing_zyx, max_slices: int,
            report: DataReport) -> list[Sample]:
    zs = np.nonzero(reference.any(axis=(1, 2)))[0]
    report.empty_slices += int(reference.shape[0] - zs.size)
    if zs.size > max_slices:
        zs = zs[np.unique(np.linspace(0, zs.size - 1, max_slices).round().astype(int))]
    spacing = (float(spacing_zyx[1]), float(spacing_zyx[2])) if spacing_zyx is not None else None
    out: list[Sample] = []
    for z in (int(v) for v in zs):
        out += _one(case, f"{case.key}@z{z}", np.ascontiguousarray(volume[z]), reference[z], spacing, z, report)
    return out
