"""Evaluation figures with matplotlib's Agg canvas (no pyplot, no display, no global state).

matplotlib is the ``eval`` extra: ``pip install 'medsam-toolkit[eval]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsam.errors import BackendUnavailableError
from medsam.evaluation.results import ClickCurve
from medsam.io.atomic import atomic_path


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise BackendUnavailableError("evaluation plots need matplotlib: pip install 'medsam-toolkit[eval]'") from exc
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path, overwrite: bool) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def dsc_boxplot(
    values: Sequence[Sequence[float]], labels: Sequence[str], path: str | Path, *, title: str = "", overwrite: bool = False
) -> Path:
    """One box of DSC values per run, side by side, with every case drawn as a dot."""
    fig = _figure(max(4.0, 1.6 * len(labels) + 1.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    data = [np.asarray(v, dtype=float) for v in values]
    ax.boxplot(data, showmeans=True, widths=0.5)
    ax.set_xticks(range(1, len(labels) + 1), labels=list(labels), rotation=20 if len(labels) > 2 else 0, ha="right" if len(labels) > 2 else "center", fontsize=8)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    for i, v in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, size=v.size), v, s=8, alpha=0.45, color="tab:blue")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("DSC")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, overwrite)


def click_curve_plot(curves: Sequence[ClickCurve], path: str | Path, *, overwrite: bool = False) -> Path:
    """Mean DSC before and after each corrective click, one line per run and dataset (all datasets dashed)."""
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for c in curves:
        label = f"{c.run} · {c.dataset or 'all'} (n={c.n})"
        ax.plot(range(len(c.mean_dsc)), c.mean_dsc, marker="o", linestyle="--" if c.dataset is None else "-", label=label)
    longest = max((len(c.mean_dsc) for c in curves), default=1)
    ax.set_xticks(range(longest))
    ax.set_xlabel("corrective clicks (0 = box only)")
    ax.set_ylabel("mean DSC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path, overwrite)
