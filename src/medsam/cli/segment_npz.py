"""`medsam segment CASE.npz|CASES_DIR -o SEGS_DIR [--mode default|reference]`: CVPR24 npz cases (the branch of
`medsam segment` for npz input). Each case's boxes are its prompts; ``SEGS_DIR/<same name>.npz`` gets ``segs``.
A MedSAM2-layout case (with ``direction``) is segmented in the --orientation view (canonical by default, stored
with --mode reference); its boxes are stored-array indices and ``segs`` is on the stored grid.

Example:
    medsam segment test_demo/imgs/ -o test_demo/segs/ --mode reference
"""

from __future__ import annotations

import argparse


def run_npz(args: argparse.Namespace) -> int:
    from medsam.cli.common import load_predictor
    from medsam.errors import PromptError
    from medsam.inference.cvpr24 import segment_npz_path
    from medsam.inference.propagate import PropagationConfig

    if args.box or args.point or args.overlay:
        raise PromptError("npz cases carry their own boxes: --box, --point and --overlay do not apply to npz input")
    predictor = load_predictor(args)
    count = 0
    for result in segment_npz_path(predictor, args.image, args.output, config=PropagationConfig(mode=args.mode),
                                   orientation=getattr(args, "orientation", None), overwrite=args.overwrite):
        kind = "3D" if result.is_3d else "2D"
        where = f", orientation {result.orientation}" if result.is_3d else ""
        print(f"{result.input_path.name}: {kind}{where}, {result.objects} object(s) -> {result.output_path} "
              f"({result.seconds:.1f} s)")
        count += 1
    print(f"segmented {count} case(s) into {args.output}")
    return 0
