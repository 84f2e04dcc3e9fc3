"""SAM 2 memory tracking speed and memory on a 512x512x100 CT-like volume, next to LiteMedSAM's slice-to-slice
propagation measured in the same run (the baseline of the ratios).

    python benchmarks/sam2_speed.py [--depth 100] [--size 512] [--threads 2] [--runs lite_medsam medsam2 sam2.1_hiera_t]

Runs (each its own process, so its peak resident memory is its own; CPU, ``--threads`` PyTorch threads):
- lite_medsam: the default propagation mode (PyTorch fp32, the exact path) from a box on organ 1's middle slice;
- medsam2: SAM 2.1 Hiera-T at 512 px (MedSAM2's configuration), MedSAM2's 3D procedure from the same box
  (up from the key slice, reset, down; every slice of the volume is tracked);
- sam2.1_hiera_t: the same at 1024 px (SAM 2.1 tiny's own resolution).
SAM 2 models run with random weights (the speed does not depend on them; the official files are not shipped),
so no DSC is reported for them. Per run: slices tracked and encoded, seconds per slice (total, of which the
image encoder), peak RSS, and the ratio of seconds per slice to LiteMedSAM's. The phantom is benchmarks/volume.py's.
Each model's encoder is called once before timing (first-call set-up is not counted). Numbers on a shared
machine drift: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RUNS = ("lite_medsam", "medsam2", "sam2.1_hiera_t")


def _phantom():
    spec = importlib.util.spec_from_file_location("volume_benchmark", Path(__file__).with_name("volume.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.phantom


def run_child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from medsam.models.registry import build_model
    from medsam.types import Box, Box3D

    torch.set_num_threads(args.threads)
    volume, labels = _phantom()(args.depth, args.size)
    box3d = Box3D.from_mask(labels == 1)
    z = int((box3d.z1 - box3d.z0) / 2 + box3d.z0)
    box = Box.from_mask(labels[z] == 1)
    timing = {"encoder_s": 0.0, "encoded": 0}
    start = time.perf_counter()
    if args.child == "lite_medsam":
        from medsam.inference.predictor import Predictor
        from medsam.inference.propagate import ObjectPrompt, PropagationConfig, segment_stack

        model = build_model("lite_medsam", device="cpu")
        with torch.inference_mode():  # warm-up call, not timed (first-call set-up costs)
            model.encode(torch.zeros(1, 3, model.image_size, model.image_size))

        def encoder(batch):
            t0 = time.perf_counter()
            out = model.encode(batch)
            timing["encoder_s"] += time.perf_counter() - t0
            timing["encoded"] += int(batch.shape[0])
            return out

        start = time.perf_counter()
        result = segment_stack(Predictor(model, encoder=encoder), volume, [ObjectPrompt(z=z, box=box)],
                               PropagationConfig(batch_size=1), progress=False)
        mask, tracked = result.labels == 1, result.slices_visited
    else:
        from medsam.inference.memory_video import KeySlicePrompt, MemoryPredictor, medsam2_segment_volume

        model = build_model(args.child, device="cpu", pretrained=False)
        with torch.inference_mode():  # warm-up call, not timed
            model.encode_frames(torch.zeros(1, 3, model.image_size, model.image_size))
        base = model.encode_frames

        def encode_frames(images):
            t0 = time.perf_counter()
            out = base(images)
            timing["encoder_s"] += time.perf_counter() - t0
            timing["encoded"] += int(images.shape[0])
            return out

        model.encode_frames = encode_frames  # type: ignore[method-assign]
        predictor = MemoryPredictor(model)
        state = predictor.init_state(volume, source="phantom")
        start = time.perf_counter()
        labelled = medsam2_segment_volume(predictor, volume, [KeySlicePrompt(z=z, box=box)], progress=False, state=state)
        mask, tracked = labelled == 1, state.visited
    seconds = time.perf_counter() - start
    truth = labels == 1
    dsc = 2 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
    return {
        "run": args.child, "tracked": tracked, "encoded": timing["encoded"], "seconds": seconds,
        "s_per_slice": seconds / max(1, tracked), "encoder_s_per_slice": timing["encoder_s"] / max(1, timing["encoded"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "dsc": dsc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS)
    parser.add_argument("--child", default=None, choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    print(f"phantom {args.size}x{args.size}x{args.depth}, CPU, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for name in args.runs:
        cmd = [sys.executable, __file__, "--child", name, "--depth", str(args.depth), "--size", str(args.size),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  done {name}: {json.dumps(rows[-1])}", flush=True)  # kept if a later run is stopped
    base = next((r for r in rows if r["run"] == "lite_medsam"), None)
    print()
    print("| run | slices tracked | slices encoded | s / slice | encoder s / slice | peak RSS MiB | s / slice vs LiteMedSAM |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['s_per_slice'] / base['s_per_slice']:.1f}x" if base else "-"
        print(f"| {r['run']} | {r['tracked']} | {r['encoded']} | {r['s_per_slice']:.2f} | {r['encoder_s_per_slice']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {ratio} |")
    if base:
        print(f"\nLiteMedSAM DSC on the phantom organ: {base['dsc']:.3f} (SAM 2 runs use random weights: no DSC)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
