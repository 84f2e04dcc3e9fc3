"""TinyViT image encoder as used by LiteMedSAM (and MobileSAM), written for this toolkit.

Shape of the LiteMedSAM configuration (input 256x256):
    patch_embed (two 1x1 conv+BN, no downsampling)            -> 64 ch @ 256x256
    stage 0: MBConv blocks, merge (stride 2)                  -> 128 ch @ 128x128
    stage 1: windowed attention blocks, merge (stride 2)      -> 160 ch @ 64x64
    stage 2: windowed attention blocks, merge (stride 1)      -> 320 ch @ 64x64
    stage 3: windowed attention blocks                        -> 320 ch @ 64x64
    neck                                                      -> 256 ch @ 64x64

Module and parameter names follow the official checkpoints so they load under a strict key check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.common import neck


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    # Stride of the patch merging that ends stages 0..n-2; the last merge keeps the resolution so the
    # embedding stays at img_size / 4 (64x64 for 256 px input), as SAM's decoder expects.
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256

    def stage_resolutions(self) -> list[int]:
        res = [self.img_size]
        for stride in self.merge_strides:
            res.append(-(-res[-1] // stride))
        return res


class Conv2dBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (keys ``c`` and ``bn``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU after the sum."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, strided 3x3 depthwise conv, 1x1 conv. Takes (B, C, H, W) or tokens; returns tokens."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b = x.shape[0]
            x = x.view(b, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


def _window_bias_index(window: int) -> torch.Tensor:
    """Index of the learned bias for each (query, key) pair of a window: |dy| * window + |dx|.

    This is the order in which the official code first meets each offset when it walks the window
    row by row, so the stored ``attention_biases`` columns line up with it.
    """
    ys, xs = np.divmod(np.arange(window * window), window)
    idx = np.abs(ys[:, None] - ys[None, :]) * window + np.abs(xs[:, None] - xs[None, :])
    return torch.from_numpy(idx.astype(np.int64))


class WindowAttention(nn.Module):
    """Multi-head attention inside one window, with a learned bias per relative offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", _window_bias_index(window), persistent=False)

    def bias(self) -> torch.Tensor:
        return self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        # The checkpoint lays out qkv per head as [q | k | v], not as [all q | all k | all v].
        q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias().to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv, MLP; tokens in and out as (B, H*W, C)."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = Conv2dBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h = w = self.resolution
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        # Zero padding goes in before the attention's LayerNorm, and the padded tokens take part as
        # keys: that is what the weights were trained with, so it is kept.
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            x = x[:, :h, :w]
        return x.reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x + self._windowed_attention(x)
        x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.local_conv(x).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    def __init__(self, dim, resolution, depth, num_heads, window, mlp_ratio, local_conv, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(
            [TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio, local_conv) for _ in range(depth)]
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT encoder: (B, 3, S, S) normalised images -> (B, out_chans, S/4, S/4) embeddings."""

    def __init__(self, config: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        dims, res = config.embed_dims, config.stage_resolutions()
        n = len(dims)
        self.patch_embed = PatchEmbed(config.in_chans, dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            downsample = None
            if i < n - 1:
                downsample = PatchMerging(res[i], dims[i], dims[i + 1], config.merge_strides[i])
            if i == 0:
                stage: nn.Module = ConvStage(dims[0], config.depths[0], config.mbconv_expand_ratio, downsample)
            else:
                stage = AttentionStage(
                    dims[i], res[i], config.depths[i], config.num_heads[i], config.window_sizes[i],
                    config.mlp_ratio, config.local_conv_size, downsample,
                )
            self.layers.append(stage)
        self.out_resolution = res[-1]
        self.neck = neck(dims[-1], config.out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_resolution, self.out_resolution, c).permute(0, 3, 1, 2)
        return self.neck(x)
