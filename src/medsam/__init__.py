"""medsam: segment anything in medical images.

Heavy modules (torch, model code) are imported lazily so that ``import medsam`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": "medsam.models.registry",
    "list_models": "medsam.models.registry",
    "get_spec": "medsam.models.registry",
    "load_checkpoint": "medsam.models.checkpoints",
    "Predictor": "medsam.inference.predictor",
    "read_image": "medsam.io.raster",
    "write_mask_png": "medsam.io.raster",
    "write_overlay_png": "medsam.io.raster",
    "Box": "medsam.types",
    "Points": "medsam.types",
    "Prediction": "medsam.types",
    "Volume": "medsam.types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medsam' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = sorted(_LAZY) + ["__version__"]
