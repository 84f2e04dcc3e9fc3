"""Device selection: CUDA when present (or asked for), else CPU."""

from __future__ import annotations

import torch

from medsam.errors import MedsamError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or "auto" picks CUDA when available, else CPU. Asking for CUDA on a machine without it is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise MedsamError(f"device {device!r} is not a valid torch device; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedsamError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu")
    return dev
