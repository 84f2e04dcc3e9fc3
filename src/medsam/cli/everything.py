"""`medsam everything IMAGE -o LABELS.png [--overlay PNG] [--json COCO.json]`: propose a mask for every structure.

    medsam everything slice.png -o labels.png --overlay overlay.png --json proposals.json
    medsam everything ct.nii.gz --slice 40 --window soft_tissue -o labels.png
    medsam everything cells.tif --grid 32 --min-area 30 -o labels.png

LiteMedSAM and MedSAM get box prompts (they were trained with boxes only); SAM models get point prompts.
A 2D image (PNG, JPEG, TIFF, BMP) or one slice of a volume (DICOM folder, NIfTI, NRRD, MHA, npz; --slice Z,
the middle one by default, windowed with --window) goes through
:class:`medsam.inference.everything.AutomaticSegmenter`. Outputs: a label map (object i has value i, the
largest object is 1; 8-bit PNG up to 255 objects, else 16-bit), an overlay with a colour and a number per
object, and a COCO JSON file (RLE masks, bbox as x, y, width, height, scores, the prompt point).
"""

from __future__ import annotations

import argparse
from pathlib import Path

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def register(sub: argparse._SubParsersAction) -> None:
    from medsam.cli.common import add_model_options

    parser = sub.add_parser(
        "everything",
        help="propose masks for every structure of an image (automatic, no prompts)",
        description="Segment everything: prompts spread over the image give a mask for each structure, "
        "written as a label map, a numbered overlay and COCO JSON. Background outside the body or field of "
        "view is skipped, and points inside masks already found are not prompted again.",
    )
    parser.add_argument("image", help="2D image file, or a volume (DICOM folder, .nii.gz, .nrrd, .mha, .npz) with --slice")
    parser.add_argument("-o", "--output", required=True, help="label map PNG to write (object i has value i)")
    parser.add_argument("--overlay", default=None, help="also write an overlay PNG with coloured, numbered objects")
    parser.add_argument("--json", default=None, dest="json_path", help="also write the proposals as COCO JSON (RLE masks)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    vol = parser.add_argument_group("volumes")
    vol.add_argument("--slice", type=int, default=None, metavar="Z", help="slice index (z, from 0) of a volume; default: the middle slice")
    vol.add_argument("--window", default="auto", help="intensity window for a volume: soft_tissue, lung, bone, brain, W,L, percentile or auto (default)")
    vol.add_argument("--series-uid", default=None, help="DICOM series to read when a folder holds several")
    amg = parser.add_argument_group("proposals")
    amg.add_argument("--grid", type=int, default=16, help="points per side of the prompt grid (default 16); box prompts are sized in grid spacings, so a denser grid also means smaller boxes (e.g. 32 for cells)")
    amg.add_argument("--points-per-batch", type=int, default=64, help="prompts per decoder call (default 64)")
    amg.add_argument("--pred-iou", type=float, default=None, help="keep masks whose predicted IoU exceeds this (default 0.75 with box prompts (LiteMedSAM, MedSAM), 0.88 with point prompts (SAM))")
    amg.add_argument("--stability", type=float, default=None, help="keep masks with a stability score at least this (default 0.7 with box prompts, 0.95 with point prompts)")
    amg.add_argument("--nms", type=float, default=0.7, help="IoU above which the weaker of two masks is dropped (default 0.7)")
    amg.add_argument("--nms-mode", choices=("box", "mask"), default=None, help="compare boxes (SAM's way, the default) or masks (keeps nested structures whose boxes coincide)")
    amg.add_argument("--min-area", type=int, default=None, metavar="PX", help="drop holes, islands and objects smaller than this (default 0.02%% of the image)")
    amg.add_argument("--crop-layers", type=int, default=0, help="also run on 4 (1) or 4+16 (2) overlapping tiles for small structures (default 0)")
    amg.add_argument("--anchors", default=None, metavar="SIZE[:STRIDE[:r]],...",
                     help="box prompts (LiteMedSAM, MedSAM): sides in grid spacings, each on every STRIDE-th grid point, "
                     "r = prompt again with the mask's own box; default 1.25,2.5:2:r,5:2:r (organs); 1.25,2.5 suits dense cells")
    amg.add_argument("--prompt-mode", choices=("auto", "points", "boxes"), default="auto", help="auto: boxes for LiteMedSAM/MedSAM (box-trained), points for SAM")
    amg.add_argument("--no-skip-background", action="store_true", help="prompt the background too")
    amg.add_argument("--no-progressive", action="store_true", help="prompt every grid point even inside masks already found")
    add_model_options(parser)
    parser.set_defaults(func=run)


def load_plane(path: str | Path, *, slice_index: int | None, window: str, series_uid: str | None):
    """Read a 2D image, or one windowed slice of a volume; returns (image, description, slice index or None)."""
    from medsam.errors import InputError
    from medsam.io.raster import read_image

    path = Path(path).expanduser()
    if path.is_file() and path.name.lower().endswith(RASTER_SUFFIXES):
        if slice_index is not None:
            raise InputError(f"--slice {slice_index}: {path} is a 2D image; --slice is for volumes")
        return read_image(path), path.name, None
    if not path.exists():
        raise InputError(f"image {path} does not exist; give a 2D image file or a volume")
    from medsam.io.volume import read_volume
    from medsam.preprocess.intensity import apply_window, resolve_window

    volume = read_volume(path, series_uid=series_uid)
    depth = volume.shape[0]
    z = depth // 2 if slice_index is None else int(slice_index)
    if not 0 <= z < depth:
        raise InputError(f"--slice {slice_index}: {path} has {depth} slices; give 0..{depth - 1}")
    win = resolve_window(volume, window)
    plane = apply_window(volume.array[z : z + 1], win)[0]
    return plane, f"{path.name}#z={z}", z


def run(args: argparse.Namespace) -> int:
    from medsam.inference.amg.export import (
        coco_document,
        label_map,
        render_everything_overlay,
        write_json,
        write_label_png,
        write_rgb_png,
    )
    from medsam.inference.everything import DEFAULT_ANCHORS, AutomaticSegmenter, format_anchors, parse_anchors
    from medsam.io.atomic import check_writable

    anchors = parse_anchors(args.anchors) if args.anchors else DEFAULT_ANCHORS
    outputs = [p for p in (args.output, args.overlay, args.json_path) if p]
    if len({str(Path(p).expanduser().resolve()) for p in outputs}) != len(outputs):
        from medsam.errors import OutputError

        raise OutputError("-o, --overlay and --json must be different files")
    for p in outputs:
        check_writable(p, overwrite=args.overwrite)
    image, description, z = load_plane(args.image, slice_index=args.slice, window=args.window, series_uid=args.series_uid)
    predictor = _predictor(args)
    model = predictor.model
    segmenter = AutomaticSegmenter(
        predictor,
        grid=args.grid,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou,
        stability_thresh=args.stability,
        nms_iou=args.nms,
        nms_mode=args.nms_mode,
        min_area_px=args.min_area,
        crop_layers=args.crop_layers,
        prompt_mode=args.prompt_mode,
        anchors=anchors,
        skip_background=not args.no_skip_background,
        progressive=not args.no_progressive,
    )
    result = segmenter.run(image, source=f"image {description}")
    instances = result.instances
    labels = label_map(instances, result.image_hw)
    # Render everything before writing anything, so a failure leaves no partial set of outputs.
    overlay = render_everything_overlay(image, instances) if args.overlay else None
    document = None
    if args.json_path:
        s = result.stats
        document = coco_document(
            instances, result.image_hw, file_name=description,
            info={
                "description": "medsam everything proposals",
                "model": model.spec.name,
                "slice": z,
                "prompt_mode": segmenter.prompt_mode,
                "anchors": format_anchors(segmenter.anchors) if segmenter.prompt_mode == "boxes" else None,
                "grid": segmenter.grid,
                "pred_iou_thresh": segmenter.pred_iou_thresh,
                "stability_thresh": segmenter.stability_thresh,
                "nms_iou": segmenter.nms_iou,
                "min_area_px": segmenter.min_area_for(result.image_hw),
                "prompts": s.prompts,
                "seconds": round(s.total_s, 3),
            },
        )
    write_label_png(labels, args.output, overwrite=args.overwrite)
    written = [str(args.output)]
    if overlay is not None:
        write_rgb_png(overlay, args.overlay, overwrite=args.overwrite)
        written.append(str(args.overlay))
    if document is not None:
        write_json(document, args.json_path, overwrite=args.overwrite)
        written.append(str(args.json_path))
    s = result.stats
    print(
        f"{len(instances)} objects in {description} ({s.prompts} prompts from {s.grid_points} grid points; "
        f"{s.skipped_background} on background and {s.skipped_covered} inside found masks skipped; "
        f"{s.total_s:.1f} s: encode {s.encode_s:.1f}, decode {s.decode_s:.1f}, post {s.postprocess_s:.1f})"
    )
    for i, inst in enumerate(instances[:20]):
        x, y, bw, bh = inst.bbox_xywh()
        print(f"  {i + 1:3d}: area {inst.area:7d} px, box x={x} y={y} w={bw} h={bh}, predicted IoU {inst.predicted_iou:.3f}, stability {inst.stability_score:.3f}")
    if len(instances) > 20:
        print(f"  ... and {len(instances) - 20} more")
    print("wrote " + ", ".join(written))
    return 0


def _predictor(args: argparse.Namespace):
    """The predictor of the shared model options: through the execution engines (--precision/--backend)
    when this installation has them, else the model's own PyTorch path."""
    from medsam.cli import common

    if hasattr(common, "load_predictor"):
        return common.load_predictor(args)
    from medsam.inference.predictor import Predictor

    return Predictor(common.load_model(args))
