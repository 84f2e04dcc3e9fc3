"""SAM's ViT image encoder (ViT-B/L/H): windowed and global attention with decomposed relative positions.

(B, 3, 1024, 1024) normalised images -> (B, 256, 64, 64) embeddings. Parameter names follow the official
SAM/MedSAM checkpoints (``patch_embed.proj``, ``pos_embed``, ``blocks.i.attn.rel_pos_h``, ``neck.*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.common import MLPBlock, neck


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


VIT_B = ViTConfig()
VIT_L = ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
VIT_H = ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Table (q_size, k_size, C) of learned embeddings for each query/key relative offset.

    When the stored table was learned for another size it is resized linearly, as SAM does.
    """
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        rel_pos = F.interpolate(rel_pos.t()[None], size=span, mode="linear")[0].t()
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


class RelPosAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
        bias = self._relative_bias(q, h, w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)

    def _relative_bias(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Additive attention bias (B, heads, HW, HW) from the decomposed height and width tables."""
        table_h = relative_position_table(h, h, self.rel_pos_h).to(q.dtype)
        table_w = relative_position_table(w, w, self.rel_pos_w).to(q.dtype)
        bh = q.shape[:2]
        r_q = q.reshape(*bh, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, table_h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, table_w)
        bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, heads, h, w, kh, kw)
        return bias.reshape(*bh, h * w, h * w)


class ViTBlock(nn.Module):
    def __init__(self, config: ViTConfig, window_size: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, config.num_heads, window_size if window_size > 0 else config.grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1:3]
            windows, padded_hw = partition_windows(x, self.window_size)
            x = unpartition_windows(self.attn(windows), self.window_size, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def partition_windows(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, ws, ws, C), zero-padding H and W up to multiples of ws."""
    b, h, w, c = x.shape
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
    return x, (hp, wp)


def unpartition_windows(
    windows: torch.Tensor, ws: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // ws) * (wp // ws))
    x = windows.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w].contiguous() if (hp > h or wp > w) else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


class ImageEncoderViT(nn.Module):
    def __init__(self, config: ViTConfig = VIT_B) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid, config.grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            [
                ViTBlock(config, 0 if i in config.global_attn_indexes else config.window_size)
                for i in range(config.depth)
            ]
        )
        self.neck = neck(config.embed_dim, config.out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
