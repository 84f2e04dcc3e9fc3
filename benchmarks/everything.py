"""Segment everything: recall on real data, time per image, and what the skipping rules save.

    python benchmarks/everything.py                      # CT slices + nuclei + speed, LiteMedSAM
    python benchmarks/everything.py --only speed         # just the 512 x 512 timing
    python benchmarks/everything.py --json out.json      # also save every number

Recall: for each ground-truth object, the best IoU of any proposal; "recall" is the share of objects
whose best IoU is >= 0.5, "mean best IoU" the mean over objects. Data:
- ../shared/data ct_slices: the CT slices of cases.csv with their organ masks (30 objects on 4 slices);
- the nuclei image of the stardist wheel (stardist/data/images/img2d.tif, mask2d.tif: 125 instances).
  It is read from a wheel in --stardist-dir (get it with
  `pip download --no-deps stardist -d /tmp/sd`); without it that part is skipped with a message.
  tifffile reads it; it is not a dependency of the toolkit.

Configurations, all in the same run so the machine's load affects them alike:
- "tuned": the toolkit's defaults (what `medsam everything` does);
- "sam-thresholds": the defaults with SAM's thresholds (predicted IoU 0.88, stability 0.95);
- "plain-grid": the defaults without background skipping and progressive sampling;
- nuclei only: the defaults with --nuclei-anchors (small boxes on every point, suited to dense cells).
Speed: the 512 x 512 slice with a 16 x 16 grid, default path vs plain grid, repeated --repeats times.

Timings on a shared machine drift: compare rows of one run, and note the load (printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import zipfile
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "src"))

CONFIGS = {
    "tuned": {},
    "sam-thresholds": {"pred_iou_thresh": 0.88, "stability_thresh": 0.95},
    "plain-grid": {"skip_background": False, "progressive": False},
}


def load_ct_slices() -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    from medsam.io.raster import read_image

    data = SHARED / "data"
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    with open(data / "cases.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["dataset"] == "ct_slices":
                groups[row["image"]].append(read_image(data / row["mask"]) > 0)
    return [(Path(image).stem, read_image(data / image), gts) for image, gts in sorted(groups.items())]


def load_nuclei(stardist_dir: Path):
    """(image, [instance masks]) from the stardist wheel in ``stardist_dir``, or None with a reason."""
    try:
        import tifffile
    except ImportError:
        return None, "tifffile is not installed (pip install tifffile)"
    wheels = sorted(stardist_dir.glob("stardist-*.whl")) if stardist_dir.is_dir() else []
    if not wheels:
        return None, f"no stardist wheel in {stardist_dir} (pip download --no-deps stardist -d {stardist_dir})"
    import io

    with zipfile.ZipFile(wheels[-1]) as zf:
        image = tifffile.imread(io.BytesIO(zf.read("stardist/data/images/img2d.tif")))
        labels = tifffile.imread(io.BytesIO(zf.read("stardist/data/images/mask2d.tif")))
    return (image, [labels == v for v in np.unique(labels) if v != 0]), ""


def best_ious(instances, gts: list[np.ndarray]) -> np.ndarray:
    if not instances:
        return np.zeros(len(gts))
    masks = np.stack([m.mask for m in instances]).reshape(len(instances), -1).astype(np.float32)
    out = []
    for gt in gts:
        g = gt.reshape(-1).astype(np.float32)
        inter = masks @ g
        union = masks.sum(1) + g.sum() - inter
        out.append(float((inter / np.maximum(union, 1)).max()))
    return np.array(out)


def run_dataset(name, cases, segmenters, rows):
    print(f"\n== {name}: {sum(len(g) for _, _, g in cases)} objects on {len(cases)} image(s)")
    print(f"{'config':28s} {'recall@0.5':>10s} {'mean best IoU':>13s} {'proposals/img':>13s} {'prompts/img':>11s} {'s/img':>7s}")
    for cname, seg in segmenters.items():
        best, props, prompts, secs = [], [], [], []
        for image_name, image, gts in cases:
            t0 = time.perf_counter()
            result = seg.run(image, source=image_name)
            secs.append(time.perf_counter() - t0)
            b = best_ious(result.instances, gts)
            best.extend(b.tolist())
            props.append(len(result.instances))
            prompts.append(result.stats.prompts)
            rows.append({"dataset": name, "config": cname, "image": image_name, "objects": len(b),
                         "matched": int((b >= 0.5).sum()), "mean_best_iou": float(b.mean()),
                         "proposals": len(result.instances), "seconds": secs[-1], "stats": asdict(result.stats)})
        best = np.array(best)
        print(f"{cname:28s} {np.mean(best >= 0.5):10.3f} {best.mean():13.3f} {np.mean(props):13.1f} {np.mean(prompts):11.0f} {np.mean(secs):7.1f}",
              flush=True)


def speed(model_name, predictor_factory, repeats, rows):
    from medsam.inference.everything import AutomaticSegmenter
    from medsam.io.raster import read_image

    path = SHARED / "data" / "ct_slices" / "images" / "amos_0004_75.png"
    image = read_image(path)
    print(f"\n== speed: {path.name} {image.shape[1]}x{image.shape[0]}, 16x16 grid, {model_name}")
    variants = {
        "default": {},
        "plain-grid": {"skip_background": False, "progressive": False},
        "default, model decoder": {"shared_decoder": False},
    }
    times = defaultdict(list)
    last = {}
    for r in range(repeats):
        for vname, kw in variants.items():
            predictor = predictor_factory()  # a fresh predictor: the encoding is not cached between runs
            seg = AutomaticSegmenter(predictor, grid=16, **kw)
            t0 = time.perf_counter()
            result = seg.run(image)
            times[vname].append(time.perf_counter() - t0)
            last[vname] = result.stats
    print(f"{'path':24s} {'median s':>8s} {'prompts':>7s} {'encode s':>8s} {'decode s':>8s} {'post s':>7s} {'objects':>7s}")
    for vname in variants:
        s = last[vname]
        print(f"{vname:24s} {np.median(times[vname]):8.1f} {s.prompts:7d} {s.encode_s:8.1f} {s.decode_s:8.1f} {s.postprocess_s:7.1f} {s.kept:7d}")
        rows.append({"dataset": "speed", "config": vname, "seconds": times[vname], "stats": asdict(s)})
    saving = np.median(times["plain-grid"]) / np.median(times["default"])
    print(f"skipping rules: {last['plain-grid'].prompts} -> {last['default'].prompts} prompts, "
          f"{saving:.2f}x faster than the plain grid in this run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--nuclei-grid", type=int, nargs="*", default=[16, 32], help="grids to try on the nuclei image")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--nuclei-anchors", default="1.25,2.5",
                    help="an extra nuclei row with these box anchors (dense small objects); empty to skip")
    ap.add_argument("--only", choices=("ct", "nuclei", "speed"), nargs="*", default=["ct", "nuclei", "speed"])
    ap.add_argument("--stardist-dir", type=Path, default=Path("/tmp/sd"))
    ap.add_argument("--repeats", type=int, default=1, help="speed runs per path (median reported)")
    ap.add_argument("--engine", choices=("torch", "default"), default="torch",
                    help="torch: the model's own fp32 path; default: medsam.inference.engines' default path")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from medsam.inference.everything import AutomaticSegmenter
    from medsam.inference.predictor import Predictor
    from medsam.models.registry import build_model

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    model = build_model(args.model, device="cpu")

    def predictor_factory():
        if args.engine == "default":
            from medsam.inference.engines import make_predictor

            return make_predictor(model)
        return Predictor(model)

    rows: list[dict] = []
    if "ct" in args.only:
        if not (SHARED / "data" / "cases.csv").is_file():
            print(f"CT slices skipped: {SHARED}/data is absent")
        else:
            cases = [c for c in load_ct_slices() if c[2]]
            segs = {c: AutomaticSegmenter(predictor_factory(), grid=args.grid, **CONFIGS[c]) for c in args.configs}
            run_dataset("ct_slices", cases, segs, rows)
    if "nuclei" in args.only:
        loaded, why = load_nuclei(args.stardist_dir)
        if loaded is None:
            print(f"\nnuclei skipped: {why}")
        else:
            image, gts = loaded
            for g in args.nuclei_grid:
                segs = {f"{c} grid {g}": AutomaticSegmenter(predictor_factory(), grid=g, **CONFIGS[c]) for c in args.configs}
                if args.nuclei_anchors:
                    from medsam.inference.everything import parse_anchors

                    segs[f"anchors {args.nuclei_anchors} grid {g}"] = AutomaticSegmenter(
                        predictor_factory(), grid=g, anchors=parse_anchors(args.nuclei_anchors)
                    )
                run_dataset(f"nuclei (stardist img2d), grid {g}", [("img2d", image, gts)], segs, rows)
    if "speed" in args.only:
        speed(args.model, predictor_factory, args.repeats, rows)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
