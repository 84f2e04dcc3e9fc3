"""The run's metrics table (``metrics.csv``) and its loss / DSC curves (``curves.png``, matplotlib Agg from the
``eval`` extra; without matplotlib the curves are skipped with a warning)."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

from medsam.io.atomic import atomic_path

COLUMNS = ("epoch", "step", "lr", "train_loss", "train_dice", "train_bce", "train_iou_mse", "train_true_iou",
           "val_dsc", "val_nsd", "val_nsd_challenge", "seconds")


def write_metrics_csv(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """One row per epoch (epoch 0 = the model before training, validation only)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in history:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue())


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_curves(history: Sequence[Mapping[str, float]], path: Path, *, title: str = "") -> bool:
    """Training loss and validation DSC/NSD per epoch; False (with a warning) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is not installed (pip install 'medsam-toolkit[eval]'): no curves.png",
                      stacklevel=2)
        return False
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_val = fig.subplots(1, 2)
    train = [r for r in history if _finite(r.get("train_loss"))]
    ax_loss.plot([r["epoch"] for r in train], [r["train_loss"] for r in train], "o-", label="total")
    for key, label in (("train_dice", "Dice"), ("train_bce", "BCE"), ("train_iou_mse", "IoU MSE")):
        ax_loss.plot([r["epoch"] for r in train], [r[key] for r in train], ".--", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8)
    val = [r for r in history if _finite(r.get("val_dsc"))]
    for key, label in (("val_dsc", "DSC"), ("val_nsd", "NSD (boundary)"), ("val_nsd_challenge", "NSD (challenge)")):
        ax_val.plot([r["epoch"] for r in val], [r[key] for r in val], "o-", label=label)
    ax_val.set_xlabel("epoch (0 = before training)")
    ax_val.set_ylabel("validation, tight box")
    ax_val.legend(fontsize=8)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return True


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
