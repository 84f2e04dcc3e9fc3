"""A run's files on disk: atomic checkpoint writes, the resumable training state, the model card.

- ``best.pt``: ``{"model": state_dict, "medsam": card}``, the weights with the best validation DSC in the
  base model's key layout (LoRA adapters merged), so every command loads it with ``--checkpoint``; the card
  is also written beside it as ``model_card.json``.
- ``last.pt``: the same plus everything needed to continue: optimizer, scheduler, AMP scaler, epoch and
  step, best-so-far and patience counters, the metrics history and the RNG states (python, numpy, torch,
  CUDA). LoRA runs keep their adapters unmerged here. Only tensors and plain Python values are stored, so
  it loads with ``weights_only=True``.

Every write goes to a temporary file in the run folder and is renamed over the old one: an interruption
mid-save leaves the previous file whole. ``best.pt`` is written before ``last.pt`` so the state never
records a best epoch whose weights are not on disk.
"""

from __future__ import annotations

import json
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam.errors import CheckpointError
from medsam.io.atomic import atomic_path

BEST = "best.pt"
LAST = "last.pt"
CARD = "model_card.json"


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(obj, tmp)


def write_json_atomic(data: Any, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate needs tuples; a round trip may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def load_state(path: Path) -> dict[str, Any]:
    """Read a run's ``last.pt``; a missing or damaged file is a CheckpointError that says what to do."""
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: the run folder holds no resumable state (it is written at the end of "
            "each epoch). Start a new run instead of --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(exc).__name__)
        raise CheckpointError(f"{path} cannot be read as a training state ({why}); it may be damaged or from "
                              f"another toolkit. {BEST} in the same folder is written separately") from exc
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "step") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training state of this toolkit (missing {', '.join(missing)})")
    return state
