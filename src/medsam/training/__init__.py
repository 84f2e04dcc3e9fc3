"""Fine-tuning: datasets, prompt simulation, losses and the training loop.

``finetune(FinetuneConfig(...))`` runs a fine-tuning job (see :mod:`medsam.training.trainer`);
``apply_lora`` / ``merge_lora`` put low-rank adapters on an encoder and fold them back. The heavy modules
are imported on first use, so ``medsam.training.prompts`` stays a pure numpy import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "FinetuneConfig": "medsam.training.trainer",
    "FinetuneResult": "medsam.training.trainer",
    "finetune": "medsam.training.trainer",
    "apply_lora": "medsam.training.lora",
    "merge_lora": "medsam.training.lora",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medsam.training' has no attribute {name!r}")
    return getattr(import_module(module), name)
