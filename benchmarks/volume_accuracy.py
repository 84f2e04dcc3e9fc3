"""Accuracy of 3D propagation on the dev set's 3D cases: reference vs default mode, DSC and NSD.

    python benchmarks/volume_accuracy.py [--model lite_medsam] [--tolerance-mm 2] [--variants ...] [--csv out.csv]

Cases: the ``dims == 3d`` rows of ../shared/data/cases.csv (ct_lesions_3d: MedSAM2 npz, already uint8; mri_3d:
NRRD image + label, windowed with ``auto`` = MR percentile 0.5-99.5). The prompt is the ground truth's tight 3D
box (x0, y0, z0, x1, y1, z1), as in the CVPR 2024 challenge. Scores: DSC and NSD at ``--tolerance-mm`` with the
volume's spacing (``medsam.metrics.nsd``, boundary voxels; in 3D it agrees with the challenge's surfel NSD).

Variants (all share each case's slice embeddings: one Predictor with a cache large enough for a case):
- reference: the official LiteMedSAM procedure;
- default: ``PropagationConfig()`` from the same 3D box;
- default+mask: the default mode feeding the previous slice's logits as a mask prompt;
- default-noclip: the default mode without clipping to the 3D box's in-plane extent;
- default-rule-in-box: the default mode applying its stopping rule inside the 3D box's z range too;
- slice-box: the default mode from a 2D box on the 3D box's middle slice only (tight box of that slice's
  truth), no z limits: the stopping rule finds the object's ends by itself;
- slice-box-iou-only: the same with a predicted-IoU rule only (IoU >= 0.6), no overlap/intensity rules;
- slice-box-nostop: the same without any stopping rule (runs to the volume's ends).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@dataclass
class Case:
    dataset: str
    name: str
    volume: object  # medsam.types.Volume
    uint8: np.ndarray
    truth: np.ndarray


def load_cases(shared: Path) -> list[Case]:
    from medsam.io.volume import read_volume
    from medsam.preprocess.intensity import apply_window

    data = shared / "data"
    cases = []
    with open(data / "cases.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["dims"].strip() != "3d":
                continue
            volume = read_volume(data / row["image"])
            if row["mask"].endswith(".npz"):
                with np.load(data / row["mask"]) as z:
                    truth = z["gts"]
            else:
                truth = read_volume(data / row["mask"]).array
            truth = truth == int(row["label"])
            cases.append(Case(row["dataset"], row["case"], volume, apply_window(volume, "auto"), truth))
    return cases


def variants():
    from medsam.inference.propagate import REFERENCE, PropagationConfig

    return {
        "reference": ("box3d", REFERENCE),
        "default": ("box3d", PropagationConfig()),
        "default+mask": ("box3d", PropagationConfig(mask_prompt=True)),
        "default-noclip": ("box3d", PropagationConfig(clip_to_box=False)),
        "default-rule-in-box": ("box3d", PropagationConfig(trust_limits=False)),
        "slice-box": ("slice", PropagationConfig()),
        "slice-box-iou-only": ("slice", PropagationConfig(min_iou=0.6, min_overlap=0.0, max_intensity_shift=None)),
        "slice-box-nostop": ("slice", PropagationConfig(stop_rule=False)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--tolerance-mm", type=float, default=2.0)
    parser.add_argument("--variants", nargs="*", default=None, help="subset of: " + ", ".join(variants()))
    parser.add_argument("--csv", default=None, help="also write per-case rows to this CSV")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from medsam.inference.predictor import Predictor
    from medsam.inference.propagate import ObjectPrompt, segment_stack
    from medsam.metrics import dice, nsd
    from medsam.models.registry import build_model
    from medsam.types import Box, Box3D

    chosen = variants()
    if args.variants:
        chosen = {k: v for k, v in chosen.items() if k in args.variants}
    cases = load_cases(Path(args.shared))
    model = build_model(args.model, device="cpu")
    print(f"{len(cases)} cases, model {args.model}, NSD tolerance {args.tolerance_mm} mm, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    start = time.perf_counter()
    for case in cases:
        predictor = Predictor(model, cache_bytes=2 * 2**30)  # one case's embeddings, shared by the variants
        box3d = Box3D.from_mask(case.truth)
        key = int((box3d.z1 - box3d.z0) / 2 + box3d.z0)
        for name, (kind, config) in chosen.items():
            if kind == "box3d":
                prompt = ObjectPrompt.from_box3d(box3d)
            else:
                prompt = ObjectPrompt(z=key, box=Box.from_mask(case.truth[key]))
            result = segment_stack(predictor, case.uint8, [prompt], config, progress=False)
            seg = result.labels > 0
            row = {
                "dataset": case.dataset, "case": case.name, "variant": name,
                "dsc": dice(seg, case.truth), "nsd": nsd(seg, case.truth, args.tolerance_mm, case.volume.spacing_mm),
                "z_range": result.objects[0].z_range, "truth_z": (int(box3d.z0), int(box3d.z1)),
            }
            rows.append(row)
            print(f"  {case.name[:30]:30s} {name:15s} DSC {row['dsc']:.4f}  NSD {row['nsd']:.4f}  "
                  f"z {row['z_range']} (truth {row['truth_z']})", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s\n")
    names = list(chosen)
    print("| case | " + " | ".join(f"{n} DSC | {n} NSD" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for case in cases:
        cells = []
        for n in names:
            r = next(r for r in rows if r["case"] == case.name and r["variant"] == n)
            cells.append(f"{r['dsc']:.4f} | {r['nsd']:.4f}")
        print(f"| {case.name} | " + " | ".join(cells) + " |")
    for group, members in (("mean, all", None), ("mean, ct_lesions_3d", "ct_lesions_3d"), ("mean, mri_3d", "mri_3d")):
        cells = []
        for n in names:
            sel = [r for r in rows if r["variant"] == n and (members is None or r["dataset"] == members)]
            if not sel:
                cells.append("- | -")
                continue
            cells.append(f"{np.mean([r['dsc'] for r in sel]):.4f} | {np.mean([r['nsd'] for r in sel]):.4f}")
        print(f"| **{group}** | " + " | ".join(cells) + " |")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
