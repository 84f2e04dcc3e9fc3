"""`medsam segment CASE.npz|CASES_DIR -o SEGS_DIR [--mode default|reference]`: npz cases (the branch of `medsam
segment` for npz input). ``SEGS_DIR/<same name>.npz`` gets ``segs``.

- CVPR 2024 cases (imgs, boxes as numbers): each case's boxes are its prompts. A MedSAM2-layout case (with
  ``direction``) is segmented in the --orientation view (canonical by default, stored with --mode reference); its
  boxes are stored-array indices and ``segs`` is on the stored grid.
- CVPR 2025 interactive cases (boxes as dicts, clicks, clicks_order, prev_pred): one protocol step per call, as the
  challenge's harness runs a submission (six calls per case: the box, then 1..5 accumulated clicks). The output of
  the previous step is replaced; slice embeddings, exported engines and the state between steps are kept in
  ``--cache-dir`` (default ``SEGS_DIR/.medsam_cache``), so a click step costs well under the encoder's time.

Examples:
    medsam segment test_demo/imgs/ -o test_demo/segs/ --mode reference
    medsam segment /workspace/inputs -o /workspace/outputs          # a CVPR 2025 submission's predict.sh
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def run_npz(args: argparse.Namespace) -> int:
    from medsam.cli.common import load_predictor
    from medsam.errors import PromptError
    from medsam.inference.cvpr24 import npz_inputs, segment_npz_path
    from medsam.inference.propagate import PropagationConfig
    from medsam.io.npz import is_cvpr25_npz

    if args.box or args.point or args.overlay:
        raise PromptError("npz cases carry their own prompts: --box, --point and --overlay do not apply to npz input")
    files = npz_inputs(args.image)
    interactive = [f for f in files if is_cvpr25_npz(f)]
    cache_dir = Path(args.cache_dir or Path(args.output) / ".medsam_cache").expanduser()
    predictor_kwargs = {}
    if interactive:
        from medsam.inference.cache import DiskEmbeddingCache

        os.environ.setdefault("MEDSAM_CACHE_DIR", str(cache_dir / "models"))  # exported engines survive the call
        predictor_kwargs["disk_cache"] = DiskEmbeddingCache(cache_dir / "embeddings")
        predictor_kwargs["lazy_encoder"] = True  # a click step finds every slice it needs on disk
    predictor = load_predictor(args, **predictor_kwargs)
    count = 0
    if len(interactive) < len(files):
        source = args.image if not interactive else [f for f in files if f not in interactive]
        for result in segment_npz_path(predictor, source, args.output, config=PropagationConfig(mode=args.mode),
                                       orientation=getattr(args, "orientation", None), overwrite=args.overwrite):
            kind = "3D" if result.is_3d else "2D"
            where = f", orientation {result.orientation}" if result.is_3d else ""
            print(f"{result.input_path.name}: {kind}{where}, {result.objects} object(s) -> {result.output_path} "
                  f"({result.seconds:.1f} s)")
            count += 1
    if interactive:
        count += _run_cvpr25(predictor, interactive, Path(args.output), cache_dir, args)
    print(f"segmented {count} case(s) into {args.output}")
    return 0


def _run_cvpr25(predictor, files: list[Path], output: Path, cache_dir: Path, args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from medsam.errors import OutputError
    from medsam.inference.cvpr25 import segment_cvpr25_case

    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} is a file; for npz input give a folder (segs keep the input names)")
    if output.resolve() == files[0].parent.resolve():
        raise OutputError(f"output folder {output} is the input folder; give another folder for the segs")
    output.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="cases", unit="case", disable=len(files) < 2):
        r = segment_cvpr25_case(predictor, path, output / path.name, work_dir=cache_dir)
        how = "continued from the previous step" if r.resumed else "from the box" + (" and every click" if r.clicks_total else "")
        print(f"{path.name}: CVPR25 step {r.step}, {r.classes} class(es), {how}: {r.clicks_run} click(s) run, "
              f"{r.slices_encoded} slices encoded, {r.slices_decoded} decoded -> {r.output_path} ({r.seconds:.1f} s)")
    return len(files)
