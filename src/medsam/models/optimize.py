"""An inference copy of a SAM-family model: the same function with less work per call.

``inference_copy(model)`` returns a deep copy in eval mode in which

- every ``Conv2dBN`` (TinyViT) is folded into one ``Conv2d`` with a bias (BatchNorm in eval mode is an
  affine map per channel, so ``conv(x) * a + b`` becomes one convolution with scaled weights);
- TinyViT window attention uses its relative-position bias gathered once (a buffer), and explicit
  ``softmax(q k^T * scale + bias) v`` instead of SDPA with a float mask (PyTorch's CPU SDPA scans a float mask
  for fully masked rows on every call, which costs as much as the attention itself here);
- the prompt encoder's dense positional encoding of the embedding grid is computed once and kept.

The original model is not touched: its state dict stays loadable and its outputs match the golden files
exactly. The copy agrees with it to float rounding (about 1e-6 relative) and is what the fast engines run
and what the ONNX export traces.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from medsam.models.prompt_encoder import PromptEncoder
from medsam.models.tiny_vit import Conv2dBN, TinyViT, WindowAttention


def fold_conv_bn(block: Conv2dBN) -> nn.Conv2d:
    """A Conv2d with bias equal to ``block`` (conv without bias, then BatchNorm2d in eval mode)."""
    conv, bn = block.c, block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        groups=conv.groups, bias=True,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused.to(conv.weight.device)


class FixedBiasWindowAttention(nn.Module):
    """``WindowAttention`` with the gathered bias stored and the attention written out."""

    def __init__(self, attn: WindowAttention) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.head_dim**-0.5
        self.norm = attn.norm
        self.qkv = attn.qkv
        self.proj = attn.proj
        self.register_buffer("bias", attn.bias().detach().clone().unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2).chunk(3, dim=-1)
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1)) + self.bias.to(q.dtype)
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class CachedDensePE(nn.Module):
    """Stands in for ``PromptEncoder.get_dense_pe``: the (1, C, h, w) grid encoding, computed once."""

    def __init__(self, prompt_encoder: PromptEncoder) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("pe", prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.pe


def _replace_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Conv2dBN):
            setattr(module, name, fold_conv_bn(child))
        elif isinstance(child, WindowAttention):
            setattr(module, name, FixedBiasWindowAttention(child))
        else:
            _replace_children(child)


def optimize_encoder(encoder: nn.Module, *, in_place: bool = False) -> nn.Module:
    """An inference copy of an image encoder (TinyViT gets folded BN and fixed attention bias; others a copy)."""
    fast = (encoder if in_place else copy.deepcopy(encoder)).eval()
    if isinstance(fast, TinyViT):
        _replace_children(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


def inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of a SamModel for inference only (see the module docstring). ``model`` is unchanged."""
    fast = copy.deepcopy(model).eval()
    optimize_encoder(fast.image_encoder, in_place=True)
    fast.prompt_encoder.get_dense_pe = CachedDensePE(fast.prompt_encoder)  # type: ignore[method-assign]
    for p in fast.parameters():
        p.requires_grad_(False)
    if hasattr(model, "spec"):
        fast.spec = model.spec  # type: ignore[attr-defined]
    return fast


__all__ = ["fold_conv_bn", "FixedBiasWindowAttention", "CachedDensePE", "optimize_encoder", "inference_copy"]
