"""Baseline figures for lite_medsam on this machine: model load, encoder per image, decoder per box, peak memory.

    python benchmarks/baseline.py [--runs 5] [--threads N]

Each figure is the median of --runs runs after one warm-up, on real images from ../shared/data when present
(else the shipped example). Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _images() -> list[Path]:
    shared = ROOT.parent / "shared" / "data"
    found = sorted((shared / "ct_slices" / "images").glob("*.png"))[:3] + sorted((shared / "endoscopy_polyp").rglob("*.jpg"))[:2]
    return found or [ROOT / "examples" / "ct_abdomen_amos_0006_90.png"]


def _median_seconds(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from medsam.inference.predictor import Predictor
    from medsam.io.raster import read_image
    from medsam.models.registry import build_model

    load_times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        model = build_model("lite_medsam", device="cpu")
        load_times.append(time.perf_counter() - start)

    predictor = Predictor(model)
    prepared = [predictor.prepare(read_image(p)) for p in _images()]
    inputs = [predictor._input_tensor(p.array)[None] for p in prepared]
    with torch.inference_mode():
        enc = [_median_seconds(lambda x=x: model.encode(x), args.runs) for x in inputs]
        emb = model.encode(inputs[0])
        box = torch.tensor([[60.0, 70.0, 150.0, 160.0]])
        dec = _median_seconds(lambda: model.decode(emb, boxes=box), args.runs * 4)
        boxes16 = box.repeat(16, 1)
        dec16 = _median_seconds(lambda: model.decode(emb, boxes=boxes16), args.runs)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(inputs)} images")
    print(f"{'model load (build + verify + load weights)':46s} {statistics.median(load_times) * 1000:8.0f} ms")
    print(f"{'encoder per image (median over images)':46s} {statistics.median(enc) * 1000:8.0f} ms")
    print(f"{'decoder per box (1 box per call)':46s} {dec * 1000:8.1f} ms")
    print(f"{'decoder per box (16 boxes in one call)':46s} {dec16 / 16 * 1000:8.1f} ms")
    print(f"{'peak resident memory':46s} {peak_mib:8.0f} MiB")


if __name__ == "__main__":
    main()
