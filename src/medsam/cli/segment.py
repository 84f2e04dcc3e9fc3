"""`medsam segment IMAGE --box x0,y0,x1,y1 [--box ...] [--point x,y,1|0 ...] -o MASK.png [--overlay PNG]`."""

from __future__ import annotations

import argparse

from medsam.cli.common import add_model_options, load_predictor


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "segment",
        help="segment objects in a 2D image from boxes and/or clicks",
        description="Segment objects in a 2D image (PNG, JPEG, TIFF, BMP; 8/16-bit). Each --box is one object; "
        "--point clicks refine a single object (label 1 inside, 0 outside).",
    )
    parser.add_argument("image", help="input image file, or an npz case or folder of them: CVPR 2024 (imgs, boxes) "
                        "or CVPR 2025 interactive (boxes as dicts, clicks, prev_pred; one protocol step per call)")
    parser.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1", help="box in image pixels; repeat for several objects")
    parser.add_argument("--point", action="append", default=[], metavar="x,y,1|0", help="click (1 = inside, 0 = outside); repeatable")
    parser.add_argument("-o", "--output", required=True, help="mask PNG to write (0/255 for one object, labels 1..N for several)")
    parser.add_argument("--overlay", default=None, help="also write an overlay PNG of the masks on the image")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--mode", choices=("default", "reference"), default="default",
                        help="3D npz cases: propagation mode (reference = the official LiteMedSAM procedure)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="CVPR 2025 npz cases: slice embeddings, exported engines and the state between protocol "
                        "steps (default OUTPUT/.medsam_cache)")
    parser.add_argument("--orientation", choices=("canonical", "lps", "stored"), default=None,
                        help="3D MedSAM2 npz cases (with a direction): what the model sees, canonical = radiological "
                        "display orientation (default), lps, or stored (default with --mode reference); boxes are "
                        "stored-array indices and segs land on the stored grid")
    add_model_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medsam.inference.segment2d import segment_file
    from medsam.io.atomic import check_writable
    from medsam.types import Box, Points
    from medsam.inference.cvpr24 import is_npz_input

    if is_npz_input(args.image):  # CVPR24 npz file or folder: -o is the folder of segs
        from medsam.cli.segment_npz import run_npz

        return run_npz(args)
    boxes = [Box.from_sequence(b, source=f"--box {b!r}") for b in args.box]
    points = Points.parse(args.point) if args.point else None
    check_writable(args.output, overwrite=args.overwrite)
    if args.overlay:
        check_writable(args.overlay, overwrite=args.overwrite)
    predictor = load_predictor(args)
    result = segment_file(
        predictor, args.image, args.output, boxes=boxes, points=points, overlay_path=args.overlay, overwrite=args.overwrite
    )
    pred = result.prediction
    for i in range(pred.num_objects):
        area = int(pred.masks[i, 0].sum())
        print(f"object {i + 1}: {area} px, predicted IoU {pred.iou_scores[i, 0]:.3f}")
    print(f"wrote {result.mask_path}" + (f" and {result.overlay_path}" if result.overlay_path else "") + f" in {result.seconds:.2f} s")
    return 0
