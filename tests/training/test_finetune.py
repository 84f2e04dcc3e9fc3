"""Fine-tuning runs on the tiny model: which weights train, resume, interruption, bad data, the result file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsam.errors import InputError, OutputError
from medsam.models.checkpoints import read_checkpoint
from medsam.models.registry import build_model
from medsam.training import FinetuneConfig, finetune


def config(data: Path, out: Path, cache: Path, **kw) -> FinetuneConfig:
    base = dict(model="tiny_lite", device="cpu", epochs=2, batch_size=2, flips="none", val_split=0.25,
                embedding_cache=str(cache), progress=False, lr=1e-3)
    base.update(kw)
    return FinetuneConfig(data=str(data), output_dir=str(out), **base)


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_decoder_strategy_changes_only_decoder_weights(disc_data, embedding_cache, tmp_path):
    result = finetune(config(disc_data, tmp_path / "run", embedding_cache, epochs=1, flips="h", intensity_variants=1))
    base = build_model("tiny_lite", device="cpu").state_dict()
    trained = state_of(tmp_path / "run" / "last.pt")
    assert set(trained) == set(base)
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    assert changed, "one decoder step should change the decoder"
    assert all(k.startswith("mask_decoder.") for k in changed), sorted(changed)[:5]
    assert result.steps == 3  # 6 training images, batch 2


def test_run_folder_files_and_checkpoint_loads_everywhere(disc_data, embedding_cache, tmp_path):
    run = tmp_path / "run"
    result = finetune(config(disc_data, run, embedding_cache))
    for name in ("best.pt", "last.pt", "model_card.json", "metrics.csv", "config.json", "split.json",
                 "validation_cases.csv"):
        assert (run / name).is_file(), name
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 1 + 3  # epoch 0 (zero-shot) + 2
    card = json.loads((run / "model_card.json").read_text())
    assert card["base_model"] == "tiny_lite" and card["strategy"] == "decoder"
    assert card["validation"]["zero_shot"]["n"] == 2 and card["toolkit_version"]
    assert card["data"]["train_cases"] == 6 and card["data"]["val_cases"] == 2
    loaded = read_checkpoint(result.best_checkpoint)
    assert loaded.metadata["strategy"] == "decoder"
    model = build_model("tiny_lite", checkpoint=result.best_checkpoint, device="cpu")
    assert model.spec.name == "tiny_lite"
    assert 0.0 <= result.zero_shot["dsc"] <= 1.0 and result.best_epoch in (0, 1, 2)


def test_resume_equals_uninterrupted_run(disc_data, embedding_cache, tmp_path):
    full = finetune(config(disc_data, tmp_path / "full", embedding_cache, epochs=3, point_prob=0.5))

    class Stop(Exception):
        pass

    def interrupt(step: int, epoch: int) -> None:
        if step == 4:  # in the middle of epoch 2 (3 steps per epoch)
            raise Stop

    run = tmp_path / "cut"
    cfg = config(disc_data, run, embedding_cache, epochs=3, point_prob=0.5)
    with pytest.raises(Stop):
        finetune(cfg, on_step=interrupt)
    saved = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] == 3
    assert saved["optimizer"]["state"], "the optimiser moments are saved"
    assert (run / "best.pt").is_file()
    best_before = read_checkpoint(run / "best.pt").state_dict

    resumed = finetune(FinetuneConfig(**{**cfg.to_json(), "resume": True}))
    assert resumed.steps == full.steps == 9 and resumed.epochs_run == 3
    a, b = state_of(tmp_path / "full" / "last.pt"), state_of(run / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    opt_a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(run / "last.pt", weights_only=True)["optimizer"]["state"]
    for i in opt_a:
        torch.testing.assert_close(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"], rtol=0, atol=1e-9)
    assert resumed.best == pytest.approx(full.best)
    if resumed.best_epoch <= 1:  # the best of the cut run was already on disk and is kept
        after = read_checkpoint(run / "best.pt").state_dict
        assert all(torch.equal(best_before[k], after[k]) for k in after)


def test_interruption_during_save_keeps_previous_best(disc_data, embedding_cache, tmp_path, monkeypatch):
    from medsam.training import checkpoint as ckpt

    run = tmp_path / "run"
    finetune(config(disc_data, run, embedding_cache, epochs=1))
    before = (run / "best.pt").read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"model": {}}, run / "best.pt")
    assert (run / "best.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if ".part" in p.name], "no temporary file is left behind"


def test_new_run_refuses_existing_run_folder(disc_data, embedding_cache, tmp_path):
    run = tmp_path / "run"
    finetune(config(disc_data, run, embedding_cache, epochs=1))
    with pytest.raises(OutputError, match="--resume"):
        finetune(config(disc_data, run, embedding_cache, epochs=1))
    with pytest.raises(InputError, match="differ"):
        finetune(FinetuneConfig(**{**config(disc_data, run, embedding_cache, epochs=1).to_json(),
                                   "resume": True, "lr": 0.5}))


def test_early_stopping(disc_data, embedding_cache, tmp_path):
    result = finetune(config(disc_data, tmp_path / "run", embedding_cache, epochs=6, lr=1e-9, patience=1,
                             min_delta=0.5))
    assert result.stopped_early and result.epochs_run == 1
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["stopped"]


# --- bad input ------------------------------------------------------------------------------------------


def write_manifest(root: Path, rows: list[tuple[str, str]]) -> Path:
    text = "dataset,case,modality,dims,image,mask,label,target\n"
    text += "".join(f"toy,{i},US,2d,{im},{mk},255,disc\n" for i, (im, mk) in enumerate(rows))
    path = root / "cases.csv"
    path.write_text(text)
    return path


def test_manifest_without_usable_case_is_a_clear_error(disc_data, embedding_cache, tmp_path):
    empty = np.zeros((40, 40), np.uint8)
    Image.fromarray(empty).save(tmp_path / "empty.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "small.png")
    manifest = write_manifest(tmp_path, [
        (str(disc_data / "images" / "c00.png"), "empty.png"),  # empty mask
        (str(disc_data / "images" / "c01.png"), "small.png"),  # another shape
        (str(disc_data / "images" / "c02.png"), "missing.png"),
    ])
    run = tmp_path / "run"
    with pytest.raises(InputError, match="no usable training case among 3"):
        finetune(config(manifest, run, embedding_cache, val_split=0.0))
    assert not run.exists(), "a run that cannot start leaves no folder"


def test_bad_cases_are_skipped_and_counted(disc_data, embedding_cache, tmp_path):
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(tmp_path / "small.png")
    rows = [(str(disc_data / "images" / f"c{i:02d}.png"), str(disc_data / "masks" / f"c{i:02d}.png"))
            for i in range(6)]
    rows[1] = (rows[1][0], "small.png")  # mask of another shape
    rows[3] = (rows[3][0], "empty.png")  # empty mask (c03 is 48x64)
    manifest = write_manifest(tmp_path, rows)
    with pytest.warns(UserWarning, match=r"skipped 2 .*'shape_mismatch': 1.*'empty_mask': 1"):
        result = finetune(config(manifest, tmp_path / "run", embedding_cache, train_first=4, epochs=1))
    assert result.skipped == 2 and result.train_samples == 2 and result.val_samples == 2
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["data"]["skipped"] == 2


def test_settings_are_checked_before_anything_runs(disc_data, tmp_path):
    with pytest.raises(InputError, match="strategy"):
        finetune(FinetuneConfig(data=str(disc_data), output_dir=str(tmp_path / "r"), strategy="everything"))
    with pytest.raises(InputError, match="train_first 8"):
        finetune(FinetuneConfig(data=str(disc_data), output_dir=str(tmp_path / "r"), model="tiny_lite",
                                train_first=8, progress=False))
    with pytest.raises(InputError, match="not among"):
        finetune(FinetuneConfig(data=str(disc_data), output_dir=str(tmp_path / "r"), model="tiny_lite",
                                train_cases=("c00", "nope"), progress=False))


def test_full_strategy_trains_encoder_and_decoder_not_prompt_encoder(disc_data, embedding_cache, tmp_path):
    finetune(config(disc_data, tmp_path / "run", embedding_cache, strategy="full", epochs=1, flips="hv",
                    intensity_prob=1.0, batch_size=3))
    base = build_model("tiny_lite", device="cpu").state_dict()
    trained = state_of(tmp_path / "run" / "last.pt")
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], trained[k])}
    assert changed == {"image_encoder", "mask_decoder"}
    bn = [k for k in base if k.endswith("running_mean")]
    assert bn and all(torch.equal(base[k], trained[k]) for k in bn), "BatchNorm statistics stay frozen"
    assert not (tmp_path / "run" / "embeddings").exists(), "no embedding cache without the decoder strategy"


def test_bf16_autocast_runs_on_cpu_and_fp16_is_refused_there(disc_data, embedding_cache, tmp_path):
    result = finetune(config(disc_data, tmp_path / "bf16", embedding_cache, epochs=1, amp="bf16"))
    assert np.isfinite(result.history[-1]["train_loss"])
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        finetune(config(disc_data, tmp_path / "fp16", embedding_cache, epochs=1, amp="fp16"))
    assert not (tmp_path / "fp16").exists()
