"""Which encoder precisions keep LiteMedSAM's masks: every 2D dev case, exact fp32 decoder, one run.

    python benchmarks/precision.py                  # OpenVINO f32, bf16, f16 and split f32/bf16 encoders
    python benchmarks/precision.py --limit 5        # a quick look (5 images)

The question behind the default execution path (issue "Speed"): a faster encoder is only usable when every
mask stays at DSC >= 0.98 against the exact path's mask. Each variant below replaces only the image encoder;
the decoder is the exact eager fp32 one, so every difference comes from the encoder's arithmetic.

Variants (OpenVINO CPU plugin, INFERENCE_PRECISION_HINT per compiled graph):
- f32, bf16, f16: the whole encoder at that precision;
- split K: patch embedding and the first K stages in f32, the rest in bf16 (two graphs, the first one's
  output fed to the second), to see whether the bf16 error comes from the early high-resolution layers.

Columns: median encoder ms over the images (--timing images, after a warm-up), mean relative error of the
embedding against the exact path (||e - e_ref|| / ||e_ref||), the lowest per-case DSC against the exact path's
mask, how many cases fall below 0.98, and the mean DSC against the ground truth (tight ground-truth box).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


class EncoderHead(nn.Module):
    """Patch embedding and the first ``k`` stages of a TinyViT."""

    def __init__(self, encoder: nn.Module, k: int) -> None:
        super().__init__()
        self.encoder, self.k = encoder, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.patch_embed(x)
        for layer in self.encoder.layers[: self.k]:
            x = layer(x)
        return x


class EncoderTail(nn.Module):
    """The stages from ``k`` on and the neck of a TinyViT."""

    def __init__(self, encoder: nn.Module, k: int) -> None:
        super().__init__()
        self.encoder, self.k = encoder, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.layers[self.k :]:
            x = layer(x)
        b, _, c = x.shape
        r = self.encoder.out_resolution
        return self.encoder.neck(x.view(b, r, r, c).permute(0, 3, 1, 2))


def compile_graph(module: nn.Module, example: torch.Tensor, hint: str, folder: Path, threads: int):
    import openvino as ov

    path = folder / f"{type(module).__name__}-{getattr(module, 'k', 'all')}.onnx"
    if not path.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": hint}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return lambda x: torch.from_numpy(np.array(compiled({"x": x.numpy()})["y"]))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: every 2D dev image)")
    parser.add_argument("--timing", type=int, default=20, help="images timed per variant")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--splits", default="0,1,2", help="comma list of K for the split variants ('' for none)")
    args = parser.parse_args()
    if not (DATA / "cases.csv").is_file():
        print(f"skipped: the team data folder {DATA} is absent")
        return 0
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("skipped: openvino is not installed (pip install 'medsam-toolkit[speed]')")
        return 0

    from medsam.inference.engines.options import default_threads
    from medsam.inference.predictor import Predictor
    from medsam.io.raster import read_image
    from medsam.models.optimize import optimize_encoder
    from medsam.models.registry import build_model
    from medsam.types import Box

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    model = build_model("lite_medsam", device="cpu")
    encoder = optimize_encoder(model.image_encoder).float()
    exact = Predictor(model)
    rows = [r for r in csv.DictReader(open(DATA / "cases.csv")) if r["dims"] == "2d"]
    images: dict[str, np.ndarray] = {}
    for r in rows:
        if r["image"] not in images and (not args.limit or len(images) < args.limit):
            images[r["image"]] = read_image(DATA / r["image"])
    rows = [r for r in rows if r["image"] in images]
    refs = []
    for r in rows:
        gt = np.asarray(read_image(DATA / r["mask"]))
        refs.append((gt[..., 0] if gt.ndim == 3 else gt) == int(r["label"]))
    inputs = {k: exact._input_tensor(exact.prepare(im).array)[None] for k, im in images.items()}
    with torch.inference_mode():
        exact_emb = {k: model.encode(x) for k, x in inputs.items()}

    def masks_of(predictor: Predictor) -> list[np.ndarray]:
        out = []
        for r, gt in zip(rows, refs):
            predictor.set_image(images[r["image"]])
            out.append(predictor.predict(boxes=Box.from_mask(gt)).masks[0, 0])
        return out

    exact_masks = masks_of(exact)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {threads} threads; "
          f"{len(rows)} 2D cases on {len(images)} images; exact path DSC vs ground truth "
          f"{np.mean([dice(m, g) for m, g in zip(exact_masks, refs)]):.4f}")
    print(f"{'encoder':34s} {'ms':>7s} {'rel err':>8s} {'min DSC':>8s} {'<0.98':>6s} {'DSC gt':>7s}")

    example = torch.zeros(2, 3, model.image_size, model.image_size)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        folder = Path(tmp)
        whole = nn.Sequential(EncoderHead(encoder, 0), EncoderTail(encoder, 0))
        variants = [(f"openvino {h}", compile_graph(whole, example, h, folder, threads)) for h in ("f32", "bf16", "f16")]
        for k in [int(v) for v in args.splits.split(",") if v.strip()]:
            head = compile_graph(EncoderHead(encoder, k), example, "f32", folder, threads)
            tail = compile_graph(EncoderTail(encoder, k), EncoderHead(encoder, k)(example), "bf16", folder, threads)
            variants.append((f"split {k}: head f32, tail bf16", lambda x, h=head, t=tail: t(h(x))))
        for label, run in variants:
            keys = list(inputs)
            run(inputs[keys[0]])
            times, errors = [], []
            for key in keys[: args.timing]:
                start = time.perf_counter()
                emb = run(inputs[key])
                times.append((time.perf_counter() - start) * 1000)
            for key in keys:
                emb = run(inputs[key])
                errors.append(float((emb - exact_emb[key]).norm() / exact_emb[key].norm()))

            class Encoder:
                cache_tag = label

                def __call__(self, x, _run=run):
                    return _run(x)

            masks = masks_of(Predictor(model, encoder=Encoder()))
            agree = np.array([dice(m, e) for m, e in zip(masks, exact_masks)])
            gt_dsc = np.mean([dice(m, g) for m, g in zip(masks, refs)])
            print(f"{label:34s} {np.median(times):7.1f} {np.mean(errors):8.4f} {agree.min():8.4f} "
                  f"{int((agree < 0.98).sum()):6d} {gt_dsc:7.4f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
