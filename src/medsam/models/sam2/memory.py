"""SAM 2's memory: the memory encoder (a frame's features fused with its mask) and memory attention
(the current frame's features attend to past memories and object pointers with rotary positions).

Attribute names follow the official checkpoints (``memory_encoder.*``, ``memory_attention.*``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.common import LayerNorm2d
from medsam.models.sam2.hiera import PositionEmbeddingSine
from medsam.models.transformer import Attention


# --- rotary positions -----------------------------------------------------------------------------------


def axial_rotary_frequencies(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations (end_x * end_y, dim / 2) of a 2D grid in raster order: the first dim/4 pairs turn
    with x, the last dim/4 with y."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = (t % end_x).float()
    t_y = torch.div(t, end_x, rounding_mode="floor").float()
    angles_x, angles_y = torch.outer(t_x, freqs), torch.outer(t_y, freqs)
    return torch.cat([torch.polar(torch.ones_like(angles_x), angles_x), torch.polar(torch.ones_like(angles_y), angles_y)], -1)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of (B, heads, N, dim) by complex ``freqs`` (N, dim / 2)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs.view(1, 1, *freqs.shape)).flatten(3).type_as(x)


class RoPEAttention(Attention):
    """Attention with 2D rotary positions on queries and keys. Keys may hold several frames' worth of
    tokens of the query grid (the rotations repeat per frame); the last ``num_k_exclude_rope`` keys (object
    pointers) are not rotated."""

    def __init__(self, embedding_dim: int, num_heads: int, kv_in_dim: int | None = None, rope_theta: float = 10000.0,
                 rope_k_repeat: bool = False) -> None:
        super().__init__(embedding_dim, num_heads, 1, kv_in_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._freqs: dict[tuple[int, str], torch.Tensor] = {}

    def _frequencies(self, n: int, device: torch.device) -> torch.Tensor:
        key = (n, str(device))
        if key not in self._freqs:
            side = int(round(math.sqrt(n)))
            if side * side != n:
                raise ValueError(f"rotary attention needs a square token grid, got {n} queries")
            head_dim = self.internal_dim // self.num_heads
            self._freqs[key] = axial_rotary_frequencies(head_dim, side, side, self.rope_theta).to(device)
        return self._freqs[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        freqs = self._frequencies(q.shape[-2], q.device)
        q = _rotate(q, freqs)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            repeat = n_rope // q.shape[-2]
            if repeat * q.shape[-2] != n_rope or (repeat > 1 and not self.rope_k_repeat):
                raise ValueError(f"{n_rope} rotary keys do not tile the {q.shape[-2]} query positions")
            k_freqs = freqs.repeat(repeat, 1) if repeat > 1 else freqs
            k = torch.cat([_rotate(k[:, :, :n_rope], k_freqs), k[:, :, n_rope:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


# --- memory attention ------------------------------------------------------------------------------------


class MemoryAttentionLayer(nn.Module):
    """Self-attention on the frame, cross-attention to the memories (positions on the keys), then an MLP;
    pre-norm, dropout inactive at inference."""

    def __init__(self, d_model: int, mem_dim: int, num_heads: int, dim_feedforward: int, rope_theta: float) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads, rope_theta=rope_theta)
        self.cross_attn_image = RoPEAttention(d_model, num_heads, kv_in_dim=mem_dim, rope_theta=rope_theta,
                                              rope_k_repeat=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_k_exclude_rope: int) -> torch.Tensor:
        x = self.norm1(tgt)
        tgt = tgt + self.self_attn(x, x, x)
        x = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(x, memory + memory_pos, memory, num_k_exclude_rope=num_k_exclude_rope)
        x = self.norm3(tgt)
        return tgt + self.linear2(F.relu(self.linear1(x)))


class MemoryAttention(nn.Module):
    """Condition a frame's tokens (B, HW, C) on memory tokens (B, M, mem_dim) with their positions."""

    def __init__(self, d_model: int, mem_dim: int, num_layers: int, num_heads: int, dim_feedforward: int,
                 rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [MemoryAttentionLayer(d_model, mem_dim, num_heads, dim_feedforward, rope_theta) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr: torch.Tensor, curr_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        x = curr + 0.1 * curr_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_obj_ptr_tokens)
        return self.norm(x)


# --- memory encoder --------------------------------------------------------------------------------------


class MaskDownSampler(nn.Module):
    """Mask (B, 1, S, S) -> (B, embed_dim, S/16, S/16): stride-2 convs, each with LayerNorm2d and GELU."""

    def __init__(self, embed_dim: int, kernel_size: int = 3, stride: int = 2, padding: int = 1, total_stride: int = 16) -> None:
        super().__init__()
        num_layers = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_layers != total_stride:
            raise ValueError("total_stride must be a power of stride")
        self.encoder = nn.Sequential()
        chans_in = 1
        for _ in range(num_layers):
            chans_out = chans_in * stride**2
            self.encoder.append(nn.Conv2d(chans_in, chans_out, kernel_size=kernel_size, stride=stride, padding=padding))
            self.encoder.append(LayerNorm2d(chans_out))
            self.encoder.append(nn.GELU())
            chans_in = chans_out
        self.encoder.append(nn.Conv2d(chans_in, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, pointwise MLP (x4, GELU), layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, padding: int = 3, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CXBlock(dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """A frame's features (B, C, H, W) and its mask (B, 1, S, S), already squashed to [bias, scale + bias],
    -> memory features (B, mem_dim, H, W) and their sine positions."""

    def __init__(self, in_dim: int, out_dim: int, num_fuser_layers: int = 2, stride: int = 2, total_stride: int = 16) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim, 3, stride, 1, total_stride)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, num_fuser_layers)
        self.position_encoding = PositionEmbeddingSine(out_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks = self.mask_downsampler(masks)
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)
