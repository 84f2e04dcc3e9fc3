"""The SAM 2 model: image encoder, memory attention, memory encoder and SAM heads, with the per-frame
tracking step of SAM 2 (``SAM2Base``) as explicit functions of explicit inputs.

Which memories a frame sees is decided by the caller (``medsam.inference.memory_video``); this module only
computes. Shapes: B objects decoded together (one row per object), C = d_model, H = W = image_size / 16.
Attribute names match the official checkpoints (``{"model": state_dict}`` of SAM 2.1 and MedSAM2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.mask_decoder import MLP
from medsam.models.sam2.config import Sam2Config
from medsam.models.sam2.decoder import Sam2MaskDecoder, Sam2PromptEncoder
from medsam.models.sam2.hiera import ImageEncoder
from medsam.models.sam2.memory import MemoryAttention, MemoryEncoder
from medsam.models.transformer import TwoWayTransformer

NO_OBJECT_SCORE = -1024.0  # mask logits of an object judged absent (SAM 2's NO_OBJ_SCORE)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FrameFeatures:
    """One frame's encoder output, batch 1: ``vision`` (1, C, H, W) and its positions, and the two
    high-resolution maps already projected for the mask decoder: (1, C/8, 4H, 4W) and (1, C/4, 2H, 2W)."""

    vision: torch.Tensor
    vision_pos: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]

    def to(self, device: torch.device | str) -> "FrameFeatures":
        return FrameFeatures(self.vision.to(device), self.vision_pos.to(device),
                             (self.high_res[0].to(device), self.high_res[1].to(device)))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.vision, self.vision_pos, *self.high_res))


@dataclass(frozen=True)
class SpatialMemory:
    """A memory frame for one object: features (1, mem_dim, H, W), positions, and its temporal slot
    ``t_pos`` (0 = conditioning frame, 1..num_maskmem-1 = recent frames, the latest the highest)."""

    features: torch.Tensor
    pos: torch.Tensor
    t_pos: int


@dataclass(frozen=True)
class HeadOutput:
    """The SAM heads on one frame: the chosen mask's low-res (B, 1, S/4, S/4) and full-res (B, 1, S, S)
    logits, its predicted IoU (B, 1), the object pointer (B, C) and object-score logits (B, 1)."""

    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    iou: torch.Tensor
    obj_ptr: torch.Tensor
    object_scores: torch.Tensor


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(N,) positions -> (N, dim) sine then cosine features (the temporal code of object pointers)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Sam2Model(nn.Module):
    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        c = config
        self.config = c
        d, mem = c.d_model, c.mem_dim
        self.image_encoder = ImageEncoder(c.hiera, d, c.fpn_top_down_levels, c.scalp)
        self.memory_attention = MemoryAttention(d, mem, c.memory_attention_layers, c.memory_attention_heads,
                                                c.memory_attention_ffn, c.rope_theta)
        self.memory_encoder = MemoryEncoder(d, mem, c.fuser_layers, c.mask_downsampler_stride,
                                            c.mask_downsampler_total_stride)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(c.num_maskmem, 1, 1, mem))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr, self.no_obj_embed_spatial):
            nn.init.trunc_normal_(p, std=0.02)
        # A mask prompt (S x S) to the decoder's 4x-lower resolution and logit scale, to make a pointer from it.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        e = c.embedding_size
        self.sam_prompt_encoder = Sam2PromptEncoder(d, (e, e), (c.image_size, c.image_size), c.mask_in_chans)
        self.sam_mask_decoder = Sam2MaskDecoder(
            d, TwoWayTransformer(c.decoder_depth, d, c.decoder_heads, c.decoder_mlp_dim, mlp_keys="sam2"),
            dynamic_multimask_via_stability=c.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=c.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=c.dynamic_multimask_stability_thresh,
        )
        self.obj_ptr_proj = MLP(d, d, d, 3)
        self.obj_ptr_tpos_proj = nn.Linear(d, mem)
        # Normalisation owned by the model (a device move carries it); not in the checkpoints.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1), False)

    # --- what the rest of the toolkit asks every model -----------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def low_res_size(self) -> tuple[int, int]:
        return (self.config.low_res_size, self.config.low_res_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) resized images in 0..255 -> ImageNet-normalised input (as SAM 2 loads frames)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"SAM 2 input must be {self.image_size}x{self.image_size}, got {tuple(images.shape[-2:])}")
        return (images / 255.0 - self.pixel_mean) / self.pixel_std

    # --- image encoder -------------------------------------------------------------------------------

    def encode_frames(self, images: torch.Tensor) -> list[FrameFeatures]:
        """(B, 3, S, S) normalised frames -> one :class:`FrameFeatures` per frame."""
        features, positions = self.image_encoder(images)
        s0 = self.sam_mask_decoder.conv_s0(features[0])
        s1 = self.sam_mask_decoder.conv_s1(features[1])
        return [
            FrameFeatures(features[-1][i : i + 1], positions[-1][i : i + 1], (s0[i : i + 1], s1[i : i + 1]))
            for i in range(images.shape[0])
        ]

    # --- memory --------------------------------------------------------------------------------------

    def condition_on_memory(
        self,
        frame: FrameFeatures,
        batch: int,
        memories: Sequence[SpatialMemory] = (),
        pointers: Sequence[tuple[int, torch.Tensor]] = (),
        pointer_span: int = 1,
    ) -> torch.Tensor:
        """The frame's top-level features (batch, C, H, W) conditioned on memories.

        Without memories (a conditioning frame prompted for the first time) the learned no-memory embedding
        is added directly. pointers: (temporal offset, obj_ptr (batch, C)); offsets are divided by
        ``pointer_span`` (max pointers - 1) in their sine code.
        """
        _, c, h, w = frame.vision.shape
        curr = frame.vision.flatten(2).transpose(1, 2).expand(batch, -1, -1)  # (B, HW, C)
        if not memories and not pointers:
            return (curr + self.no_mem_embed).transpose(1, 2).reshape(batch, c, h, w)
        curr_pos = frame.vision_pos.flatten(2).transpose(1, 2).expand(batch, -1, -1)
        mem = self.config.mem_dim
        tokens, token_pos = [], []
        for m in memories:
            tokens.append(m.features.to(curr.device).flatten(2).transpose(1, 2).expand(batch, -1, -1))
            pos = m.pos.to(curr.device).flatten(2).transpose(1, 2).expand(batch, -1, -1)
            token_pos.append(pos + self.maskmem_tpos_enc[self.config.num_maskmem - m.t_pos - 1].view(1, 1, mem))
        num_ptr_tokens = 0
        if pointers:
            offsets = torch.tensor([p[0] for p in pointers], device=curr.device)
            ptrs = torch.stack([p[1] for p in pointers], dim=1)  # (B, P, C)
            ptr_pos = self.obj_ptr_tpos_proj(sine_1d(offsets / pointer_span, c))  # (P, mem)
            ptr_pos = ptr_pos.unsqueeze(0).expand(batch, -1, -1)
            if mem < c:  # a pointer becomes C / mem tokens
                split = c // mem
                ptrs = ptrs.reshape(batch, -1, split, mem).flatten(1, 2)
                ptr_pos = ptr_pos.repeat_interleave(split, dim=1)
            tokens.append(ptrs)
            token_pos.append(ptr_pos)
            num_ptr_tokens = ptrs.shape[1]
        memory = torch.cat(tokens, dim=1)
        memory_pos = torch.cat(token_pos, dim=1)
        out = self.memory_attention(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=num_ptr_tokens)
        return out.transpose(1, 2).reshape(batch, c, h, w)

    def encode_memory(
        self, frame: FrameFeatures, high_res_masks: torch.Tensor, object_scores: torch.Tensor, *, binarize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory features (B, mem_dim, H, W) and positions of a frame and its masks (B, 1, S, S) logits.

        binarize: frames the user prompted keep exactly the mask shown (logits > 0) instead of its sigmoid.
        Frames whose object score says "absent" get the learned no-object embedding added.
        """
        c = self.config
        batch = high_res_masks.shape[0]
        pix = frame.vision.expand(batch, -1, -1, -1)
        if binarize and c.binarize_mask_from_pts_for_mem_enc:
            mask = (high_res_masks > 0).float()
        else:
            mask = torch.sigmoid(high_res_masks)
        mask = mask * c.sigmoid_scale_for_mem_enc + c.sigmoid_bias_for_mem_enc
        features, pos = self.memory_encoder(pix, mask)
        absent = 1 - (object_scores > 0).float()
        features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None].expand(*features.shape)
        return features, pos

    # --- SAM heads -------------------------------------------------------------------------------------

    def use_multimask(self, initial: bool, num_points: int) -> bool:
        c = self.config
        return (c.multimask_output_in_sam and (initial or c.multimask_output_for_tracking)
                and c.multimask_min_pt_num <= num_points <= c.multimask_max_pt_num)

    def forward_heads(
        self,
        features: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> HeadOutput:
        """Prompt encoder + mask decoder on conditioned features (B, C, H, W).

        point_coords (B, P, 2) in the S x S input frame with labels (B, P): 1/0 clicks, 2/3 box corners;
        none = an empty prompt (a frame tracked from memory alone). mask_inputs: (B, 1, S/4, S/4) logits or
        a larger mask resized to it.
        """
        b, device = features.shape[0], features.device
        if point_coords is None:
            point_coords = torch.zeros(b, 1, 2, device=device)
            point_labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        dense_in = None
        if mask_inputs is not None:
            size = self.sam_prompt_encoder.mask_input_size
            dense_in = mask_inputs if tuple(mask_inputs.shape[-2:]) == tuple(size) else F.interpolate(
                mask_inputs.float(), size=size, align_corners=False, mode="bilinear", antialias=True
            )
        high_res = (high_res[0].expand(b, -1, -1, -1), high_res[1].expand(b, -1, -1, -1))
        sparse, dense = self.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=dense_in)
        out = self.sam_mask_decoder(features, self.sam_prompt_encoder.get_dense_pe(), sparse, dense, multimask, high_res)
        present = out.object_scores > 0
        # The memory sees a hard choice between object and no object, as the shown mask does.
        masks = torch.where(present[:, None, None], out.masks, NO_OBJECT_SCORE).float()
        size = self.image_size
        high = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
        token = out.tokens[:, 0]
        iou = out.iou
        if multimask:
            best = torch.argmax(out.iou, dim=-1)
            rows = torch.arange(b, device=device)
            masks, high = masks[rows, best].unsqueeze(1), high[rows, best].unsqueeze(1)
            iou = out.iou[rows, best].unsqueeze(1)
            if out.tokens.shape[1] > 1:
                token = out.tokens[rows, best]
        presence = present.float()
        obj_ptr = presence * self.obj_ptr_proj(token)
        obj_ptr = obj_ptr + (1 - presence) * self.no_obj_ptr
        return HeadOutput(masks, high, iou, obj_ptr, out.object_scores)

    def mask_as_output(self, features: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> HeadOutput:
        """A given mask (B, 1, S, S) in {0, 1} becomes the output (logits +-10) without the decoder; its
        pointer still comes from the decoder, prompted with the mask."""
        high = mask.float() * 20.0 - 10.0
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), align_corners=False,
                            mode="bilinear", antialias=True)
        iou = mask.new_ones(mask.shape[0], 1).float()
        obj_ptr = self.forward_heads(features, high_res, mask_inputs=self.mask_downsample(mask.float())).obj_ptr
        present = torch.any(mask.flatten(1).float() > 0.0, dim=1)[..., None].float()
        scores = 20.0 * present - 10.0
        obj_ptr = present * obj_ptr + (1 - present) * self.no_obj_ptr
        return HeadOutput(low, high, iou, obj_ptr, scores)
