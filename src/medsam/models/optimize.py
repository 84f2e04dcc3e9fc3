"""An inference copy of a SAM-family model: the same function with less work per call.

``inference_copy(model)`` returns a deep copy in eval mode in which

- every ``Conv2dBN`` (TinyViT) is folded into one ``Conv2d`` with a bias (BatchNorm in eval mode is an
  affine map per channel, so ``conv(x) * a + b`` becomes one convolution with scaled weights);
- TinyViT window attention uses its relative-position bias gathered once (a buffer), and explicit
  ``softmax(q k^T * scale + bias) v`` instead of SDPA with a float mask (PyTorch's CPU SDPA scans a float mask
  for fully masked rows on every call, which costs as much as the attention itself here);
- the prompt encoder's dense positional encoding of the embedding grid is computed once and kept;
- the mask decoder works in token layout (``FastMaskDecoder``): each stride-2 ConvTranspose of the upscaling
  becomes one matmul to 4x the channels, LayerNorm2d a LayerNorm over the last axis, and the hypernetwork
  product is taken before the pixels are put in image order, so only the M masks are permuted, never the
  (B, 256, 64, 64) / (B, 32, 256, 256) feature maps; the positional encoding broadcasts instead of being
  copied per prompt.

The original model is not touched: its state dict stays loadable and its outputs match the golden files
exactly. The copy agrees with it to float rounding (about 1e-6 relative) and is what the fast engines run
and what the ONNX export traces.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.mask_decoder import MaskDecoder
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


class FastMaskDecoder(nn.Module):
    """``MaskDecoder`` computing the same function in token layout (see the module docstring)."""

    def __init__(self, dec: MaskDecoder) -> None:
        super().__init__()
        up1, norm, _, up2, _ = dec.output_upscaling
        if up1.kernel_size != (2, 2) or up1.stride != (2, 2) or up2.kernel_size != (2, 2) or up2.stride != (2, 2):
            raise ValueError("FastMaskDecoder expects two stride-2, 2x2 ConvTranspose upscaling layers")
        self.transformer = dec.transformer
        self.num_mask_tokens = dec.num_mask_tokens
        self.iou_token = dec.iou_token
        self.mask_tokens = dec.mask_tokens
        self.output_hypernetworks_mlps = dec.output_hypernetworks_mlps
        self.iou_prediction_head = dec.iou_prediction_head
        self.c1, self.c2 = up1.out_channels, up2.out_channels
        self.norm_eps = norm.eps
        with torch.no_grad():
            # ConvTranspose weight (Cin, Cout, 2, 2) -> (Cin, [di, dj, Cout]); output pixel (2i + di, 2j + dj).
            self.register_buffer("w1", up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, -1).clone(), persistent=False)
            self.register_buffer("b1", up1.bias.repeat(4).clone(), persistent=False)
            self.register_buffer("w2", up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, -1).clone(), persistent=False)
            self.register_buffer("b2", up2.bias.repeat(4).clone(), persistent=False)
            self.register_buffer("norm_weight", norm.weight.detach().clone(), persistent=False)
            self.register_buffer("norm_bias", norm.bias.detach().clone(), persistent=False)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep]

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        h, w = image_embeddings.shape[-2:]
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            dense_prompt_embeddings = dense_prompt_embeddings[:1]  # an expanded no-mask embedding: one copy broadcasts
        # (1 or B, C, h, w) + (B, C, h, w) broadcasts: one embedding serves every prompt
        keys = (image_embeddings + dense_prompt_embeddings).flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (1, hw, C), broadcast over the prompts
        t = self.transformer
        queries = tokens
        for layer in t.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        hs = t.norm_final_attn(queries + t.final_attn_token_to_image(q, k, keys))

        b = keys.shape[0]
        y = torch.matmul(keys, self.w1) + self.b1  # (B, hw, 4 * c1)
        y = F.gelu(F.layer_norm(y.view(b, h * w * 4, self.c1), (self.c1,), self.norm_weight, self.norm_bias, self.norm_eps))
        y = F.gelu(torch.matmul(y, self.w2) + self.b2)  # (B, hw * 4, 4 * c2)
        hyper_in = torch.stack(
            [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, M, c2)
        m = hyper_in.shape[1]
        masks = torch.matmul(y.view(b, h * w * 16, self.c2), hyper_in.transpose(1, 2))  # (B, hw*16, M)
        # (i, j, di, dj, ei, ej) -> row 4i + 2di + ei, column 4j + 2dj + ej
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)
        return masks, self.iou_prediction_head(hs[:, 0, :])


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
    if isinstance(fast.mask_decoder, MaskDecoder):
        fast.mask_decoder = FastMaskDecoder(fast.mask_decoder)
    fast.prompt_encoder.get_dense_pe = CachedDensePE(fast.prompt_encoder)  # type: ignore[method-assign]
    for p in fast.parameters():
        p.requires_grad_(False)
    if hasattr(model, "spec"):
        fast.spec = model.spec  # type: ignore[attr-defined]
    return fast


__all__ = ["fold_conv_bn", "FixedBiasWindowAttention", "CachedDensePE", "FastMaskDecoder", "optimize_encoder", "inference_copy"]
