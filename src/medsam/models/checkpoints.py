"""One loader for every checkpoint format people have.

- official ``.pth``/``.pt`` state dicts (SAM, MedSAM, LiteMedSAM): bare, under "model" or "state_dict",
  with or without a DistributedDataParallel ``module.`` prefix;
- our own fine-tuned files (``{"model": state_dict, "medsam": {...model card...}}``);
- a ``.safetensors`` file in the official key layout;
- the Hugging Face ``SamModel`` layout, as a local folder (config.json + model.safetensors or
  pytorch_model.bin) or a single file with ``vision_encoder.*`` keys; its keys are remapped.

Everything is read on the CPU with ``weights_only=True``; nothing is ever downloaded.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medsam.errors import CheckpointError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedCheckpoint:
    """A state dict in the official key layout and what is known about where it came from."""

    state_dict: dict[str, torch.Tensor]
    path: Path
    format: str  # "torch", "safetensors", "huggingface"
    metadata: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read any supported checkpoint into an official-layout state dict (no model needed)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Give the path of a .pth/.pt/.safetensors file or of a "
            "Hugging Face SamModel folder (config.json + model.safetensors); nothing is downloaded"
        )
    if path.is_dir():
        return _read_hf_folder(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
        return _from_raw(state, path, "safetensors")
    raw = _torch_load(path)
    return _from_raw(raw, path, "torch")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch file ({message}). It may be truncated or not a "
            "checkpoint; files with arbitrary pickled objects are refused for safety (weights_only=True)"
        ) from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file but the 'safetensors' package is not installed: "
            "pip install safetensors"
        ) from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path} cannot be read as safetensors: {exc}") from exc


def _read_hf_folder(folder: Path) -> LoadedCheckpoint:
    config_path = folder / "config.json"
    weights = next((folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if not config_path.is_file() or weights is None:
        raise CheckpointError(
            f"checkpoint folder {folder} is not a Hugging Face SamModel folder: it needs config.json and one of "
            f"{', '.join(HF_WEIGHT_FILES)} (e.g. a local copy of flaviagiammarino/medsam-vit-base)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    raw = _read_safetensors(weights) if weights.suffix == ".safetensors" else _torch_load(weights)
    from medsam.models.hf import convert_hf_state_dict

    state = convert_hf_state_dict(_tensors_only(raw, weights), source=str(weights))
    return LoadedCheckpoint(state, folder, "huggingface", {"hf_config": config})


def _tensors_only(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(raw).__name__})")
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: entries {bad[:3]} are not tensors; expected a state dict, optionally under "
            "'model' or 'state_dict'"
        )
    return dict(raw)


def _from_raw(raw: Any, path: Path, fmt: str) -> LoadedCheckpoint:
    metadata: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        if isinstance(raw.get("medsam"), Mapping):
            metadata = dict(raw["medsam"])
        for key in ("model", "state_dict"):
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    state = _tensors_only(raw, path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if any(k.startswith("vision_encoder.") for k in state):
        from medsam.models.hf import convert_hf_state_dict

        state = convert_hf_state_dict(state, source=str(path))
        fmt = "huggingface"
    return LoadedCheckpoint(state, path, fmt, metadata)


def describe_architecture(state: Mapping[str, torch.Tensor]) -> str:
    """A guess at which model a state dict belongs to, for error messages."""
    trunk = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    if trunk:
        pos = state.get("image_encoder.trunk.pos_embed")
        width = int(pos.shape[1]) if pos is not None and pos.ndim == 4 else 0
        known = {(12, 96): "Hiera-T (--model sam2.1_hiera_t, or medsam2 for MedSAM2 files)",
                 (16, 96): "Hiera-S (--model sam2.1_hiera_s)", (24, 112): "Hiera-B+ (--model sam2.1_hiera_b+)",
                 (48, 144): "Hiera-L (--model sam2.1_hiera_l)"}
        name = known.get((len(trunk), width), f"a {len(trunk)}-block Hiera of width {width}")
        return f"a SAM 2 {name} model"
    if any(k.startswith("image_encoder.layers.") for k in state):
        return "a TinyViT (LiteMedSAM-style) model"
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    if blocks:
        depth = len(blocks)
        width = state.get("image_encoder.pos_embed", torch.empty(0, 0, 0, 0)).shape[-1]
        name = {12: "ViT-B", 24: "ViT-L", 32: "ViT-H"}.get(depth, f"a {depth}-block ViT")
        return f"a {name} SAM/MedSAM model (width {width})"
    if any(k.startswith("mask_decoder.") for k in state):
        return "a model with a mask decoder but no recognised image encoder"
    return "no SAM-family model (no image_encoder/mask_decoder keys)"


def load_into(model: nn.Module, checkpoint: LoadedCheckpoint, *, model_name: str) -> None:
    """Strictly load a checkpoint into a model; a mismatch names the missing and unexpected keys."""
    hf_config = checkpoint.metadata.get("hf_config")
    if checkpoint.format == "huggingface" and isinstance(hf_config, Mapping):
        from medsam.models.hf import check_hf_config

        check_hf_config(hf_config, model, model_name=model_name, source=checkpoint.path)
    state = checkpoint.state_dict
    expected = model.state_dict()
    family = getattr(getattr(model, "spec", None), "family", None) or (
        "sam2" if any(k.startswith("memory_attention.") for k in expected) else "sam"
    )
    if family == "sam2" and not any(k.startswith("image_encoder.trunk.") for k in state):
        spec = getattr(model, "spec", None)
        raise CheckpointError(
            f"checkpoint {checkpoint.path} is not a SAM 2 checkpoint: it looks like {describe_architecture(state)}, "
            f"while --model {model_name} is a SAM 2 memory model that needs a SAM 2.1 / MedSAM2 file "
            f"({{'model': state_dict}} with image_encoder.trunk.* and memory_attention.* keys). "
            + (getattr(spec, "checkpoint_hint", "") or "")
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} keys of another shape (e.g. {'; '.join(wrong_shape[:2])})")
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit model {model_name!r}: {', '.join(parts)}. "
            f"The file looks like {describe_architecture(state)}; choose the matching --model "
            "(see `medsam models`)"
        )
    # assign=True adopts the loaded tensors instead of copying them into freshly initialised ones: the copy
    # costs more than half a second for LiteMedSAM and start-up time matters. Dtypes follow the model.
    state = {k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
