"""The Hugging Face ``transformers`` ``SamModel`` layout: its keys renamed to the segment-anything layout.

A ``SamModel`` saved with ``save_pretrained`` (config.json + model.safetensors, or the older
pytorch_model.bin) holds the same tensors as an official SAM/MedSAM checkpoint under other names.
:func:`convert_hf_state_dict` renames them; nothing is reshaped, split or merged (the ViT's fused
``qkv`` projection is fused in both layouts). :func:`check_hf_config` compares the folder's
config.json with the model chosen to receive the weights, because some settings (the decoder's head
count, activations) leave no trace in tensor shapes.

Renaming rules, Hugging Face -> segment-anything (``i``, ``j`` are indices, ``P`` is weight or bias):

- ``shared_image_embedding.positional_embedding``
  -> ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``
- ``vision_encoder.`` -> ``image_encoder.``, and inside it: ``patch_embed.projection.P`` -> ``patch_embed.proj.P``;
  ``layers.i.`` -> ``blocks.i.``; ``layer_norm1|2`` -> ``norm1|2``;
  ``neck.conv1 / layer_norm1 / conv2 / layer_norm2`` -> ``neck.0 / 1 / 2 / 3``
- ``prompt_encoder.point_embed.i`` -> ``prompt_encoder.point_embeddings.i``;
  ``prompt_encoder.mask_embed.conv1 / layer_norm1 / conv2 / layer_norm2 / conv3``
  -> ``prompt_encoder.mask_downscaling.0 / 1 / 3 / 4 / 6`` (2 and 5 are the parameter-free GELUs)
- ``mask_decoder.upscale_conv1 / upscale_layer_norm / upscale_conv2`` -> ``mask_decoder.output_upscaling.0 / 1 / 3``
- the MLP heads ``mask_decoder.iou_prediction_head`` and ``mask_decoder.output_hypernetworks_mlps.i``:
  ``proj_in / layers.j / proj_out`` -> ``layers.0 / layers.(j+1) / layers.(n-1)``, n = the head's number of Linears
- ``mask_decoder.transformer.layers.i.layer_norm1..4`` -> ``mask_decoder.transformer.layers.i.norm1..4``;
  ``mask_decoder.transformer.layer_norm_final_attn`` -> ``mask_decoder.transformer.norm_final_attn``

Keys with the same name in both layouts (``pos_embed``, ``attn.qkv``, ``attn.rel_pos_h``, ``mlp.lin1``,
``not_a_point_embed``, ``no_mask_embed``, ``iou_token``, ``mask_tokens``, the two-way transformer's
``self_attn`` / ``cross_attn_*`` / ``final_attn_token_to_image`` ``q|k|v|out_proj`` and ``mlp.lin1|2``) are
listed as identity rules, so every key is accounted for. A key that matches no rule raises a
CheckpointError naming it (e.g. a SAM-HQ or SAM 2 checkpoint, which this layout cannot hold).

Hugging Face keys with no counterpart of their own, dropped on purpose (:data:`HF_TIED_DUPLICATES`):
``prompt_encoder.shared_embedding.positional_embedding`` is the same tensor as
``shared_image_embedding.positional_embedding`` (one module shared by two parents; transformers 4.x
saved it under both names in pytorch_model.bin, safetensors keeps one). It is used when it is the only
copy, checked for equality when both are present. Hugging Face files hold no ``pixel_mean`` /
``pixel_std`` (its processor normalises); our model owns them as non-persistent buffers.

One numerical difference that no key shows: transformers builds the LayerNorms of each two-way
attention block (``layer_norm1..4``) with ``mask_decoder_config.layer_norm_eps``, 1e-6 by default and
in the configs its conversion script writes, while segment-anything (and every official SAM, MedSAM and
LiteMedSAM checkpoint, trained that way) uses PyTorch's default 1e-5. We keep the original 1e-5, so a
Hugging Face folder gives the official segment-anything/MedSAM results, not exactly transformers' own.
Measured: on LiteMedSAM's trained decoder over the 12 golden cases, 1e-5 versus 1e-6 moves the low-res
logits by at most 0.038 (logits of magnitude ~39; 9 of 786,432 low-res pixels change sign); on the tiny
random test model by 1.4e-4. The test model sets ``layer_norm_eps=1e-5`` so both sides do the same
arithmetic.

Preprocessing: Hugging Face ``SamProcessor`` versus MedSAM's own
(checked against transformers' image_processing_sam.py / image_processing_pil_sam.py and
processing_sam.py; our presets are ``medsam.preprocess.geometry.HF_SAM`` and ``MEDSAM``):

- ``SamProcessor`` (the SAM convention, preset ``HF_SAM``): convert to RGB (grayscale replicated);
  resize so the longest side is 1024, new size ``int(side * 1024 / max(H, W) + 0.5)``, bilinear;
  rescale by 1/255 and normalise with the ImageNet mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225), i.e. SAM's pixel_mean/pixel_std on the 0..255 scale; zero-pad bottom/right to
  1024 x 1024 after normalisation. Points and boxes are scaled per axis by (new_w / W, new_h / H), not
  rounded, into the 1024 frame. ``post_process_masks`` upsamples the 256 x 256 logits to 1024
  (bilinear), crops the padding, upsamples to (H, W) and thresholds at logit 0. The PIL backend
  (``SamImageProcessorPil``; the slow ``SamImageProcessor`` of transformers 4.x) resizes the uint8 image
  with PIL's bilinear filter, like segment-anything's ResizeLongestSide, and ``HF_SAM`` reproduces it
  (pixel values within 1e-6 -- 4.8e-7 on a 547 x 626 CT slice -- and identical coordinates;
  tests/models/test_hf.py checks it). The torchvision backend
  (transformers' default when torchvision is installed) resizes with torch's antialiased bilinear, which
  can differ slightly from PIL (not measured here: this project does not install torchvision).
- MedSAM's own pipeline (preset ``MEDSAM``, the one MedSAM ViT-B was trained with): stretch the image to
  1024 x 1024 whatever its aspect ratio (skimage order-3 resize), min-max normalise to [0, 1], no
  mean/std and no padding; the box is scaled by (1024 / W, 1024 / H); the sigmoid of the 256 x 256 logits
  is upsampled straight to (H, W) (bilinear) and thresholded at 0.5.
- So a MedSAM checkpoint run through ``SamProcessor`` with its default (SAM) settings sees an
  aspect-preserving, padded, ImageNet-normalised image instead of the stretched [0, 1] image it was
  trained on; its masks differ from the official MedSAM results. Use the ``MEDSAM`` preset for MedSAM
  weights, whichever layout they were loaded from; ``HF_SAM`` reproduces what a ``SamProcessor`` user sees.

When calling ``transformers.SamModel`` directly (no processor), ``input_boxes`` / ``input_points`` are
already in the model input frame, the same frame as :meth:`medsam.models.sam.SamModel.decode`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medsam.errors import CheckpointError

__all__ = ["HF_TIED_DUPLICATES", "convert_hf_state_dict", "check_hf_config"]

# Hugging Face key -> the key holding the same tensor; dropped after an equality check.
HF_TIED_DUPLICATES: dict[str, str] = {
    "prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding",
}

_P = r"(weight|bias)"

# (Hugging Face key pattern, segment-anything key template); patterns must match a whole key.
_RULES: tuple[tuple[str, str], ...] = (
    # positional encoding shared by the prompt encoder and the decoder's image positional embedding
    (r"shared_image_embedding\.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    # ViT image encoder
    (rf"vision_encoder\.patch_embed\.projection\.{_P}", r"image_encoder.patch_embed.proj.\1"),
    (r"vision_encoder\.pos_embed", "image_encoder.pos_embed"),
    (rf"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.{_P}", r"image_encoder.blocks.\1.norm\2.\3"),
    (rf"vision_encoder\.layers\.(\d+)\.attn\.(qkv|proj)\.{_P}", r"image_encoder.blocks.\1.attn.\2.\3"),
    (r"vision_encoder\.layers\.(\d+)\.attn\.(rel_pos_[hw])", r"image_encoder.blocks.\1.attn.\2"),
    (rf"vision_encoder\.layers\.(\d+)\.mlp\.(lin[12])\.{_P}", r"image_encoder.blocks.\1.mlp.\2.\3"),
    (r"vision_encoder\.neck\.conv1\.weight", "image_encoder.neck.0.weight"),
    (rf"vision_encoder\.neck\.layer_norm1\.{_P}", r"image_encoder.neck.1.\1"),
    (r"vision_encoder\.neck\.conv2\.weight", "image_encoder.neck.2.weight"),
    (rf"vision_encoder\.neck\.layer_norm2\.{_P}", r"image_encoder.neck.3.\1"),
    # prompt encoder
    (r"prompt_encoder\.point_embed\.(\d+)\.weight", r"prompt_encoder.point_embeddings.\1.weight"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (rf"prompt_encoder\.mask_embed\.conv1\.{_P}", r"prompt_encoder.mask_downscaling.0.\1"),
    (rf"prompt_encoder\.mask_embed\.layer_norm1\.{_P}", r"prompt_encoder.mask_downscaling.1.\1"),
    (rf"prompt_encoder\.mask_embed\.conv2\.{_P}", r"prompt_encoder.mask_downscaling.3.\1"),
    (rf"prompt_encoder\.mask_embed\.layer_norm2\.{_P}", r"prompt_encoder.mask_downscaling.4.\1"),
    (rf"prompt_encoder\.mask_embed\.conv3\.{_P}", r"prompt_encoder.mask_downscaling.6.\1"),
    # mask decoder (the MLP heads are renamed by _mlp_key, they need each head's depth)
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (rf"mask_decoder\.upscale_conv1\.{_P}", r"mask_decoder.output_upscaling.0.\1"),
    (rf"mask_decoder\.upscale_layer_norm\.{_P}", r"mask_decoder.output_upscaling.1.\1"),
    (rf"mask_decoder\.upscale_conv2\.{_P}", r"mask_decoder.output_upscaling.3.\1"),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
        rf"\.(q_proj|k_proj|v_proj|out_proj)\.{_P}",
        r"mask_decoder.transformer.layers.\1.\2.\3.\4",
    ),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.{_P}",
        r"mask_decoder.transformer.layers.\1.norm\2.\3",
    ),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.{_P}",
        r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
    ),
    (
        rf"mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.{_P}",
        r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
    ),
    (rf"mask_decoder\.transformer\.layer_norm_final_attn\.{_P}", r"mask_decoder.transformer.norm_final_attn.\1"),
)
_COMPILED = tuple((re.compile(pattern), template) for pattern, template in _RULES)

# Hugging Face SamFeedForward: proj_in, layers.0 .. layers.(n-3), proj_out;
# segment-anything MLP: layers.0 .. layers.(n-1).
_MLP = re.compile(
    rf"mask_decoder\.(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.(proj_in|proj_out|layers\.(\d+))\.{_P}"
)


def _mlp_depths(keys: list[str]) -> dict[str, int]:
    """Number of Linear layers of each Hugging Face MLP head: its hidden ``layers.j`` plus proj_in and proj_out."""
    hidden: dict[str, set[int]] = {}
    for key in keys:
        m = _MLP.fullmatch(key)
        if m:
            indices = hidden.setdefault(m.group(1), set())
            if m.group(3) is not None:
                indices.add(int(m.group(3)))
    return {head: len(indices) + 2 for head, indices in hidden.items()}


def _mlp_key(m: re.Match[str], depths: Mapping[str, int]) -> str:
    head, part, hidden_index, param = m.group(1), m.group(2), m.group(3), m.group(4)
    if part == "proj_in":
        index = 0
    elif part == "proj_out":
        index = depths[head] - 1
    else:
        index = int(hidden_index) + 1
    return f"mask_decoder.{head}.layers.{index}.{param}"


def _rename(key: str, depths: Mapping[str, int]) -> str | None:
    m = _MLP.fullmatch(key)
    if m:
        return _mlp_key(m, depths)
    for pattern, template in _COMPILED:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(template)
    return None


def convert_hf_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``SamModel`` state dict to the segment-anything layout (see the module docstring).

    source names the file in error messages. Raises CheckpointError listing every key that has no
    counterpart, when two keys would land on one name, or when tied duplicates disagree.
    """
    keys = list(state)
    depths = _mlp_depths(keys)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        if key in HF_TIED_DUPLICATES:
            continue
        new = _rename(key, depths)
        if new is None:
            unknown.append(key)
            continue
        if new in out:
            raise CheckpointError(
                f"{source}: Hugging Face keys {origin[new]!r} and {key!r} both map to {new!r}; "
                "the file is not a plain transformers SamModel checkpoint"
            )
        out[new] = state[key]
        origin[new] = key
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise CheckpointError(
            f"{source}: {len(unknown)} keys of this Hugging Face checkpoint have no counterpart in a SAM/MedSAM "
            f"model: {shown}. Only transformers' SamModel (vision_encoder / prompt_encoder / mask_decoder / "
            "shared_image_embedding) can be loaded; SAM-HQ, SAM 2 and other variants cannot. Convert the file "
            "to the official segment-anything layout or pick the matching original checkpoint"
        )
    for duplicate, primary in HF_TIED_DUPLICATES.items():
        if duplicate not in state:
            continue
        target = _rename(primary, depths)
        assert target is not None
        if target not in out:
            out[target] = state[duplicate]
        elif not torch.equal(out[target], state[duplicate]):
            raise CheckpointError(
                f"{source}: {duplicate!r} and {primary!r} should hold the same tied tensor but differ; "
                "the checkpoint is inconsistent (re-save it with transformers' save_pretrained)"
            )
    return out


# --- config.json against the chosen model ---------------------------------------------------------------------

# transformers' defaults (configuration_sam.py) for fields a config.json may leave out.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "vision_config": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3, "image_size": 1024,
        "patch_size": 16, "hidden_act": "gelu", "qkv_bias": True, "mlp_ratio": 4.0, "use_abs_pos": True,
        "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11], "num_pos_feats": 128,
        "output_channels": 256, "mlp_dim": None,
    },
    "prompt_encoder_config": {
        "hidden_size": 256, "image_size": 1024, "patch_size": 16, "mask_input_channels": 16,
        "num_point_embeddings": 4, "hidden_act": "gelu",
    },
    "mask_decoder_config": {
        "hidden_size": 256, "hidden_act": "relu", "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
        "attention_downsample_rate": 2, "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256,
    },
}

_VIT_NAMES = {768: "ViT-B (medsam_vit_b or sam_vit_b)", 1024: "ViT-L (sam_vit_l)", 1280: "ViT-H (sam_vit_h)"}


def _expected_from_model(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The Hugging Face config values that describe ``model`` (a SamModel with a ViT encoder)."""
    vit = model.image_encoder.config  # type: ignore[union-attr]
    pe = model.prompt_encoder
    md = model.mask_decoder
    block = md.transformer.layers[0]
    return {
        "vision_config": {
            "hidden_size": vit.embed_dim, "num_hidden_layers": vit.depth, "num_attention_heads": vit.num_heads,
            "num_channels": vit.in_chans, "image_size": vit.img_size, "patch_size": vit.patch_size,
            "hidden_act": "gelu", "qkv_bias": True, "use_abs_pos": True, "use_rel_pos": True,
            "window_size": vit.window_size, "global_attn_indexes": sorted(vit.global_attn_indexes),
            "num_pos_feats": pe.embed_dim // 2, "output_channels": vit.out_chans,
            "mlp_dim": int(vit.embed_dim * vit.mlp_ratio),
        },
        "prompt_encoder_config": {
            "hidden_size": pe.embed_dim, "image_size": pe.input_image_size[0],
            "patch_size": pe.input_image_size[0] // pe.image_embedding_size[0],
            "mask_input_channels": pe.mask_downscaling[3].out_channels, "num_point_embeddings": 4, "hidden_act": "gelu",
        },
        "mask_decoder_config": {
            "hidden_size": md.transformer_dim, "hidden_act": "relu", "mlp_dim": block.mlp.lin1.out_features,
            "num_hidden_layers": len(md.transformer.layers), "num_attention_heads": block.self_attn.num_heads,
            "attention_downsample_rate": md.transformer_dim // block.cross_attn_token_to_image.internal_dim,
            "num_multimask_outputs": md.num_mask_tokens - 1, "iou_head_depth": len(md.iou_prediction_head.layers),
            "iou_head_hidden_dim": md.iou_prediction_head.layers[0].out_features,
        },
    }


def _config_value(section: Mapping[str, Any], defaults: Mapping[str, Any], field: str) -> Any:
    value = section.get(field, defaults.get(field))
    if field == "mlp_dim" and value is None:  # transformers: mlp_dim defaults to hidden_size * mlp_ratio
        hidden = section.get("hidden_size", defaults["hidden_size"])
        value = int(hidden * section.get("mlp_ratio", defaults["mlp_ratio"]))
    if field == "global_attn_indexes":
        value = sorted(int(v) for v in value)
    if isinstance(value, (list, tuple)) and field in ("image_size", "patch_size"):
        value = value[0] if len(set(value)) == 1 else list(value)
    return value


def check_hf_config(config: Mapping[str, Any], model: nn.Module, *, model_name: str, source: str | Path) -> None:
    """Refuse a Hugging Face config.json that describes another architecture than ``model``.

    Shape checks catch most mismatches at load time; this also catches those that keep every shape
    (decoder head count, activations, a ViT without relative positions) and names the config field.
    """
    from medsam.models.vit import ImageEncoderViT

    if config.get("model_type", "sam") != "sam":
        raise CheckpointError(
            f"{source}: config.json has model_type {config.get('model_type')!r}; only transformers' SamModel "
            "(model_type 'sam') can be loaded"
        )
    if not isinstance(getattr(model, "image_encoder", None), ImageEncoderViT):
        raise CheckpointError(
            f"{source} is a Hugging Face SamModel with a ViT image encoder, but model {model_name!r} has "
            f"{type(getattr(model, 'image_encoder', None)).__name__}; choose a ViT model such as medsam_vit_b "
            "or sam_vit_b (see `medsam models`)"
        )
    expected = _expected_from_model(model)
    problems = []
    for section_name, fields in expected.items():
        section = config.get(section_name) or {}
        if not isinstance(section, Mapping):
            raise CheckpointError(f"{source}: config.json field {section_name!r} is not an object")
        for field, want in fields.items():
            have = _config_value(section, _HF_DEFAULTS[section_name], field)
            if have != want:
                problems.append(f"{section_name}.{field} is {have!r}, the model has {want!r}")
    if problems:
        hidden = _config_value(config.get("vision_config") or {}, _HF_DEFAULTS["vision_config"], "hidden_size")
        guess = _VIT_NAMES.get(hidden, f"a ViT of width {hidden}")
        raise CheckpointError(
            f"{source}: config.json does not fit model {model_name!r}: {'; '.join(problems[:6])}"
            f"{f' (and {len(problems) - 6} more)' if len(problems) > 6 else ''}. The folder looks like {guess}; "
            "choose the matching --model (see `medsam models`)"
        )
