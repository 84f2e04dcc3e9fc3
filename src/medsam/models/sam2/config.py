"""The numbers that define a SAM 2.1 variant, as typed frozen dataclasses (no Hydra, no YAML at run time).

Values follow the official ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` of SAM 2.1 and, for MedSAM2, its
``sam2.1_hiera_t512.yaml`` (the tiny model at 512 px), together with the overrides the official video predictor
builders add (``dynamic_multimask_via_stability``, ``binarize_mask_from_pts_for_mem_enc``, ``fill_hole_area=8``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class HieraConfig:
    """The Hiera trunk: a 4-stage hierarchical ViT with windowed attention and query pooling between stages."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Channels of each stage's output, lowest resolution first (the FPN neck's order)."""
        dims = [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]
        return tuple(reversed(dims))


@dataclass(frozen=True)
class Sam2Config:
    """A whole SAM 2 model: image encoder, memory attention and encoder, SAM heads and tracking options.

    image_size: side of the square encoder input (1024 for SAM 2.1, 512 for MedSAM2).
    d_model: width of the FPN neck, memory attention and SAM heads (256); mem_dim: width of memories (64).
    num_maskmem: memory frames seen when tracking (1 conditioning slot + 6 recent frames, as trained).
    max_obj_ptrs_in_encoder: object pointers of past frames cross-attended by memory attention.
    The boolean switches mirror the official ``SAM2Base`` options that SAM 2.1 turns on.
    """

    name: str
    image_size: int = 1024
    hiera: HieraConfig = field(default_factory=HieraConfig)
    d_model: int = 256
    mem_dim: int = 64
    backbone_stride: int = 16
    scalp: int = 1
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    # memory attention
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_ffn: int = 2048
    rope_theta: float = 10000.0
    # memory encoder
    mask_downsampler_stride: int = 2
    mask_downsampler_total_stride: int = 16
    fuser_layers: int = 2
    # SAM heads
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    # tracking
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    max_cond_frames_in_attn: int = -1
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True
    use_mask_input_as_output_without_sam: bool = True
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    memory_temporal_stride_for_eval: int = 1
    only_obj_ptrs_in_the_past_for_eval: bool = True
    fill_hole_area: int = 8

    @property
    def embedding_size(self) -> int:
        """Side of the lowest-resolution feature map the SAM heads work on (image_size / 16)."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits (image_size / 4)."""
        return self.image_size // 4

    def with_options(self, **changes) -> "Sam2Config":
        return replace(self, **changes)


HIERA_T = HieraConfig()
HIERA_S = HieraConfig(stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13))
HIERA_B_PLUS = HieraConfig(
    embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
    window_pos_embed_bkg_spatial_size=(14, 14),
)
HIERA_L = HieraConfig(
    embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8),
)

SAM21_T = Sam2Config("sam2.1_hiera_t", 1024, HIERA_T)
SAM21_S = Sam2Config("sam2.1_hiera_s", 1024, HIERA_S)
SAM21_B_PLUS = Sam2Config("sam2.1_hiera_b+", 1024, HIERA_B_PLUS)
SAM21_L = Sam2Config("sam2.1_hiera_l", 1024, HIERA_L)
# MedSAM2 (bowang-lab/MedSAM2, sam2.1_hiera_t512.yaml): SAM 2.1 tiny fine-tuned at 512 px, every other value as SAM 2.1.
MEDSAM2 = Sam2Config("medsam2", 512, HIERA_T)
# A tiny random model for fast tests: every code path of the real ones (high-res features, pointers split into
# several memory tokens, windowed and global attention, padding of windows) at a fraction of the cost.
TINY_SAM2 = Sam2Config(
    "tiny_sam2", 128,
    HieraConfig(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                window_pos_embed_bkg_spatial_size=(4, 4), window_spec=(8, 4, 6, 4)),
    d_model=32, mem_dim=16, memory_attention_layers=2, memory_attention_ffn=64,
)  # the SAM heads keep SAM 2's fixed sizes (mask_in_chans 16, MLP 2048, 8 heads), as SAM2Base builds them

CONFIGS = {c.name: c for c in (SAM21_T, SAM21_S, SAM21_B_PLUS, SAM21_L, MEDSAM2, TINY_SAM2)}
