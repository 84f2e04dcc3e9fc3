"""SAM 2's image encoder: the Hiera trunk (hierarchical windowed ViT) and the FPN neck with sine positions.

Attribute names follow the official checkpoints (``image_encoder.trunk.*``, ``image_encoder.neck.*``).
Tensors inside the trunk are channels-last (B, H, W, C); the neck works channels-first (B, C, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.mask_decoder import MLP
from medsam.models.sam2.config import HieraConfig


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, window, window, C), zero-padding H and W up to multiples of ``window``."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to (B, H, W, C), padding removed."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if (hp > h or wp > w) else x


def _pool_channels_last(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: (B, 3, S, S) -> (B, S/4, S/4, C)."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head attention over (B, H, W, C) tokens; queries are max-pooled when the stage changes."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1), 2)
        if self.q_pool is not None:
            q = _pool_channels_last(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with windowed (window > 0) or global attention and optional query pooling."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, q_stride: tuple[int, int] | None, window: int
    ) -> None:
        super().__init__()
        self.dim, self.dim_out, self.window_size = dim, dim_out, window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = _pool_channels_last(shortcut, self.pool)
        window = self.window_size
        if window > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.q_stride:
            window = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            padded = (h + (-h) % window, w + (-w) % window) if window > 0 else (h, w)
        if self.window_size > 0:
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """The trunk. ``forward`` returns each stage's features (B, C_i, H_i, W_i), highest resolution first."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        c = config
        if len(c.stages) != len(c.window_spec):
            raise ValueError("Hiera: one window size per stage")
        depth = sum(c.stages)
        self.stage_ends = [sum(c.stages[: i + 1]) - 1 for i in range(len(c.stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][: c.q_pool]
        self.patch_embed = PatchEmbed(c.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.embed_dim, *c.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, c.embed_dim, c.window_spec[0], c.window_spec[0]))
        self.blocks = nn.ModuleList()
        dim, heads, stage = c.embed_dim, c.num_heads, 0
        for i in range(depth):
            # The window size lags by one block: a stage's first block (which pools) still uses the previous
            # stage's window, so its pooled windows tile the new resolution exactly.
            window = 0 if i in c.global_att_blocks else c.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * c.dim_mul)
                heads = int(heads * c.head_mul)
                stage += 1
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, heads, c.mlp_ratio, c.q_stride if i in q_pool_blocks else None, window
            ))
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        pos = pos + window.tile([p // q for p, q in zip(pos.shape, window.shape)])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class PositionEmbeddingSine(nn.Module):
    """DETR-style 2D sine/cosine positions of a (B, C, H, W) map, normalised to [0, 2 pi]; cached per size."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("PositionEmbeddingSine needs an even width")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)

    @staticmethod
    def _interleave(values: torch.Tensor) -> torch.Tensor:
        return torch.stack((values[..., 0::2].sin(), values[..., 1::2].cos()), dim=-1).flatten(-2)

    @torch.no_grad()
    def grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(C, H, W) encoding of an H x W grid."""
        key = (h, w, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        eps = 1e-6
        ys = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        ys = ys / (ys[-1:] + eps) * self.scale
        xs = xs / (xs[-1:] + eps) * self.scale
        dim_t = self._frequencies(device)
        pos_y = self._interleave(ys[:, None] / dim_t)  # (H, C/2)
        pos_x = self._interleave(xs[:, None] / dim_t)  # (W, C/2)
        pos = torch.cat([pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)], dim=-1)
        pos = pos.permute(2, 0, 1).contiguous()
        self._cache[key] = pos
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.grid(int(x.shape[-2]), int(x.shape[-1]), x.device)
        return pos[None].expand(x.shape[0], -1, -1, -1)


class FpnNeck(nn.Module):
    """1x1 lateral convolutions to ``d_model`` channels, top-down (nearest 2x) sums on ``top_down_levels``."""

    def __init__(self, d_model: int, backbone_channel_list: list[int], top_down_levels: tuple[int, ...]) -> None:
        super().__init__()
        self.position_encoding = PositionEmbeddingSine(d_model)
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.top_down_levels = tuple(top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = len(self.convs) - 1
        features: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        positions: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        previous = None
        for i in range(n, -1, -1):  # lowest resolution first
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and previous is not None:
                top_down = F.interpolate(previous.to(torch.float32), scale_factor=2.0, mode="nearest")
                previous = lateral + top_down
            else:
                previous = lateral
            features[i] = previous
            positions[i] = self.position_encoding(previous).to(previous.dtype)
        return features, positions


class ImageEncoder(nn.Module):
    """Trunk + neck. Returns the FPN features and their positions, highest resolution first, with the
    ``scalp`` lowest-resolution levels dropped (SAM 2 uses strides 4, 8 and 16)."""

    def __init__(self, config: HieraConfig, d_model: int, top_down_levels: tuple[int, ...], scalp: int = 1) -> None:
        super().__init__()
        self.trunk = Hiera(config)
        self.neck = FpnNeck(d_model, self.trunk.channel_list, top_down_levels)
        self.scalp = scalp

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, positions = self.neck(self.trunk(images))
        if self.scalp > 0:
            features, positions = features[: -self.scalp], positions[: -self.scalp]
        return features, positions
