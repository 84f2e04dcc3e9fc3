"""Which re-propagation rule helps corrective clicks most: the CVPR 2025 protocol on the dev 3D cases, in one run.

    python benchmarks/repropagation.py [--orientation stored|canonical] [--clicks 5] [--variants rewrite,local,local+carry]

Per variant of :class:`medsam.inference.interactive3d.InteractiveVolume` (LiteMedSAM, default engine; the 8 dev 3D
cases of ../shared/data/cases.csv; the challenge's box, then clicks at the centre of the largest 3D error,
medsam.evaluation.protocol3d.run_protocol with each case's seed as `medsam evaluate` derives it):
- rewrite: each next slice's new mask replaces the old one until they agree (DSC >= 0.9);
- local: the new mask replaces the old one only near where the previous slice changed;
- local+carry: local, and the click taken on to the next slices while the mask is wrong at its pixel there
  (the default); rewrite+carry for completeness.
Printed: per case the DSC after each step, then per variant the mean DSC and NSD per step and the AUCs. The
baseline of the comparison is ``rewrite`` (what "re-propagate until the masks agree" means taken literally).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VARIANTS = {
    "rewrite": dict(repropagation="rewrite", carry_clicks=False),
    "local": dict(repropagation="local", carry_clicks=False),
    "local+carry": dict(repropagation="local", carry_clicks=True),
    "rewrite+carry": dict(repropagation="rewrite", carry_clicks=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orientation", default="stored", choices=("stored", "canonical", "lps"))
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--variants", default="rewrite,local,local+carry,rewrite+carry")
    args = parser.parse_args()
    if not (DATA / "cases.csv").is_file():
        raise SystemExit(f"the dev data {DATA} is absent")
    from medsam.evaluation import CaseLoader, load_cases
    from medsam.evaluation.protocol3d import run_protocol
    from medsam.inference.engines import make_predictor
    from medsam.models.registry import build_model
    from medsam.training.prompts import case_seed

    predictor = make_predictor(build_model("lite_medsam"))
    cases = [c for c in load_cases(DATA / "cases.csv") if c.dims == "3d"]
    loader = CaseLoader(args.orientation)
    loaded = [loader.load(c) for c in cases]
    summary = []
    for name in [v for v in args.variants.split(",") if v]:
        start, traces = time.perf_counter(), []
        for case, item in zip(cases, loaded):
            trace = run_protocol(predictor, item.image, item.reference, spacing_mm=item.spacing_mm, n_clicks=args.clicks,
                                 seed=case_seed(0, case.key), **VARIANTS[name])
            traces.append(trace)
            print(f"  {name:<14} {case.case_id[:30]:<30} DSC per step " + " ".join(f"{d:.3f}" for d in trace.dsc), flush=True)
        dsc, nsd = np.mean([t.dsc for t in traces], axis=0), np.mean([t.nsd for t in traces], axis=0)
        summary.append(
            f"{name:<14} DSC {' '.join(f'{v:.3f}' for v in dsc)} | NSD {' '.join(f'{v:.3f}' for v in nsd)} | "
            f"DSC_AUC {np.mean([t.dsc_auc for t in traces]):.3f} NSD_AUC {np.mean([t.nsd_auc for t in traces]):.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    print(f"\norientation {args.orientation}, {len(cases)} cases, {args.clicks} clicks; mean per step (0 = the box):")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
