"""Decode many prompts against one image embedding without repeating the image-side work for each.

SAM's mask decoder copies the image embedding once per prompt and runs every projection on all
64 x 64 image tokens of every copy. With one shared embedding and no mask prompt, much of that is the
same for every prompt or can be reordered, exactly (up to float rounding):

- first layer: the image tokens are the embedding plus the constant no-mask embedding, so the keys and
  values tokens attend to, and the queries the image sends back, are computed once per image;
- tokens attending to the image (later layers): instead of projecting 4,096 image tokens to keys and
  values, the few (about 7) token queries are projected back into the embedding space; the attention
  logits and the weighted sum of image tokens then cost heads x tokens x 4,096 x 256 instead of
  4,096 x 256 x 128 twice;
- the image attending to the tokens: the output of each image token is a mix of heads x tokens value
  vectors, so it is formed as a (4,096 x 56) by (56 x 256) product instead of through the 128-wide
  attention output and its projection;
- the upscaling runs as matrix products on channels-last features, and only the mask tokens asked for
  are turned into masks.

``SharedEmbeddingDecoder(model)`` is a drop-in for ``model.decode`` (same arguments, same outputs); calls
with a mask prompt or one embedding per prompt go to ``model.decode`` unchanged. The per-image part is
kept for the last embedding seen (the same tensor object, not changed in place since), so a segment-everything run pays it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class _ImageContext:
    embedding: torch.Tensor  # held, so its identity cannot pass to another tensor while cached
    key: tuple
    keys0: torch.Tensor  # (N, C) embedding + no-mask embedding
    pe: torch.Tensor  # (N, C) positional encoding
    k0: torch.Tensor  # (heads, N, d) first layer token->image keys
    v0: torch.Tensor  # (heads, N, d) first layer token->image values
    q0: torch.Tensor  # (heads, N, d) first layer image->token queries
    hw: tuple[int, int]


def _version(t: torch.Tensor) -> int:
    """The in-place version counter; inference tensors have none (and cannot be changed in place outside
    inference mode), so they count as version 0."""
    try:
        return int(t._version)
    except RuntimeError:
        return 0


def _heads(linear: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (Ci, C) as (heads, d, C) and bias as (heads, d)."""
    ci, c = linear.weight.shape
    return linear.weight.view(heads, ci // heads, c), linear.bias.view(heads, ci // heads)


class SharedEmbeddingDecoder:
    """``model.decode`` for many prompts on one embedding, sharing the per-image work (see module doc)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.decoder = model.mask_decoder
        self.transformer = self.decoder.transformer
        layers = list(self.transformer.layers)
        if not layers or not layers[0].skip_first_layer_pe or any(l.skip_first_layer_pe for l in layers[1:]):
            raise ValueError("SharedEmbeddingDecoder expects SAM's two-way transformer layout")
        self._context: _ImageContext | None = None
        self.name = "shared-embedding torch fp32"

    # --- per image ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def context(self, embedding: torch.Tensor) -> _ImageContext:
        key = (_version(embedding),)
        if self._context is not None and self._context.embedding is embedding and self._context.key == key:
            return self._context
        pe_mod = self.model.prompt_encoder
        c, h, w = embedding.shape[1:]
        keys0 = embedding[0].reshape(c, h * w).t() + pe_mod.no_mask_embed.weight  # (N, C)
        pe = pe_mod.get_dense_pe()[0].reshape(c, h * w).t()
        layer = self.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        n_heads = t2i.num_heads

        def split(x: torch.Tensor, heads: int) -> torch.Tensor:
            return x.view(x.shape[0], heads, -1).transpose(0, 1).contiguous()

        self._context = _ImageContext(
            embedding,
            key,
            keys0.contiguous(),
            pe.contiguous(),
            split(t2i.k_proj(keys0 + pe), n_heads),
            split(t2i.v_proj(keys0), n_heads),
            split(i2t.q_proj(keys0 + pe), i2t.num_heads),
            (h, w),
        )
        return self._context

    # --- per prompt batch -----------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask_input is not None or embeddings.shape[0] != 1:
            return self.model.decode(
                embeddings, boxes=boxes, points=points, point_labels=point_labels, mask_input=mask_input, multimask=multimask
            )
        ctx = self.context(embeddings)
        pts = (points, point_labels) if points is not None else None
        sparse, _ = self.model.prompt_encoder(points=pts, boxes=boxes, masks=None)
        dec = self.decoder
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        queries, keys = self._transformer(ctx, tokens)
        iou = dec.iou_prediction_head(queries[:, 0, :])
        wanted = list(range(1, dec.num_mask_tokens)) if multimask else [0]
        masks = self._masks(keys, queries[:, [1 + i for i in wanted], :], wanted, ctx.hw)
        return masks, iou[:, wanted]

    def _transformer(self, ctx: _ImageContext, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query_pe = tokens
        queries = tokens
        keys: torch.Tensor | None = None  # (B, N, C) once it differs per prompt
        for li, layer in enumerate(self.transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)

            attn = layer.cross_attn_token_to_image
            q = attn.q_proj(queries + query_pe)
            kp = None if keys is None else keys + ctx.pe
            if kp is None:
                out = _attend_shared(q, ctx.k0, ctx.v0, attn.num_heads)
            else:
                out = _attend_projected(q, kp, keys, attn)
            queries = layer.norm2(queries + attn.out_proj(out))
            queries = layer.norm3(queries + layer.mlp(queries))

            attn = layer.cross_attn_image_to_token
            kq = attn.k_proj(queries + query_pe)
            vq = attn.v_proj(queries)
            base = ctx.keys0 if keys is None else keys
            if kp is None:
                delta = _image_to_tokens_shared(ctx.q0, kq, vq, attn)
            else:
                delta = _image_to_tokens_projected(kp, kq, vq, attn)
            keys = layer.norm4(base + delta)
        attn = self.transformer.final_attn_token_to_image
        q = attn.q_proj(queries + query_pe)
        out = _attend_projected(q, keys + ctx.pe, keys, attn)
        queries = self.transformer.norm_final_attn(queries + attn.out_proj(out))
        return queries, keys

    def _masks(self, keys: torch.Tensor, mask_tokens: torch.Tensor, wanted: list[int], hw: tuple[int, int]) -> torch.Tensor:
        """Upscale the image tokens (B, N, C) and dot them with the hypernetwork outputs of ``wanted`` tokens.

        Each kernel-2, stride-2 transposed convolution writes a 2 x 2 block per input pixel, i.e. is one
        matrix product; the features stay in that block order (pixel, block of the first conv, block of
        the second) and only the final mask logits are put back in raster order.
        """
        dec = self.decoder
        up1, ln, act1, up2, act2 = dec.output_upscaling
        b, n, _ = keys.shape
        h, w = hw
        x = F.linear(keys, *_as_linear(up1))  # (B, N, 4*C1)
        c1 = up1.weight.shape[1]
        x = act1(F.layer_norm(x.view(b, n * 4, c1), (c1,), ln.weight, ln.bias, ln.eps))
        x = act2(F.linear(x, *_as_linear(up2)))  # (B, N*4, 4*C2)
        c2 = up2.weight.shape[1]
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens[:, j, :]) for j, i in enumerate(wanted)], dim=1)
        masks = torch.bmm(hyper, x.view(b, n * 16, c2).transpose(1, 2))  # (B, M, N*16) in block order
        m = len(wanted)
        masks = masks.view(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return masks.reshape(b, m, 4 * h, 4 * w)


def _as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel-2, stride-2 ConvTranspose2d as a linear map from one input pixel's channels to its 2 x 2
    output block: weight (4*Cout, Cin) ordered (ky, kx, Cout), bias repeated per block position."""
    cin, cout = conv.weight.shape[:2]
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    return weight, conv.bias.repeat(4)


def _softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (the 5-10 prompt tokens) or any axis, on a fresh tensor: torch's
    kernel is slow for millions of rows of a few elements."""
    x = x - x.amax(dim=-1, keepdim=True)
    x.exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


def _attend_shared(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Tokens (B, t, Ci) attend to per-image keys/values (heads, N, d) shared by the batch -> (B, t, Ci)."""
    b, t, ci = q.shape
    qh = q.view(b, t, heads, ci // heads).transpose(1, 2)  # (B, heads, t, d)
    logits = torch.matmul(qh, k.transpose(1, 2)) / math.sqrt(ci // heads)  # (B, heads, t, N)
    out = torch.matmul(logits.softmax(dim=-1), v)  # (B, heads, t, d)
    return out.transpose(1, 2).reshape(b, t, ci)


def _attend_projected(q: torch.Tensor, kin: torch.Tensor, vin: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Tokens (B, t, Ci) attend to k_proj(kin), v_proj(vin) with kin, vin (B, N, C), without projecting the
    N image tokens: the queries are mapped back through k_proj's weight and the attended sum of vin is
    projected afterwards (the attention weights of a row sum to one, so the bias passes through)."""
    heads = attn.num_heads
    b, t, ci = q.shape
    d = ci // heads
    wk, bk = _heads(attn.k_proj, heads)
    wv, bv = _heads(attn.v_proj, heads)
    qh = q.view(b, t, heads, d).transpose(1, 2)  # (B, heads, t, d)
    qk = torch.einsum("bhtd,hdc->bhtc", qh, wk).reshape(b, heads * t, -1)  # (B, heads*t, C)
    logits = torch.bmm(qk, kin.transpose(1, 2)).view(b, heads, t, -1)
    logits = (logits + torch.einsum("bhtd,hd->bht", qh, bk)[..., None]) / math.sqrt(d)
    p = logits.softmax(dim=-1).view(b, heads * t, -1)
    pooled = torch.bmm(p, vin).view(b, heads, t, -1)  # (B, heads, t, C)
    out = torch.einsum("bhtc,hdc->bhtd", pooled, wv) + bv[None, :, None, :]
    return out.transpose(1, 2).reshape(b, t, ci)


def _mix_values(a: torch.Tensor, vq: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Attention weights a (B, N, heads, t) over token values vq (B, t, Ci) -> out_proj of the result (B, N, C)."""
    heads = attn.num_heads
    b, t, ci = vq.shape
    d = ci // heads
    wo = attn.out_proj.weight  # (C, Ci)
    vh = vq.view(b, t, heads, d).transpose(1, 2)  # (B, heads, t, d)
    u = torch.einsum("bhtd,chd->bhtc", vh, wo.view(wo.shape[0], heads, d)).reshape(b, heads * t, -1)
    n = a.shape[1]
    return torch.bmm(a.reshape(b, n, heads * t), u) + attn.out_proj.bias


def _image_to_tokens_shared(q0: torch.Tensor, kq: torch.Tensor, vq: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """First layer: image queries (heads, N, d) shared, token keys/values (B, t, Ci) -> (B, N, C)."""
    heads = attn.num_heads
    b, t, ci = kq.shape
    d = ci // heads
    kh = kq.view(b, t, heads, d).permute(2, 3, 0, 1).reshape(heads, d, b * t)  # (heads, d, B*t)
    logits = torch.bmm(q0, kh).view(heads, -1, b, t)  # (heads, N, B, t)
    a = _softmax_last(logits * (1.0 / math.sqrt(d))).permute(2, 1, 0, 3)  # (B, N, heads, t)
    return _mix_values(a, vq, attn)


def _image_to_tokens_projected(qin: torch.Tensor, kq: torch.Tensor, vq: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Later layers: image queries q_proj(qin), qin (B, N, C), without projecting them: the token keys are
    mapped back through q_proj's weight. Returns out_proj of the attention output (B, N, C)."""
    heads = attn.num_heads
    b, t, ci = kq.shape
    d = ci // heads
    wq, bq = _heads(attn.q_proj, heads)
    kh = kq.view(b, t, heads, d).transpose(1, 2)  # (B, heads, t, d)
    m = torch.einsum("bhtd,hdc->bhtc", kh, wq).reshape(b, heads * t, -1)  # (B, heads*t, C)
    logits = torch.bmm(qin, m.transpose(1, 2)).view(b, -1, heads, t)  # (B, N, heads, t)
    logits = (logits + torch.einsum("bhtd,hd->bht", kh, bq)[:, None]) * (1.0 / math.sqrt(d))
    return _mix_values(_softmax_last(logits), vq, attn)
