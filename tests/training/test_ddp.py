"""DistributedDataParallel on the CPU (gloo): `medsam finetune` under torchrun with 2 processes ends with the
same weights as one process on the doubled batch."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from medsam.models.registry import build_model
from medsam.training import FinetuneConfig, finetune


def test_two_process_ddp_matches_one_process_on_doubled_batch(disc_data, embedding_cache, tmp_path):
    common = dict(model="tiny_lite", device="cpu", epochs=2, flips="h", val_split=0.25, point_prob=0.5,
                  embedding_cache=str(embedding_cache), progress=False, lr=1e-4, seed=3)
    one = tmp_path / "one"
    finetune(FinetuneConfig(data=str(disc_data), output_dir=str(one), batch_size=4, **common))

    two = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medsam.cli", "finetune", "--data", str(disc_data), "-o", str(two), "--model", "tiny_lite",
        "--device", "cpu", "--epochs", "2", "--batch-size", "2", "--flips", "h", "--val-split", "0.25",
        "--point-prob", "0.5", "--embedding-cache", str(embedding_cache), "--lr", "1e-4", "--seed", "3",
        "--threads", "1", "--quiet",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    a = torch.load(one / "last.pt", weights_only=True)
    b = torch.load(two / "last.pt", weights_only=True)
    # 6 training images: per epoch one process takes batches of 4 + 2, each of two processes 2 + 1
    assert a["step"] == b["step"] == 4
    assert b["medsam"]["training"]["world_size"] == 2
    start = build_model("tiny_lite", device="cpu").state_dict()
    moved = 0.0
    for k, v in a["model"].items():
        moved = max(moved, float((v - start[k]).abs().max()))
        if k.endswith("k_proj.bias"):
            # A key bias adds the same number to every logit of a query, so softmax ignores it: its gradient is
            # zero up to rounding, and Adam scales that rounding noise up to steps of ~lr. Within 4 steps of lr.
            torch.testing.assert_close(v, b["model"][k], rtol=0, atol=4e-4, msg=k)
        else:
            torch.testing.assert_close(v, b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert moved > 1e-4, "training moved the weights, so the comparison means something"
