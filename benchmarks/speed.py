"""Speed and fidelity of every execution path of lite_medsam, in one process and one run.

    python benchmarks/speed.py                       # 10 2D cases per dataset, 2 CT lesion volumes
    python benchmarks/speed.py --per-dataset 0 --volumes 6 --runs 7   # every 2D case, every volume

Paths: the reference (eager PyTorch fp32, the exact path the golden tests check) and each available fast path
(torch bf16; onnxruntime fp32/int8; OpenVINO fp32 (the default), fp32 with a bf16 decoder, bf16, int8). Every figure is measured with the paths
interleaved (case by case, call by call), so a change of machine load hits them alike; the ratio column
compares each path with the reference measured in the same run. Real images come from ../shared/data
(skipped cleanly when absent); the prompt of a 2D case is the tight box of its ground-truth mask.

Columns:
  encoder ms      median of one encoder call on one image (--runs images, after one warm-up call)
  decoder ms/box  median of one decoder call with one box; "x16" the per-box cost of 16 boxes in one call
  2D e2e ms       median of a 2D case end to end in-process: image file read, encoded (cache cleared),
                  decoded, mask PNG written (model and engine already loaded)
  3D s            median of a ct_lesions_3d case through medsam.inference.propagate.segment_stack
                  (reference mode: the official LiteMedSAM 3D procedure; slices encoded in batches)
  DSC gt          mean DSC against the ground truth over the 2D cases; "3D" the same for the volumes
  min DSC ref     the lowest per-case DSC between the path's mask and the reference path's mask
  cli s / MiB     `medsam segment` as a subprocess: wall time from start to mask written (import, model
                  load, engine load from the warm model cache, one case) and that process's peak RSS (VmHWM)
The load average (uptime) is printed before and after: on a shared machine every figure drifts with it.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

PATHS = [  # label, precision, backend, decoder precision (None: as the precision)
    ("reference torch fp32", "fp32", "torch", None),
    ("torch bf16", "bf16", "torch", None),
    ("onnxruntime fp32", "fp32", "onnxruntime", None),
    ("onnxruntime int8", "int8", "onnxruntime", None),
    ("openvino fp32", "fp32", "openvino", None),
    ("openvino fp32 + bf16 decoder", "fp32", "openvino", "bf16"),
    ("openvino bf16", "bf16", "openvino", None),
    ("openvino int8", "int8", "openvino", None),
]


@dataclass
class PathRun:
    label: str
    precision: str
    backend: str
    decoder_precision: str | None
    predictor: object = None
    engines: object = None
    ready_ms: float = 0.0
    enc: list = field(default_factory=list)
    dec: list = field(default_factory=list)
    dec16: list = field(default_factory=list)
    e2e: list = field(default_factory=list)
    vol: list = field(default_factory=list)
    dsc_gt: list = field(default_factory=list)
    dsc_ref: list = field(default_factory=list)
    dsc_gt3d: list = field(default_factory=list)
    cli_s: float = float("nan")
    cli_mib: float = float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cases_2d(per_dataset: int) -> list[dict]:
    rows = [r for r in csv.DictReader(open(DATA / "cases.csv")) if r["dims"] == "2d"]
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["dataset"], []).append(r)
    chosen = []
    for items in by_set.values():
        if per_dataset and len(items) > per_dataset:
            step = len(items) / per_dataset
            items = [items[int(i * step)] for i in range(per_dataset)]
        chosen.extend(items)
    return chosen


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-dataset", type=int, default=10, help="2D cases per dataset (0: all)")
    parser.add_argument("--runs", type=int, default=5, help="encoder/decoder timing calls per path")
    parser.add_argument("--volumes", type=int, default=2, help="ct_lesions_3d cases (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every path (default: all cores)")
    parser.add_argument("--paths", default="all", help="comma-separated labels' backends/precisions, e.g. openvino-bf16,torch-bf16")
    parser.add_argument("--no-cli", action="store_true", help="skip the `medsam segment` subprocess timing")
    parser.add_argument("--cache-dir", default=None, help="model cache (default: MEDSAM_CACHE_DIR or ~/.cache/medsam)")
    args = parser.parse_args()
    if not (DATA / "cases.csv").is_file():
        print(f"skipped: the team data folder {DATA} is absent")
        return 0
    if args.cache_dir:
        os.environ["MEDSAM_CACHE_DIR"] = args.cache_dir
    if args.threads:
        torch.set_num_threads(args.threads)

    from medsam.inference.engines import ExecutionOptions, engine_installed, make_engines
    from medsam.inference.predictor import Predictor
    from medsam.inference.segment2d import segment_file
    from medsam.io.raster import read_image
    from medsam.models.registry import build_model
    from medsam.types import Box

    print(f"load average at start: {load_avg()}  ({os.cpu_count()} cores)")
    model = build_model("lite_medsam", device="cpu")
    default = ExecutionOptions().resolve("cpu")
    wanted = None if args.paths == "all" else set(args.paths.split(","))
    runs: list[PathRun] = []
    for label, precision, backend, decoder in PATHS:
        is_reference = (precision, backend) == ("fp32", "torch")
        if wanted is not None and not is_reference and f"{backend}-{precision}" not in wanted:
            continue
        if not engine_installed(backend):
            print(f"{label}: skipped, {backend} is not installed")
            continue
        options = ExecutionOptions(precision, backend, args.threads, decoder)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            make_engines(model, options)  # exports / compiles into the cache the first time
            engines, ms = timed(lambda: make_engines(model, options))
        if engines.fallback:
            print(f"{label}: skipped, fell back ({engines.fallback})")
            continue
        got = engines.options
        if (got.precision, got.backend, got.decoder_precision) == (default.precision, default.backend, default.decoder_precision):
            label += " [default]"
        pred = Predictor(model) if engines.is_exact else Predictor(model, encoder=engines.encoder, decoder=engines.decoder)
        runs.append(PathRun(label, precision, backend, decoder, pred, engines, ms))
        del caught
    ref = runs[0]

    cases = cases_2d(args.per_dataset)
    print(f"{len(runs)} paths, {len(cases)} 2D cases, {args.volumes} volumes; threads {args.threads or torch.get_num_threads()}")
    images = {}
    gts = {}
    for c in cases:
        if c["image"] not in images:
            images[c["image"]] = read_image(DATA / c["image"])
        gts[c["case"]] = np.asarray(read_image(DATA / c["mask"])) == int(c["label"])
        if gts[c["case"]].ndim == 3:
            gts[c["case"]] = gts[c["case"]][..., 0]

    # encoder and decoder: interleaved calls on the same inputs
    timing_images = list(images)[: max(1, args.runs)]
    with torch.inference_mode():
        prepared = [ref.predictor.prepare(images[k]) for k in timing_images]
        inputs = [ref.predictor._input_tensor(p.array)[None] for p in prepared]
        for r in runs:  # warm-up
            r.engines.encoder(inputs[0])
        embeddings = {r.label: [] for r in runs}
        for x in inputs:
            for r in runs:
                emb, ms = timed(lambda: r.engines.encoder(x))
                r.enc.append(ms)
                embeddings[r.label].append(emb)
        box = torch.tensor([[60.0, 70.0, 150.0, 160.0]])
        for r in runs:
            r.engines.decoder(embeddings[r.label][0], boxes=box)
        for i in range(max(3, 2 * args.runs)):
            for r in runs:
                emb = embeddings[r.label][i % len(inputs)]
                r.dec.append(timed(lambda: r.engines.decoder(emb, boxes=box))[1])
        boxes16 = torch.tensor([[20.0 + 8 * k, 30.0, 120.0 + 8 * k, 150.0] for k in range(16)])
        for i in range(3):
            for r in runs:
                r.dec16.append(timed(lambda: r.engines.decoder(embeddings[r.label][0], boxes=boxes16))[1] / 16)

    # 2D cases end to end, interleaved case by case
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases:
            gt = gts[c["case"]]
            box = Box.from_mask(gt)
            ref_mask = None
            for r in runs:
                r.predictor.cache.clear()
                result, ms = timed(lambda: segment_file(r.predictor, DATA / c["image"], Path(tmp) / "m.png", boxes=[box], overwrite=True))
                mask = result.prediction.masks[0, 0]
                r.e2e.append(ms)
                r.dsc_gt.append(dice(mask, gt))
                if ref_mask is None:
                    ref_mask = mask
                r.dsc_ref.append(dice(mask, ref_mask))

    # 3D: ct_lesions_3d through the propagation API
    if args.volumes:
        from medsam.inference.propagate import ObjectPrompt, PropagationConfig, segment_stack
        from medsam.types import Box3D

        vols = sorted((DATA / "ct_lesions_3d").glob("*.npz"))[: args.volumes]
        for path in vols:
            data = np.load(path)
            imgs, gt = data["imgs"], data["gts"] > 0
            box3d = Box3D.from_mask(gt)
            for r in runs:
                r.predictor.cache.clear()
                seg, ms = timed(lambda: segment_stack(r.predictor, imgs, [ObjectPrompt.from_box3d(box3d)],
                                                      PropagationConfig(mode="reference"), progress=False))
                r.vol.append(ms / 1000)
                r.dsc_gt3d.append(dice(seg.labels > 0, gt))

    # `medsam segment` as a subprocess, file in, mask out
    if not args.no_cli:
        c = cases[0]
        box = Box.from_mask(gts[c["case"]]).as_array()
        with tempfile.TemporaryDirectory() as tmp:
            for r in runs:
                out = Path(tmp) / f"{r.backend}-{r.precision}-{r.decoder_precision}.png"
                # The child reports its own peak RSS (VmHWM resets at exec; rusage would count the forked parent).
                wrapper = ("import runpy, sys, atexit; atexit.register(lambda: print(next(l for l in open('/proc/self/status') "
                           "if l.startswith('VmHWM')), file=sys.stderr)); sys.argv[0] = 'medsam'; "
                           "runpy.run_module('medsam.cli', run_name='__main__')")
                if r.label.endswith("[default]"):
                    flags = ["--precision", "auto", "--backend", "auto"]
                elif r.decoder_precision not in (None, r.precision):
                    continue  # the CLI has no flag for a mixed path other than the default
                else:
                    flags = ["--precision", r.precision, "--backend", r.backend]
                cmd = [sys.executable, "-c", wrapper, "segment", str(DATA / c["image"]), "--box",
                       ",".join(str(int(v)) for v in box), "-o", str(out), *flags]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                start = time.perf_counter()
                proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                r.cli_s = time.perf_counter() - start
                hwm = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM")]
                r.cli_mib = int(hwm[0]) / 1024 if hwm else float("nan")
                if proc.returncode != 0 or not out.is_file():
                    print(f"{r.label}: medsam segment failed: {proc.stderr[-500:]}")

    med = statistics.median
    print(f"load average at end: {load_avg()}")
    print()
    head = (f"{'path':30s} {'ready ms':>8s} {'encoder ms':>10s} {'ratio':>6s} {'dec ms/box':>10s} {'x16':>6s} "
            f"{'2D e2e ms':>9s} {'ratio':>6s} {'3D s':>6s} {'ratio':>6s} {'DSC gt':>7s} {'3D DSC':>7s} "
            f"{'min DSC ref':>11s} {'cli s':>6s} {'cli MiB':>7s}")
    print(head)
    print("-" * len(head))
    for r in runs:
        vol = f"{med(r.vol):6.2f} {med(ref.vol) / med(r.vol):5.2f}x" if r.vol else f"{'-':>6s} {'-':>6s}"
        dsc3 = f"{np.mean(r.dsc_gt3d):7.4f}" if r.dsc_gt3d else f"{'-':>7s}"
        print(f"{r.label:30s} {r.ready_ms:8.0f} {med(r.enc):10.0f} {med(ref.enc) / med(r.enc):5.2f}x "
              f"{med(r.dec):10.1f} {med(r.dec16):6.1f} {med(r.e2e):9.0f} {med(ref.e2e) / med(r.e2e):5.2f}x {vol} "
              f"{np.mean(r.dsc_gt):7.4f} {dsc3} {min(r.dsc_ref):11.4f} {r.cli_s:6.2f} {r.cli_mib:7.0f}")
    print()
    print(f"default path here: {default.describe()}; torch {torch.__version__}; "
          f"{len(cases)} 2D cases ({', '.join(sorted({c['dataset'] for c in cases}))}), {len(runs[0].vol)} volumes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
