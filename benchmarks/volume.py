"""3D propagation speed and memory on a 512x512x200 CT-like phantom: default vs reference mode in one run, and
the default mode with 1 vs 3 objects (the encoder runs once per slice whatever the number of objects).

    python benchmarks/volume.py [--model lite_medsam] [--depth 200] [--size 512] [--batch-size 4] [--threads N]
                                [--engine auto|exact]

--engine auto (default) runs the model as `medsam segment-volume` does (medsam.inference.engines.make_predictor:
OpenVINO where installed); exact runs the PyTorch fp32 model (the path the golden tests check).

The phantom: a body ellipse of soft tissue (40 HU) in air (-1000 HU) with bone-like noise, and three ellipsoid
"organs" (90-130 HU) about 60 slices long, windowed W400/L40 to uint8 as a CT would be. Each run is its own
process (so its peak resident memory is its own) with an empty embedding cache:
- reference: the official procedure from a 3D box around organ 1;
- default (3D box): the default mode from the same 3D box;
- default (slice box, 1 object): a 2D box on organ 1's middle slice, no z limits (stops where it ends);
- default (slice boxes, 3 objects): the same with all three organs, each on its own middle slice.
Per run: slices decoded and encoded, seconds, seconds per decoded slice, peak RSS. Numbers on a shared machine
drift: compare the rows of one run, and say the load (printed) with any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

RUNS = ("reference", "default_box3d", "default_1obj", "default_3obj")
ORGANS = (  # centre (z, y, x) as fractions of the volume, semi-axes (z slices, y px, x px) at 512 x 200, HU
    ((0.50, 0.45, 0.40), (30, 60, 75), 110.0),
    ((0.47, 0.60, 0.66), (28, 40, 40), 130.0),
    ((0.53, 0.35, 0.64), (30, 30, 45), 90.0),
)


def phantom(depth: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 volume after W400/L40, int labels 1..3) of the CT-like phantom."""
    rng = np.random.default_rng(0)
    scale_xy, scale_z = size / 512.0, depth / 200.0
    y, x = np.mgrid[:size, :size].astype(np.float32)
    body = ((y - 0.5 * size) / (0.40 * size)) ** 2 + ((x - 0.5 * size) / (0.45 * size)) ** 2 <= 1.0
    labels = np.zeros((depth, size, size), np.uint8)
    volume = np.empty((depth, size, size), np.uint8)
    for z in range(depth):
        hu = np.where(body, 40.0, -1000.0).astype(np.float32)
        hu += rng.normal(0, 12, hu.shape).astype(np.float32)
        for value, ((cz, cy, cx), (az, ay, ax), organ_hu) in enumerate(ORGANS, start=1):
            dz = (z - cz * depth) / (az * scale_z)
            inside = dz**2 + ((y - cy * size) / (ay * scale_xy)) ** 2 + ((x - cx * size) / (ax * scale_xy)) ** 2 <= 1.0
            hu[inside] = organ_hu + rng.normal(0, 8, int(inside.sum()))
            labels[z][inside] = value
        spine = ((y - 0.78 * size) ** 2 + (x - 0.5 * size) ** 2) <= (0.05 * size) ** 2
        hu[spine] = 700.0
        volume[z] = (np.clip(hu, -160.0, 240.0) + 160.0) / 400.0 * 255.0
    return volume, labels


def run_child(args: argparse.Namespace) -> dict:
    import torch

    from medsam.inference.predictor import Predictor
    from medsam.inference.propagate import ObjectPrompt, PropagationConfig, segment_stack
    from medsam.models.registry import build_model
    from medsam.types import Box, Box3D

    if args.threads:
        torch.set_num_threads(args.threads)
    volume, labels = phantom(args.depth, args.size)
    model = build_model(args.model, device="cpu")
    counted = {"images": 0}
    decoder, engine = None, "torch fp32 (exact)"
    base_encode = model.encode
    if args.engine != "exact":
        from medsam.inference.engines import ExecutionOptions, make_engines

        engines = make_engines(model, ExecutionOptions(threads=args.threads))
        base_encode, decoder = engines.encoder, engines.decoder
        engine = str(engines.options)

    def encoder(batch):  # counts the images that really go through the encoder
        counted["images"] += int(batch.shape[0])
        return base_encode(batch)

    predictor = Predictor(model, encoder=encoder, decoder=decoder)
    n_objects = 3 if args.child == "default_3obj" else 1
    prompts = []
    for value in range(1, n_objects + 1):
        box3d = Box3D.from_mask(labels == value)
        if args.child in ("reference", "default_box3d"):
            prompts.append(ObjectPrompt.from_box3d(box3d))
        else:
            z = int((box3d.z1 - box3d.z0) / 2 + box3d.z0)
            prompts.append(ObjectPrompt(z=z, box=Box.from_mask(labels[z] == value)))
    config = PropagationConfig(mode="reference" if args.child == "reference" else "default", batch_size=args.batch_size)
    start = time.perf_counter()
    result = segment_stack(predictor, volume, prompts, config, progress=False)
    seconds = time.perf_counter() - start
    dsc = []
    for value in range(1, n_objects + 1):
        a, b = result.labels == value, labels == value
        dsc.append(2 * float((a & b).sum()) / float(a.sum() + b.sum()))
    return {
        "run": args.child,
        "engine": engine,
        "objects": n_objects,
        "decoded": result.slices_visited,
        "encoded": result.slices_encoded,
        "encoder_images": counted["images"],
        "seconds": seconds,
        "s_per_slice": seconds / max(1, result.slices_visited),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "dsc": dsc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS)
    parser.add_argument("--engine", default="auto", choices=("auto", "exact"))
    parser.add_argument("--child", default=None, choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    print(f"phantom {args.size}x{args.size}x{args.depth}, model {args.model} ({args.engine}), batch {args.batch_size}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = []
    for name in args.runs:
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--depth", str(args.depth),
               "--size", str(args.size), "--batch-size", str(args.batch_size), "--engine", args.engine]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  done {name}: {r['seconds']:.1f} s", flush=True)
    print()
    print("| run | objects | slices decoded | slices encoded | s total | s / slice | peak RSS MiB | DSC vs phantom |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        dsc = ", ".join(f"{d:.3f}" for d in r["dsc"])
        print(f"| {r['run']} | {r['objects']} | {r['decoded']} | {r['encoded']} | {r['seconds']:.1f} | "
              f"{r['s_per_slice']:.2f} | {r['peak_rss_mib']:.0f} | {dsc} |")
    print(f"\nengine: {rows[0]['engine']}")
    by = {r["run"]: r for r in rows}
    if "reference" in by and "default_box3d" in by:
        print(f"\ndefault / reference seconds per slice: "
              f"{by['default_box3d']['s_per_slice'] / by['reference']['s_per_slice']:.2f}")
    if "default_1obj" in by and "default_3obj" in by:
        one, three = by["default_1obj"], by["default_3obj"]
        print(f"encoder images, 1 object: {one['encoder_images']} for {one['decoded']} slices; "
              f"3 objects: {three['encoder_images']} for {three['decoded']} slices "
              f"(one encoding per slice: {three['encoder_images'] <= three['decoded'] + 2 * (args.batch_size - 1)})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
