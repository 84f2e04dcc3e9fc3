"""Corrective clicks: mean DSC per click for refinement strategies, on the 2D cases of the dev set.

    python benchmarks/clicks.py                                  # LiteMedSAM, 150 2D cases, 5 clicks, tight boxes
    python benchmarks/clicks.py --boxes tight,loose,small        # also user-like boxes that are too big / too small
    python benchmarks/clicks.py --limit 10 --variants sam,box_update --json out.json

The simulated user of ``medsam evaluate --prompt clicks:N`` (medsam.evaluation.prompting): after each prediction
one click at the centre of the largest error region, positive in a miss, negative in a false positive. Each image
is encoded once (the predictor's embedding cache); every variant and start box reuses that embedding.

Variants:
- sam:       the SAM recipe (box + every click as a point + the previous low-res logits as mask_input);
             ``clicks:N:sam``; what clicks:N did before the refinement strategies;
- nologits:  box + every click as a point, no mask input; ``clicks:N:nologits``;
- box_update: the default for box-trained models (medsam.inference.refine, RefinePolicy()); ``clicks:N``;
- box_update variants, one rule changed each: r4 / r10 / rinf (region radius 4, 10 or unbounded times the
  click's distance to the mask edge), noclip (positive regions not bounded by the box), nogrow (a positive click
  outside the box does not grow it), nostray (no removal of stray pieces), shrink (a negative click near a box
  side moves the side past it, fraction 0.25).

Start boxes: tight (the reference's tight box, as the evaluation does), loose (each side moved out by a random
0-15 % of the box size, seeded per case: a person's box) and small (moved in by 0-15 %: a box that cuts the
object, so positive clicks fall outside it).

Printed per start box: mean DSC after 0..N clicks per variant (all cases pooled, then per dataset), the share
of cases whose final DSC is below the box-only DSC, and the mean milliseconds per click (decoder + rules; the
machine's load is printed: timings on shared cores drift, compare rows of one run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "src"))


def variants():
    from medsam.inference.refine import RefinePolicy as P

    return {
        "sam": ("sam", True, None),
        "nologits": ("sam", False, None),
        "box_update": ("box_update", True, P()),
        "box_update/r4": ("box_update", True, P(region_radius=4.0)),
        "box_update/r10": ("box_update", True, P(region_radius=10.0)),
        "box_update/rinf": ("box_update", True, P(region_radius=None)),
        "box_update/noclip": ("box_update", True, P(clip_to_box=False)),
        "box_update/nogrow": ("box_update", True, P(grow_box=False)),
        "box_update/nostray": ("box_update", True, P(remove_stray=False)),
        "box_update/shrink": ("box_update", True, P(shrink_box=0.25)),
    }


def start_box(reference: np.ndarray, kind: str, seed: int):
    from medsam.training.prompts import tight_box
    from medsam.types import Box

    box = tight_box(reference)
    if kind == "tight":
        return box
    h, w = reference.shape
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.0, 0.15, 4) * np.array([box.width, box.height, box.width, box.height])
    sign = -1.0 if kind == "loose" else 1.0
    x0, y0, x1, y1 = box.as_array() + sign * np.array([1, 1, -1, -1]) * f
    if kind == "small" and (x1 - x0 < 2 or y1 - y0 < 2):
        return box
    return Box(max(0.0, x0), max(0.0, y0), min(w - 1.0, x1), min(h - 1.0, y1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cases.csv"))
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--variants", default=None, help="comma list (default: all); see the module doc")
    parser.add_argument("--boxes", default="tight", help="comma list of tight, loose, small (default tight)")
    parser.add_argument("--datasets", default=None)
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", help="engine precision (default fp32: the exact masks)")
    parser.add_argument("--backend", default="auto", help="engine backend (default auto: OpenVINO when installed)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1: steady on shared cores)")
    parser.add_argument("--json", default=None, help="also write every case's DSC per click here")
    args = parser.parse_args()

    import torch

    from medsam.evaluation import CaseLoader, StepOutput, load_cases, simulate_clicks, simulate_refinement
    from medsam.inference.engines import ExecutionOptions, make_predictor
    from medsam.inference.refine import Refiner
    from medsam.models.registry import build_model
    from medsam.training.prompts import SimulatedPrompt, case_seed

    torch.set_num_threads(args.threads)
    table = variants()
    names = [v.strip() for v in args.variants.split(",")] if args.variants else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(table)}")
    boxes = [b.strip() for b in args.boxes.split(",")]
    if any(b not in ("tight", "loose", "small") for b in boxes):
        parser.error("--boxes takes tight, loose and/or small")
    datasets = args.datasets.split(",") if args.datasets else None
    cases = [c for c in load_cases(args.data, datasets=datasets, limit=args.limit) if c.dims == "2d"]
    model = build_model(args.model, device="cpu")
    predictor = make_predictor(model, ExecutionOptions(args.precision, args.backend, args.threads), cache_bytes=1 << 30)
    print(f"{args.model} ({model.spec.refinement} by default), {len(cases)} 2D cases, {args.clicks} clicks, "
          f"engine {args.precision}/{args.backend} x{args.threads}; load average {os.getloadavg()[0]:.2f} at start")

    # dsc[(box kind, variant)] -> list of (dataset, case, dsc per click); seconds per click likewise
    dsc: dict[tuple[str, str], list] = defaultdict(list)
    click_seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    loader = CaseLoader()
    encode_s = 0.0
    t_start = time.perf_counter()
    for i, case in enumerate(cases):
        loaded = loader.load(case)
        t0 = time.perf_counter()
        encoding = predictor.set_image(loaded.image)
        encode_s += time.perf_counter() - t0
        seed = case_seed(args.seed, case.key)
        for kind in boxes:
            start = SimulatedPrompt("box", seed=seed, box=start_box(loaded.reference, kind, seed))
            for name in names:
                strategy, feed, policy = table[name]
                t0 = time.perf_counter()
                if strategy == "sam":
                    def predict(box, points, mask_input):
                        predictor.set_encoding(encoding)
                        pred = predictor.predict(boxes=box, points=points, mask_input=mask_input)
                        return StepOutput(pred.masks[0, 0], pred.low_res_logits[:1, :1], float(pred.iou_scores[0, 0]))

                    trace = simulate_clicks(predict, loaded.reference, start, args.clicks, feed_logits=feed)
                else:
                    predictor.set_encoding(encoding)
                    trace = simulate_refinement(Refiner(predictor, strategy, policy), loaded.reference, start, args.clicks)
                seconds = time.perf_counter() - t0
                dsc[(kind, name)].append((case.dataset, case.case_id, trace.dsc_per_click))
                click_seconds[(kind, name)].append(seconds / (len(trace.clicks) + 1))
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(cases)} cases, {time.perf_counter() - t_start:.0f} s", flush=True)
    print(f"encoding {encode_s:.0f} s for {len(cases)} cases (shared images encoded once); total "
          f"{time.perf_counter() - t_start:.0f} s; load average {os.getloadavg()[0]:.2f} at the end")

    all_datasets = sorted({c.dataset for c in cases})
    header = " ".join(f"@{k:<5}" for k in range(args.clicks + 1))
    for kind in boxes:
        print(f"\n== start box: {kind} ==  mean DSC after 0..{args.clicks} clicks; worse = share of cases whose "
              f"DSC@{args.clicks} < DSC@0; ms = per prediction (decoder + rules)")
        print(f"{'variant':<20} {'dataset':<22} {'n':>4} {header} {'worse':>6} {'ms':>6}")
        for name in names:
            rows = dsc[(kind, name)]
            ms = 1000.0 * float(np.mean(click_seconds[(kind, name)]))
            for ds in [None, *all_datasets]:
                sel = np.array([r[2] for r in rows if ds is None or r[0] == ds])
                if sel.size == 0:
                    continue
                means = " ".join(f"{v:.3f}" for v in sel.mean(axis=0))
                worse = float(np.mean(sel[:, -1] < sel[:, 0] - 1e-9))
                label = name if ds is None else ""
                shown_ms = f"{ms:>6.0f}" if ds is None else ""
                print(f"{label:<20} {ds or 'all':<22} {len(sel):>4} {means} {worse:>6.1%} {shown_ms}")
    if args.json:
        out = {f"{kind}/{name}": rows for (kind, name), rows in dsc.items()}
        Path(args.json).write_text(json.dumps(out))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
