"""The Hugging Face SamModel layout: a tiny random transformers.SamModel, saved, loaded into our tiny_sam,
gives the same embeddings, mask logits and IoU predictions."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from medsam.errors import CheckpointError
from medsam.models.hf import HF_TIED_DUPLICATES, convert_hf_state_dict
from medsam.models.registry import build_model

TOL = 1e-4
IMAGE = 64  # tiny_sam input size

# SamConfig fields matching the tiny_sam registry variant (src/medsam/models/registry.py).
TINY_SAM_HF_CONFIG = {
    "vision_config": {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 4, "image_size": IMAGE,
        "window_size": 6, "global_attn_indexes": [1], "output_channels": 32, "mlp_ratio": 4.0,
        "num_pos_feats": 16,  # the shared positional encoding: prompt embed dim / 2
    },
    "prompt_encoder_config": {"hidden_size": 32, "image_size": IMAGE, "patch_size": 4, "mask_input_channels": 8},
    "mask_decoder_config": {
        "hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "iou_head_depth": 3, "iou_head_hidden_dim": 32, "num_multimask_outputs": 3,
        # segment-anything (and our decoder) use PyTorch's default 1e-5 in the two-way blocks; transformers
        # defaults to 1e-6 there (see medsam.models.hf). Same arithmetic on both sides here.
        "layer_norm_eps": 1e-5,
    },
}


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every tensor O(1) random values: transformers' own init leaves the ViT at ~1e-10 and the
    relative/absolute positions at zero, which would make the comparison vacuous. Linear and conv weights
    get variance 1/fan_in: larger gains make the random decoder chaotic, so that float32 rounding alone
    (a 1e-7 relative change of the embedding) moves the logits by ~1e-4 and the test would measure
    rounding instead of the key mapping."""
    gen = torch.Generator().manual_seed(seed)

    def randn(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=gen)

    with torch.no_grad():
        done = set()
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                transposed = isinstance(module, torch.nn.ConvTranspose2d)  # weight is (in, out, kh, kw)
                fan_in = module.weight[:, 0].numel() if transposed else module.weight[0].numel()
                module.weight.copy_(randn(module.weight) / fan_in**0.5)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + 0.1 * randn(module.weight))
            else:
                continue
            if module.bias is not None:
                module.bias.copy_(0.1 * randn(module.bias))
            done.update(id(p) for p in module.parameters(recurse=False))
        for p in model.parameters():  # embeddings, tokens, positions
            if id(p) not in done:
                p.copy_(0.5 * randn(p))


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip(
        "transformers", reason="transformers is a test-only dependency (the `test` extra): pip install transformers"
    )


@pytest.fixture(scope="module")
def hf_model(transformers):
    config = transformers.SamConfig(**TINY_SAM_HF_CONFIG)
    model = transformers.SamModel(config).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def safetensors_folder(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf_safetensors")
    hf_model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def bin_folder(hf_model, tmp_path_factory) -> Path:
    """The older pytorch_model.bin layout (transformers 4.x, safe_serialization=False), which keeps the tied
    positional encoding under both of its names."""
    folder = tmp_path_factory.mktemp("hf_bin")
    if "safe_serialization" in inspect.signature(hf_model.save_pretrained).parameters:
        hf_model.save_pretrained(folder, safe_serialization=False)
    else:  # transformers 5 writes safetensors only; write what 4.x wrote
        hf_model.config.save_pretrained(folder)
        torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    return folder


@pytest.fixture(scope="module")
def ours(safetensors_folder):
    return build_model("tiny_sam", checkpoint=safetensors_folder, device="cpu")


def _image_batch() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _compare_boxes(hf_model, folder: Path) -> dict[str, float]:
    ours = build_model("tiny_sam", checkpoint=folder, device="cpu")
    pixels = _image_batch()
    boxes = torch.tensor(
        [[[5.0, 8.0, 40.0, 50.0], [20.0, 2.0, 63.0, 33.0]], [[10.0, 3.0, 60.0, 30.0], [0.0, 0.0, 31.0, 31.0]]]
    )
    with torch.no_grad():
        ref = hf_model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)
        ref_embeddings = hf_model.get_image_embeddings(pixels)
        embeddings = ours.encode(pixels)
        diffs = {"embedding": _max_diff(embeddings, ref_embeddings), "logits": 0.0, "iou": 0.0}
        for i in range(pixels.shape[0]):
            logits, iou = ours.decode(embeddings[i : i + 1], boxes=boxes[i], multimask=False)
            diffs["logits"] = max(diffs["logits"], _max_diff(logits, ref.pred_masks[i]))
            diffs["iou"] = max(diffs["iou"], _max_diff(iou, ref.iou_scores[i]))
    assert ref.pred_masks.abs().max() > 1.0  # the random weights give non-trivial logits
    assert ref_embeddings.std() > 0.1
    return diffs


def test_safetensors_folder_matches_transformers(hf_model, safetensors_folder):
    diffs = _compare_boxes(hf_model, safetensors_folder)
    print("safetensors max abs diff:", diffs)
    assert all(d < TOL for d in diffs.values()), diffs


def test_pytorch_bin_folder_matches_transformers(hf_model, bin_folder):
    diffs = _compare_boxes(hf_model, bin_folder)
    print("pytorch_model.bin max abs diff:", diffs)
    assert all(d < TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("with_box", [False, True])
@pytest.mark.parametrize("multimask", [False, True])
def test_points_and_labels_match_transformers(hf_model, ours, with_box, multimask):
    pixels = _image_batch()[:1]
    points = torch.tensor([[[[12.0, 20.0], [40.5, 33.0], [50.0, 5.0]], [[30.0, 30.0], [2.0, 60.0], [63.0, 63.0]]]])
    labels = torch.tensor([[[1, 0, 1], [1, 1, 0]]])
    boxes = torch.tensor([[[5.0, 8.0, 40.0, 50.0], [20.0, 2.0, 63.0, 33.0]]]) if with_box else None
    with torch.no_grad():
        ref = hf_model(
            pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes, multimask_output=multimask
        )
        logits, iou = ours.decode(
            ours.encode(pixels), points=points[0], point_labels=labels[0],
            boxes=None if boxes is None else boxes[0], multimask=multimask,
        )
    assert logits.shape == ref.pred_masks[0].shape == (2, 3 if multimask else 1, 4 * 16, 4 * 16)
    diffs = {"logits": _max_diff(logits, ref.pred_masks[0]), "iou": _max_diff(iou, ref.iou_scores[0])}
    print(f"points (box={with_box}, multimask={multimask}) max abs diff:", diffs)
    assert all(d < TOL for d in diffs.values()), diffs


def test_mask_prompt_embedding_matches_transformers(hf_model, ours):
    masks = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = _max_diff(ours.prompt_encoder.mask_downscaling(masks), hf_model.prompt_encoder.mask_embed(masks))
        pe = _max_diff(ours.prompt_encoder.get_dense_pe(), hf_model.get_image_wide_positional_embeddings())
    assert diff < TOL and pe < TOL, (diff, pe)


def test_config_with_other_decoder_heads_is_refused(safetensors_folder, tmp_path):
    # Head count leaves every tensor shape unchanged, so only config.json can reveal it.
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((safetensors_folder / "model.safetensors").read_bytes())
    config = json.loads((safetensors_folder / "config.json").read_text())
    config["mask_decoder_config"]["num_attention_heads"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mask_decoder_config\.num_attention_heads is 4, the model has 2"):
        build_model("tiny_sam", checkpoint=folder, device="cpu")


def test_hf_folder_into_tinyvit_model_is_refused(safetensors_folder):
    with pytest.raises(CheckpointError, match="ViT image encoder.*'tiny_lite'"):
        build_model("tiny_lite", checkpoint=safetensors_folder, device="cpu")


@pytest.mark.parametrize("shape", [(37, 53, 3), (61, 20)])
def test_hf_sam_preset_matches_sam_processor(transformers, shape):
    """Our HF_SAM preset (numpy resize + the model's mean/std and padding) reproduces SamProcessor's PIL
    backend: the same pixel values and the same prompt coordinates in the 1024 frame."""
    import numpy as np

    from medsam.preprocess.geometry import HF_SAM, CoordinateTransform, prepare_image

    pil_processor = getattr(transformers, "SamImageProcessorPil", None) or transformers.SamImageProcessor  # 5.x / 4.x
    processor = transformers.SamProcessor(image_processor=pil_processor())
    image = np.random.default_rng(3).integers(0, 256, size=shape, dtype=np.uint8)
    box, point = [3.0, 5.0, 19.5, 30.0], [7.0, 11.0]
    from PIL import Image

    ref = processor(images=Image.fromarray(image), input_boxes=[[box]], input_points=[[point]], return_tensors="pt")

    mean = torch.tensor(HF_SAM.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(HF_SAM.pixel_std).view(1, 3, 1, 1)
    ours = (torch.from_numpy(prepare_image(image, HF_SAM))[None] - mean) / std
    ours = torch.nn.functional.pad(ours, (0, 1024 - ours.shape[-1], 0, 1024 - ours.shape[-2]))
    assert _max_diff(ours, ref["pixel_values"].float()) < 1e-5

    transform = CoordinateTransform.for_image(image.shape[:2], HF_SAM)
    assert list(transform.resized_hw) == [int(v) for v in ref["reshaped_input_sizes"][0]]
    np.testing.assert_allclose(transform.boxes_to_input(np.array(box)), ref["input_boxes"][0, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(
        transform.points_to_input(np.array(point)), ref["input_points"][0, 0, 0].numpy(), atol=1e-4
    )


# --- key rules, no transformers needed ----------------------------------------------------------------------


def test_known_keys_are_renamed():
    t = torch.zeros(1)
    state = {
        "shared_image_embedding.positional_embedding": t,
        "vision_encoder.layers.3.layer_norm2.bias": t,
        "vision_encoder.neck.layer_norm1.weight": t,
        "prompt_encoder.point_embed.2.weight": t,
        "prompt_encoder.mask_embed.conv3.bias": t,
        "mask_decoder.upscale_layer_norm.weight": t,
        "mask_decoder.iou_prediction_head.proj_in.weight": t,
        "mask_decoder.iou_prediction_head.layers.0.weight": t,
        "mask_decoder.iou_prediction_head.proj_out.weight": t,
        "mask_decoder.output_hypernetworks_mlps.1.proj_out.bias": t,
        "mask_decoder.transformer.layers.1.layer_norm4.weight": t,
        "mask_decoder.transformer.layer_norm_final_attn.bias": t,
    }
    assert set(convert_hf_state_dict(state)) == {
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "image_encoder.blocks.3.norm2.bias",
        "image_encoder.neck.1.weight",
        "prompt_encoder.point_embeddings.2.weight",
        "prompt_encoder.mask_downscaling.6.bias",
        "mask_decoder.output_upscaling.1.weight",
        "mask_decoder.iou_prediction_head.layers.0.weight",
        "mask_decoder.iou_prediction_head.layers.1.weight",
        "mask_decoder.iou_prediction_head.layers.2.weight",
        "mask_decoder.output_hypernetworks_mlps.1.layers.1.bias",  # no hidden layers stored: 2 Linears
        "mask_decoder.transformer.layers.1.norm4.weight",
        "mask_decoder.transformer.norm_final_attn.bias",
    }


def test_unknown_keys_are_listed_not_dropped():
    t = torch.zeros(1)
    state = {
        "vision_encoder.pos_embed": t,
        "mask_decoder.hf_token.weight": t,  # SAM-HQ
        "vision_encoder.layers.0.attn.q_norm.weight": t,
    }
    with pytest.raises(CheckpointError) as info:
        convert_hf_state_dict(state, source="model.safetensors")
    message = str(info.value)
    assert "model.safetensors" in message and "2 keys" in message
    assert "mask_decoder.hf_token.weight" in message and "vision_encoder.layers.0.attn.q_norm.weight" in message


def test_tied_positional_encoding():
    (duplicate, primary), = HF_TIED_DUPLICATES.items()
    target = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    a = torch.randn(2, 8)
    assert torch.equal(convert_hf_state_dict({duplicate: a})[target], a)  # the only copy is used
    assert set(convert_hf_state_dict({duplicate: a, primary: a.clone()})) == {target}
    with pytest.raises(CheckpointError, match="differ"):
        convert_hf_state_dict({duplicate: a, primary: a + 1})
