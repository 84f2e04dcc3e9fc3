"""LoRA adapters: placement, merging into plain weights, and a LoRA run whose result loads normally."""

from __future__ import annotations

import pytest
import torch

from medsam.errors import InputError
from medsam.models.registry import build_model
from medsam.training.lora import LoRALinear, apply_lora, has_lora, lora_parameters, merge_lora, merged_state_dict


@pytest.mark.parametrize("name", ["tiny_lite", "tiny_sam"])
def test_merged_lora_gives_the_same_outputs(name):
    model = build_model(name, device="cpu")
    base_keys = set(model.state_dict())
    layers = apply_lora(model, rank=4, alpha=8)
    assert layers and all(n.split(".")[-1] in ("qkv", "proj", "fc1", "fc2", "lin1", "lin2") for n in layers)
    torch.manual_seed(1)
    for p in lora_parameters(model):
        p.data.normal_(0, 0.05)  # B starts at zero; make the adapters do something
    x = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[5.0, 6.0, 40.0, 50.0], [10.0, 10.0, 30.0, 30.0]])
    with torch.no_grad():
        before = model.decode(model.encode(model.preprocess(x)), boxes=boxes)
        state = merged_state_dict(model)
        merge_lora(model)
        after = model.decode(model.encode(model.preprocess(x)), boxes=boxes)
    assert not has_lora(model)
    assert set(model.state_dict()) == base_keys == set(state)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v)
    torch.testing.assert_close(before[0], after[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(before[1], after[1], rtol=1e-4, atol=1e-4)


def test_fresh_adapters_do_not_change_the_model():
    model = build_model("tiny_lite", device="cpu")
    x = model.preprocess(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        ref = model.encode(x)
        apply_lora(model, rank=2, targets=("qkv",))
        torch.testing.assert_close(model.encode(x), ref)
    adapted = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert adapted and not any(m.weight.requires_grad for m in adapted)


def test_bad_lora_settings():
    with pytest.raises(InputError, match="no linear layer .* named nothing_here"):
        apply_lora(build_model("tiny_lite", device="cpu"), targets=("nothing_here",))
    with pytest.raises(InputError, match="rank 0"):
        apply_lora(build_model("tiny_lite", device="cpu"), rank=0)


def test_lora_run_saves_merged_weights_that_load(disc_data, embedding_cache, tmp_path):
    from medsam.training import FinetuneConfig, finetune

    cfg = FinetuneConfig(data=str(disc_data), output_dir=str(tmp_path / "run"), model="tiny_lite", device="cpu",
                         strategy="lora", lora_rank=2, epochs=1, batch_size=3, flips="h", val_split=0.25,
                         progress=False, lr=1e-2)
    result = finetune(cfg)
    base = build_model("tiny_lite", device="cpu").state_dict()
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert set(best["model"]) == set(base), "best.pt holds plain (merged) weights"
    assert best["medsam"]["lora"]["rank"] == 2
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert any(".lora_A" in k for k in last), "last.pt keeps the adapters for resuming"
    frozen = [k for k in base if k.startswith(("image_encoder.", "prompt_encoder."))]
    assert all(torch.equal(last[k], base[k]) for k in frozen), "base encoder weights stay frozen under LoRA"
    assert any(k.endswith("lora_B") and last[k].abs().sum() > 0 for k in last), "the adapters trained"
    assert build_model("tiny_lite", checkpoint=result.best_checkpoint, device="cpu").spec.name == "tiny_lite"
