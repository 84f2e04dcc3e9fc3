"""Low-rank adapters (LoRA) on the image encoder's linear layers, and folding them back into plain weights.

``apply_lora(model, rank=8, alpha=16, targets=("qkv", "proj", "fc1", "fc2"))`` replaces each matching
``nn.Linear`` of ``model.image_encoder`` (matched by its attribute name: attention ``qkv``/``proj``, TinyViT
MLP ``fc1``/``fc2``, SAM ViT MLP ``lin1``/``lin2``) by a :class:`LoRALinear`, which keeps the frozen weight
under the same state-dict key and adds ``lora_A`` (r x in) and ``lora_B`` (out x r):

    y = x W^T + b + (alpha / r) * x A^T B^T        B starts at zero, so the model starts unchanged.

``merge_lora(model)`` folds every adapter into its weight (W + (alpha / r) B A) and puts plain
``nn.Linear`` layers back, so the state dict has exactly the base model's keys and loads with the normal
checkpoint loader.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from medsam.errors import InputError

DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2", "lin1", "lin2")


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank update; the base weight and bias are frozen."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, alpha: float,
                 dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.lora_A = nn.Parameter(torch.empty(self.rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> "LoRALinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, rank, alpha, dropout,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.weight.requires_grad_(False)
        if layer.bias is not None:
            layer.bias.requires_grad_(False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = super().forward(x)
        update = (self.lora_dropout(x) @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype)
        return base + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the adapter folded in."""
        plain = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
            plain.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain


def _targets(targets: Sequence[str]) -> set[str]:
    names = {t.strip() for t in targets if t.strip()}
    if not names:
        raise InputError("LoRA targets are empty; give layer names such as qkv proj fc1 fc2")
    return names


def apply_lora(
    model: nn.Module, *, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> list[str]:
    """Put adapters on the matching linear layers of ``model.image_encoder``; return their qualified names.

    Raises InputError when rank < 1 or no layer matches (naming the encoder's linear layer names).
    """
    if int(rank) < 1:
        raise InputError(f"LoRA rank {rank} must be at least 1 (e.g. 4, 8 or 16)")
    wanted = _targets(targets)
    encoder = model.image_encoder
    replaced: list[str] = []
    linear_names: set[str] = set()
    for parent_name, parent in list(encoder.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                linear_names.add(child_name)
                if child_name in wanted:
                    setattr(parent, child_name, LoRALinear.wrap(child, rank, alpha, dropout))
                    replaced.append(f"image_encoder.{parent_name}.{child_name}".replace("..", "."))
    if not replaced:
        raise InputError(
            f"no linear layer of the image encoder is named {', '.join(sorted(wanted))}; "
            f"its linear layers are named: {', '.join(sorted(linear_names)) or 'none'}"
        )
    return replaced


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight, in place; returns the model (now without LoRA keys)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                plain = child.merged()
                plain.train(child.training)
                setattr(parent, child_name, plain)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have after :func:`merge_lora`, without changing the model."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.weight"] = module.merged().weight.detach().clone()
    return state
