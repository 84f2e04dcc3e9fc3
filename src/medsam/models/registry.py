"""Registry of model variants: specs are dataclasses, registered explicitly, built by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from medsam.errors import CheckpointError, ModelNotFoundError
from medsam.models.device import resolve_device
from medsam.preprocess.geometry import LITE_MEDSAM, MEDSAM, SAM, PreprocessConfig


@dataclass(frozen=True)
class DecoderConfig:
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a variant and tell people about it.

    weights: "embedded" (shipped in an installed wheel), "file" (the user passes --checkpoint; the hint
    says where the official file comes from) or "random" (test models).
    refinement: how corrective clicks become prompts (``medsam.inference.refine``): "box_update" for models
    trained with box prompts only (LiteMedSAM, MedSAM: their point and mask prompt paths are effectively
    untrained, so the clicks edit the box and act on the box's logits), "sam" for the SAM recipe (box + clicks
    as points + the previous logits as mask input). The random test models keep the generic "sam".
    family: "sam" (image models: SamModel, the 2D Predictor, slice-to-slice propagation) or "sam2" (memory
    models: ``medsam.models.sam2.Sam2Model``, tracked with ``medsam.inference.memory_video``).
    architecture: builds the whole model when it is not a SamModel (the SAM 2 family); None for SamModel.
    """

    name: str
    description: str
    encoder_factory: Callable[[], nn.Module]
    embedding_size: int
    preprocess: PreprocessConfig
    decoder: DecoderConfig = DecoderConfig()
    weights: str = "file"
    checkpoint_hint: str = ""
    refinement: str = "sam"
    family: str = "sam"
    architecture: Callable[[], nn.Module] | None = None

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}; available models: {', '.join(list_models())} (see `medsam models`)"
        ) from None


def build_architecture(spec: ModelSpec) -> "SamModel":
    """The model with freshly initialised weights."""
    if spec.architecture is not None:
        return spec.architecture()  # type: ignore[return-value]
    from medsam.models.mask_decoder import MaskDecoder
    from medsam.models.prompt_encoder import PromptEncoder
    from medsam.models.sam import SamModel
    from medsam.models.transformer import TwoWayTransformer

    d = spec.decoder
    prompt_encoder = PromptEncoder(
        embed_dim=d.prompt_embed_dim,
        image_embedding_size=(spec.embedding_size, spec.embedding_size),
        input_image_size=(spec.input_size, spec.input_size),
        mask_in_chans=d.mask_in_chans,
    )
    transformer = TwoWayTransformer(d.transformer_depth, d.prompt_embed_dim, d.transformer_heads, d.transformer_mlp_dim)
    mask_decoder = MaskDecoder(
        d.prompt_embed_dim, transformer, d.num_multimask_outputs, d.iou_head_depth, d.iou_head_hidden_dim
    )
    return SamModel(
        spec.encoder_factory(), prompt_encoder, mask_decoder, spec.preprocess.pixel_mean, spec.preprocess.pixel_std
    )


def build_model(
    name: str = "lite_medsam",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    pretrained: bool = True,
) -> "SamModel":
    """Build a registered variant in eval mode on ``device`` (None picks CUDA when available).

    checkpoint: a file or Hugging Face folder to load; None loads the variant's default weights, which
    exist only for embedded variants (lite_medsam). ``pretrained=False`` gives random weights.
    """
    from medsam.models.checkpoints import load_into, read_checkpoint

    spec = get_spec(name)
    dev = resolve_device(device)
    if spec.weights == "random" and checkpoint is None:
        torch.manual_seed(0)
    model = build_architecture(spec)
    model.spec = spec  # type: ignore[attr-defined]
    if checkpoint is not None:
        if spec.checkpoint_hint and not Path(checkpoint).expanduser().exists():
            raise CheckpointError(
                f"checkpoint {checkpoint} does not exist (model {name!r}). {spec.checkpoint_hint} "
                "Nothing is downloaded by this toolkit: download the file yourself and give its path"
            )
        load_into(model, read_checkpoint(checkpoint), model_name=name)
    elif pretrained and spec.weights == "embedded":
        from medsam.models.embedded import locate_lite_medsam

        load_into(model, read_checkpoint(locate_lite_medsam().path), model_name=name)
    elif pretrained and spec.weights == "file":
        raise CheckpointError(
            f"model {name!r} needs a checkpoint file: pass --checkpoint PATH (Python: checkpoint=...). "
            f"{spec.checkpoint_hint} Nothing is downloaded by this toolkit"
        )
    return model.to(dev).eval()


def weights_available(spec: ModelSpec) -> str:
    """Human-readable availability of a variant's default weights on this machine."""
    if spec.weights == "random":
        return "random (test model)"
    if spec.weights == "embedded":
        from medsam.models.embedded import locate_lite_medsam

        try:
            return f"yes ({locate_lite_medsam().path})"
        except CheckpointError as exc:
            return f"no: {exc}"
    return "needs --checkpoint"


# --- the variants -----------------------------------------------------------------------------------


def _lite_encoder() -> nn.Module:
    from medsam.models.tiny_vit import TinyViT, TinyViTConfig

    return TinyViT(TinyViTConfig())


def _vit(config_name: str) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        from medsam.models import vit

        return vit.ImageEncoderViT(getattr(vit, config_name))

    return factory


def _tiny_lite_encoder() -> nn.Module:
    from medsam.models.tiny_vit import TinyViT, TinyViTConfig

    return TinyViT(
        TinyViTConfig(
            img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
            window_sizes=(7, 7, 7, 8), out_chans=32,
        )
    )


def _tiny_sam_encoder() -> nn.Module:
    from medsam.models.vit import ImageEncoderViT, ViTConfig

    return ImageEncoderViT(
        ViTConfig(img_size=64, patch_size=4, embed_dim=32, depth=2, num_heads=2, out_chans=32, window_size=6,
                  global_attn_indexes=(1,))
    )


_TINY_DECODER = DecoderConfig(
    prompt_embed_dim=32, mask_in_chans=8, transformer_mlp_dim=64, transformer_heads=2, iou_head_hidden_dim=32
)
_SAM_HINT = "The official files are sam_vit_{v}_*.pth from the segment-anything repository (Apache-2.0)."

register(ModelSpec(
    "lite_medsam", "LiteMedSAM: TinyViT encoder distilled from MedSAM, 256 px; the embedded default",
    _lite_encoder, 64, LITE_MEDSAM, weights="embedded", refinement="box_update",
))
register(ModelSpec(
    "medsam_vit_b", "MedSAM ViT-B, 1024 px, fine-tuned SAM on 1.5M medical image-mask pairs",
    _vit("VIT_B"), 64, MEDSAM,
    checkpoint_hint="Use the official medsam_vit_b.pth (MedSAM repository) or a local copy of the Hugging Face "
    "folder flaviagiammarino/medsam-vit-base.",
    refinement="box_update",
))
for _v, _cfg in (("b", "VIT_B"), ("l", "VIT_L"), ("h", "VIT_H")):
    register(ModelSpec(
        f"sam_vit_{_v}", f"Segment Anything ViT-{_v.upper()}, 1024 px (natural images)", _vit(_cfg), 64, SAM,
        checkpoint_hint=_SAM_HINT.format(v=_v),
    ))
register(ModelSpec(
    "tiny_lite", "tiny random TinyViT model with LiteMedSAM preprocessing at 64 px (tests)",
    _tiny_lite_encoder, 16,
    PreprocessConfig("tiny_lite", 64, "longest_side", "area", True, box_rounding="floor", coord_scale="longest_side"),
    _TINY_DECODER, weights="random",
))
register(ModelSpec(
    "tiny_sam", "tiny random ViT model with SAM preprocessing at 64 px (tests)",
    _tiny_sam_encoder, 16,
    PreprocessConfig("tiny_sam", 64, "longest_side", "bilinear", False, SAM.pixel_mean, SAM.pixel_std),
    _TINY_DECODER, weights="random",
))


# --- SAM 2.1 and MedSAM2 (memory models for video and volumes) ------------------------------------------


def _sam2(config_name: str) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        from medsam.models.sam2 import CONFIGS, Sam2Model

        return Sam2Model(CONFIGS[config_name])

    return factory


def _sam2_encoder(config_name: str) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        from medsam.models.sam2 import CONFIGS
        from medsam.models.sam2.hiera import ImageEncoder

        c = CONFIGS[config_name]
        return ImageEncoder(c.hiera, c.d_model, c.fpn_top_down_levels, c.scalp)

    return factory


def _sam2_preprocess(name: str, size: int) -> PreprocessConfig:
    # SAM 2 stretches every frame to S x S (PIL bicubic) and applies ImageNet mean/std (done by Sam2Model).
    return PreprocessConfig(name, size, "square", "bicubic", False)


_SAM2_HINT = (
    "The official SAM 2.1 file is {file} (about {mb} MB) from the SAM 2 repository (facebookresearch/sam2, "
    "Apache-2.0; its checkpoints/download_ckpts.sh lists the URLs) or the Hugging Face page facebook/{hf}."
)
for _name, _file, _mb, _hf, _what in (
    ("sam2.1_hiera_t", "sam2.1_hiera_tiny.pt", 156, "sam2.1-hiera-tiny", "Hiera-T"),
    ("sam2.1_hiera_s", "sam2.1_hiera_small.pt", 184, "sam2.1-hiera-small", "Hiera-S"),
    ("sam2.1_hiera_b+", "sam2.1_hiera_base_plus.pt", 324, "sam2.1-hiera-base-plus", "Hiera-B+"),
    ("sam2.1_hiera_l", "sam2.1_hiera_large.pt", 898, "sam2.1-hiera-large", "Hiera-L"),
):
    register(ModelSpec(
        _name, f"SAM 2.1 {_what}, 1024 px, memory-based video/volume tracking (natural videos)",
        _sam2_encoder(_name), 64, _sam2_preprocess(_name, 1024),
        checkpoint_hint=_SAM2_HINT.format(file=_file, mb=_mb, hf=_hf), family="sam2", architecture=_sam2(_name),
    ))
register(ModelSpec(
    "medsam2", "MedSAM2: SAM 2.1 Hiera-T fine-tuned on medical volumes and videos, 512 px (3D CT/MR, ultrasound)",
    _sam2_encoder("medsam2"), 32, _sam2_preprocess("medsam2", 512),
    checkpoint_hint="Use MedSAM2_latest.pt (about 156 MB; or MedSAM2_CTLesion.pt, MedSAM2_US_Heart.pt, "
    "MedSAM2_MRI_LiverLesion.pt) from the MedSAM2 repository (bowang-lab/MedSAM2, checkpoints/download.sh) or "
    "the Hugging Face page wanglab/MedSAM2.",
    family="sam2", architecture=_sam2("medsam2"),
))
register(ModelSpec(
    "tiny_sam2", "tiny random SAM 2 model at 128 px (tests)",
    _sam2_encoder("tiny_sam2"), 8, _sam2_preprocess("tiny_sam2", 128), weights="random", family="sam2",
    architecture=_sam2("tiny_sam2"),
))
