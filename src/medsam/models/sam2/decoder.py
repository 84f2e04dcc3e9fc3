"""SAM 2's prompt encoder and mask decoder (``sam_prompt_encoder.*``, ``sam_mask_decoder.*``).

The prompt encoder is SAM's, with box corners given as points labelled 2 and 3. The decoder adds to SAM's an
object-score token (is the object in this frame at all?), high-resolution skip features from the encoder's
stride-4 and stride-8 levels, a sigmoid IoU head, and a fallback from an unstable single mask to the best of
the three multimask outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medsam.models.mask_decoder import MLP, MaskDecoder
from medsam.models.prompt_encoder import PromptEncoder
from medsam.models.transformer import TwoWayTransformer


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder; points may carry labels 2/3 (a box's top-left / bottom-right corner)."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        emb = super()._embed_points(points, labels, pad)
        if pad:
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        labels = labels[..., None]
        emb = emb + torch.where(labels == 2, self.point_embeddings[2].weight, 0.0)
        return emb + torch.where(labels == 3, self.point_embeddings[3].weight, 0.0)


@dataclass(frozen=True)
class DecoderOutput:
    """masks (B, M, 4h, 4w) logits, iou (B, M), tokens (B, M or 1, C) for object pointers, object_scores (B, 1)."""

    masks: torch.Tensor
    iou: torch.Tensor
    tokens: torch.Tensor
    object_scores: torch.Tensor


class Sam2MaskDecoder(MaskDecoder):
    """SAM's mask decoder (tokens, upscaling, hypernetworks, IoU head made sigmoid) plus SAM 2's object-score
    token and head and the two 1x1 projections of the high-resolution encoder levels."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__(transformer_dim, transformer, num_multimask_outputs, iou_head_depth, iou_head_hidden_dim)
        d = transformer_dim
        self.iou_prediction_head.sigmoid_output = True
        self.obj_score_token = nn.Embedding(1, d)
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> DecoderOutput:  # type: ignore[override]  (SAM 2's outputs and inputs differ from SAM's)
        """image_embeddings (B, C, h, w), one per prompt; high_res_features: the stride-4 and stride-8 maps
        already projected by conv_s0 / conv_s1."""
        batch = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, batch, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]

        up1, norm1, act1, up2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(norm1(up1(src.transpose(1, 2).reshape(b, c, h, w)) + feat_s1))
        upscaled = act2(up2(upscaled) + feat_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou = self.iou_prediction_head(hs[:, 1, :])
        object_scores = self.pred_obj_score_head(hs[:, 0, :])

        if multimask_output:
            masks, iou, out_tokens = masks[:, 1:], iou[:, 1:], mask_tokens_out[:, 1:]
        else:
            if self.dynamic_multimask_via_stability and not self.training:
                masks, iou = self._stable_single_mask(masks, iou)
            else:
                masks, iou = masks[:, 0:1], iou[:, 0:1]
            # The single-mask token is the object-memory token SAM 2 was trained with.
            out_tokens = mask_tokens_out[:, 0:1]
        return DecoderOutput(masks, iou, out_tokens, object_scores)

    def _stable_single_mask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the single-mask output where it is stable (IoU between thresholds +-delta >= thresh), else
        the multimask output with the highest predicted IoU."""
        multi_masks, multi_iou = masks[:, 1:], iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.shape[0], device=iou.device)
        best_masks = multi_masks[rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single, single_iou = masks[:, 0:1], iou[:, 0:1]
        flat = single.flatten(-2)
        inner = torch.sum(flat > self.stability_delta, dim=-1).float()
        outer = torch.sum(flat > -self.stability_delta, dim=-1).float()
        stable = torch.where(outer > 0, inner / outer, 1.0) >= self.stability_thresh
        masks = torch.where(stable[..., None, None].expand_as(single), single, best_masks)
        iou = torch.where(stable.expand_as(single_iou), single_iou, best_iou)
        return masks, iou
