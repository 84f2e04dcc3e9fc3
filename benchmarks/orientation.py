"""Does the orientation the model sees matter? The dev 3D cases and RAS copies of them, stored vs canonical.

    python benchmarks/orientation.py [--model lite_medsam] [--prompts box] [--mode default] [--keep DIR]

Cases: the ``dims == 3d`` rows of ../shared/data/cases.csv (ct_lesions_3d: MedSAM2 npz stored with rows and
columns transposed and z reversed; mri_3d brain1: y reversed (LAS); breast1: LPS). Each is copied to a
temporary folder stored RAS (x -> patient right, y -> anterior, z -> superior): the same physical voxels,
arrays permuted/flipped, direction and origin rewritten, with its own manifest CSV (nothing is written to
../shared). ``medsam.evaluation.evaluate`` then scores LiteMedSAM (real weights, box prompt = the reference's
tight 3D box) on the originals and on the copies, each seen ``stored`` (the arrays as they are) and
``canonical`` (the radiological display orientation), in one run. Printed: DSC and NSD (2 mm) per case and
the mean, per prompt; with ``canonical`` the RAS copy must score exactly as its original.

Extend it with more prompts (e.g. click steps): ``run_table(prompts=["box", "clicks:3"], ...)`` gives one
column group per prompt.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAS_FLIP = (False, True, True)  # from LPS: y (P -> A) and x (L -> R) reversed


def ras_reorientations(volume):
    """(to LPS, LPS to RAS): applying both to a stored array gives the RAS copy's array."""
    from medsam.preprocess.orientation import AxisReorientation, reorientation_for

    to_lps = reorientation_for(volume.direction, volume.shape, "lps")
    return to_lps, AxisReorientation(to_lps.view_shape, flip=RAS_FLIP, name="ras copy")


def ras_copy(volume):
    """The volume stored RAS: every voxel at its physical point, the arrays permuted and flipped."""
    from medsam.preprocess.orientation import oriented_with

    to_lps, to_ras = ras_reorientations(volume)
    return oriented_with(oriented_with(volume, to_lps).view, to_ras).view


def write_ras_copies(cases, folder: Path) -> Path:
    """Write each case's RAS copy (npz as MedSAM2 layout, NRRD image + label) and a manifest; return the CSV."""
    import SimpleITK as sitk

    from medsam.evaluation.cases import MANIFEST_COLUMNS
    from medsam.io.npz import read_npz_case
    from medsam.io.volume import read_volume
    from medsam.io.volume_writers import to_sitk_image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        stem = f"{case.dataset}__{case.case_id}"
        if case.image_path.name.endswith(".npz"):
            src = read_npz_case(case.image_path)
            volume, mask = src.volume, src.gts
        else:
            volume, mask = read_volume(case.image_path), read_volume(case.mask_path).array
        to_lps, to_ras = ras_reorientations(volume)
        copy = ras_copy(volume)
        mask_copy = np.ascontiguousarray(to_ras.to_view(to_lps.to_view(mask)))
        if case.image_path.name.endswith(".npz"):
            image = mask_file = f"{stem}.npz"
            np.savez_compressed(folder / image, imgs=copy.array, gts=mask_copy, spacing=np.array(copy.spacing_mm[::-1]),
                                direction=copy.direction.reshape(-1), origin=np.array(copy.origin_mm))
        else:
            image, mask_file = f"{stem}_image.nrrd", f"{stem}_label.nrrd"
            sitk.WriteImage(to_sitk_image(copy.array, copy), str(folder / image), useCompression=True)
            sitk.WriteImage(to_sitk_image(mask_copy, copy), str(folder / mask_file), useCompression=True)
        rows.append({"dataset": case.dataset, "case": case.case_id, "modality": case.modality, "dims": "3d",
                     "image": image, "mask": mask_file, "label": "" if case.label is None else case.label,
                     "target": case.target})
    manifest = folder / "cases.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_table(
    model,
    originals,
    copies,
    *,
    prompts: Sequence[str] = ("box",),
    orientations: Sequence[str] = ("stored", "canonical"),
    mode: str = "default",
    progress: bool = True,
) -> dict[tuple[str, str, str], dict[str, tuple[float, float]]]:
    """{(data, orientation, prompt): {case key: (DSC, NSD, DSC per step, NSD per step, DSC_AUC, NSD_AUC)}} for data
    "original" and "RAS copy" (the per-step values and AUCs only under the 3D click protocol, clicks:N)."""
    from medsam.evaluation import evaluate

    table: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {}
    for data_name, cases in (("original", originals), ("RAS copy", copies)):
        for orientation in orientations:
            result = evaluate(cases, [model], prompt=list(prompts), mode=mode, orientation=orientation, keep_worst=0,
                              progress=progress)
            for row in result.rows:
                key = (data_name, orientation, row.prompt)
                table.setdefault(key, {})[f"{row.dataset}/{row.case}"] = (
                    (row.dsc, row.nsd, row.dsc_per_click, row.nsd_per_click, row.dsc_auc, row.nsd_auc) if row.ok
                    else (float("nan"), float("nan"), (), (), float("nan"), float("nan"))
                )
                if not row.ok:
                    print(f"  {data_name} {orientation} {row.dataset}/{row.case}: {row.status} {row.message}", file=sys.stderr)
    return table


def print_table(table, prompts: Sequence[str], orientations: Sequence[str]) -> None:
    columns = [(d, o) for d in ("original", "RAS copy") for o in orientations]
    for prompt in prompts:
        keys = list(next(iter(v for (_, _, p), v in table.items() if p == prompt)).keys())
        print(f"\nprompt {prompt}: DSC / NSD(2 mm)")
        header = f"{'case':<44}" + "".join(f"{d + ' ' + o:>22}" for d, o in columns)
        print(header)
        for key in keys + ["mean"]:
            cells = []
            for d, o in columns:
                values = table[(d, o, prompt)]
                dsc, nsd = (np.nanmean([v[0] for v in values.values()]), np.nanmean([v[1] for v in values.values()])) \
                    if key == "mean" else values[key][:2]
                cells.append(f"{dsc:>10.3f} / {nsd:.3f}")
            print(f"{key[-44:]:<44}" + "".join(f"{c:>22}" for c in cells))
        if "canonical" in orientations:
            a, b = table[("original", "canonical", prompt)], table[("RAS copy", "canonical", prompt)]
            worst = max(abs(a[k][0] - b[k][0]) for k in keys)
            print(f"max |DSC(original) - DSC(RAS copy)| seen canonical: {worst:.2e} (must be 0)")
        steps = [len(v[2]) for v in table[(columns[0][0], columns[0][1], prompt)].values() if v[2]]
        if steps:  # the 3D click protocol: mean DSC / NSD after the box (0) and after clicks 1, 3, 5 (as there are)
            n = min(steps)
            shown = [k for k in (0, 1, 3, 5) if k < n] + ([n - 1] if n - 1 not in (0, 1, 3, 5) else [])
            print(f"\nprompt {prompt}, the CVPR 2025 protocol: mean DSC / NSD after the box (step 0) and after clicks")
            print(f"{'step':<44}" + "".join(f"{d + ' ' + o:>22}" for d, o in columns))
            for k in shown:
                cells = []
                for d, o in columns:
                    values = [v for v in table[(d, o, prompt)].values() if len(v[2]) > k]
                    cells.append(f"{np.mean([v[2][k] for v in values]):>10.3f} / {np.mean([v[3][k] for v in values]):.3f}")
                print(f"{'after the box' if k == 0 else f'after {k} click(s)':<44}" + "".join(f"{c:>22}" for c in cells))
            cells = []
            for d, o in columns:
                values = table[(d, o, prompt)].values()
                cells.append(f"{np.nanmean([v[4] for v in values]):>10.3f} / {np.nanmean([v[5] for v in values]):.3f}")
            print(f"{'DSC_AUC / NSD_AUC':<44}" + "".join(f"{c:>22}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--prompts", default="box", help="comma list of evaluation prompts (box, clicks:3, ...)")
    parser.add_argument("--orientations", default="stored,canonical")
    parser.add_argument("--mode", default="default", choices=("default", "reference"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--keep", default=None, metavar="DIR", help="write the RAS copies here instead of a temp folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if not (SHARED / "data" / "cases.csv").is_file():
        print(f"the team data folder {SHARED} is absent", file=sys.stderr)
        return 1
    from medsam.evaluation import load_cases
    from medsam.models.registry import build_model
    from medsam.preprocess.orientation import orient_volume

    prompts = [p for p in args.prompts.split(",") if p]
    orientations = [o for o in args.orientations.split(",") if o]
    originals = [c for c in load_cases(SHARED / "data" / "cases.csv") if c.dims == "3d"]
    with tempfile.TemporaryDirectory(prefix="medsam_ras_") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        manifest = write_ras_copies(originals, folder)
        copies = load_cases(manifest)
        from medsam.evaluation import CaseLoader

        loader = CaseLoader("stored")
        for original, copy in zip(originals, copies):
            a = loader.load(original).volume
            b = loader.load(copy).volume
            print(f"{original.key:<44} canonical view of the original: {orient_volume(a).reorientation.describe():<38} "
                  f"of the RAS copy: {orient_volume(b).reorientation.describe()}")
        model = build_model(args.model, device=args.device)
        start = time.perf_counter()
        table = run_table(model, originals, copies, prompts=prompts, orientations=orientations, mode=args.mode,
                          progress=not args.no_progress)
        seconds = time.perf_counter() - start
    print_table(table, prompts, orientations)
    print(f"\n{len(originals)} cases x 2 copies x {len(orientations)} orientations x {len(prompts)} prompts "
          f"in {seconds:.0f} s ({args.model}, mode {args.mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
