"""`medsam segment-volume INPUT (--box3d x0,y0,z0,x1,y1,z1 ... | --slice Z --box x0,y0,x1,y1 ... [--point x,y,1|0])
-o OUT.nii.gz|OUT.nrrd|OUT.dcm|OUT_DIR [--format nifti|nrrd|mha|dicom-seg|rtstruct] [--window NAME|W,L]
[--montage PNG] [--mode default|reference] [--label NAME ...] [--overwrite]`.

Examples:
    medsam segment-volume ct_series/ --box3d 180,200,40,260,290,58 -o liver.nii.gz --window soft_tissue --montage liver.png
    medsam segment-volume ct_series/ --slice 50 --box 180,200,260,290 -o out/ --format rtstruct --label liver
    medsam segment-volume brain.nrrd --slice 14 --box 90,80,140,130 --point 115,105,1 -o tumour.nrrd --window percentile
"""

from __future__ import annotations

import argparse

from medsam.cli.common import add_model_options, load_predictor

_MODES = ("default", "reference")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "segment-volume",
        help="segment objects in a 3D volume (DICOM, NIfTI, NRRD, MHA, npz) by slice-to-slice propagation",
        description="Segment objects in a volume from a 3D box, or a box/clicks on one slice, propagated slice by "
        "slice in both directions. Coordinates: x, y in slice pixels (column, row), z = slice index from 0. "
        "Output: NIfTI/NRRD/MHA label volume on the input's exact grid, DICOM-SEG or RT-STRUCT for DICOM input.",
    )
    parser.add_argument("input", help="DICOM series folder or file, .nii/.nii.gz, .nrrd, .mha/.mhd or .npz volume")
    prompts = parser.add_argument_group("prompts (each --box3d / --box is one object)")
    prompts.add_argument("--box3d", action="append", default=[], metavar="x0,y0,z0,x1,y1,z1",
                         help="3D box, bounds inclusive; the object is segmented from its middle slice to z0 and z1")
    prompts.add_argument("--slice", type=int, default=None, metavar="Z", help="key slice of --box / --point")
    prompts.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1", help="box on the key slice")
    prompts.add_argument("--point", action="append", default=[], metavar="x,y,1|0",
                         help="click on the key slice (1 inside, 0 outside); refines a single object")
    prompts.add_argument("--z-range", default=None, metavar="Z0,Z1",
                         help="optional inclusive slice limits for --slice prompts (default: until the object ends)")
    parser.add_argument("-o", "--output", required=True, help="output file (.nii.gz, .nii, .nrrd, .mha, .dcm) or folder")
    parser.add_argument("--format", dest="output_format", default=None,
                        choices=("nifti", "nrrd", "mha", "dicom-seg", "rtstruct"),
                        help="output format (default: from the name; a folder gets DICOM-SEG for DICOM input, else NIfTI)")
    parser.add_argument("--window", default="auto",
                        help="intensity window: a CT name (soft_tissue, lung, bone, brain, liver, mediastinum), "
                        "W,L in HU (e.g. 400,40), percentile (MR), passthrough (uint8), or auto (default)")
    parser.add_argument("--mode", choices=_MODES, default="default",
                        help="default: stops where the object ends; reference: the official LiteMedSAM 3D procedure "
                        "(add --precision fp32 --backend torch for the official masks voxel for voxel)")
    parser.add_argument("--label", action="append", default=[], metavar="NAME",
                        help="name of each object in order (DICOM-SEG segment label / RT-STRUCT ROI name)")
    parser.add_argument("--montage", default=None, metavar="PNG", help="also write a PNG of key slices with outlines")
    parser.add_argument("--largest-component", action="store_true", help="keep each object's largest 3D connected part")
    parser.add_argument("--mask-prompt", action="store_true",
                        help="feed each slice's mask logits to the next slice as a mask prompt (default mode)")
    parser.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID when the folder holds several series")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per encoder batch (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_model_options(parser)
    parser.set_defaults(func=run)


def build_prompts(args: argparse.Namespace) -> list:
    """ObjectPrompts from --box3d, and from --slice with --box/--point (one object per box)."""
    from medsam.errors import PromptError
    from medsam.inference.propagate import ObjectPrompt
    from medsam.types import Box, Box3D, Points

    prompts = [ObjectPrompt.from_box3d(Box3D.from_sequence(b, source=f"--box3d {b!r}")) for b in args.box3d]
    boxes = [Box.from_sequence(b, source=f"--box {b!r}") for b in args.box]
    points = Points.parse(args.point) if args.point else None
    if (boxes or points is not None) and args.slice is None:
        raise PromptError("--box and --point need --slice Z: the slice (0-based) they are drawn on")
    if args.slice is not None and not boxes and points is None:
        raise PromptError(f"--slice {args.slice} needs a --box x0,y0,x1,y1 and/or --point x,y,1 on that slice")
    if points is not None and len(boxes) > 1:
        raise PromptError("--point clicks refine one object: give them with a single --box (or without a box)")
    limits = None
    if args.z_range is not None:
        parts = [p for p in args.z_range.replace(" ", "").split(",") if p]
        try:
            z0, z1 = (int(p) for p in parts)
        except ValueError as exc:
            raise PromptError(f"--z-range {args.z_range!r}: give two slice indices Z0,Z1") from exc
        limits = (z0, z1)
    if args.slice is not None:
        if not boxes:
            prompts.append(ObjectPrompt(z=args.slice, points=points, z_limits=limits))
        for box in boxes:
            prompts.append(ObjectPrompt(z=args.slice, box=box, points=points, z_limits=limits))
    if not prompts:
        raise PromptError("no prompt: give --box3d x0,y0,z0,x1,y1,z1, or --slice Z with --box x0,y0,x1,y1")
    return prompts


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from medsam.inference.propagate import PropagationConfig
    from medsam.inference.segment3d import segment_volume_file

    prompts = build_prompts(args)
    config = PropagationConfig(
        mode=args.mode, batch_size=args.batch_size, largest_component=args.largest_component,
        mask_prompt=args.mask_prompt,
    )
    predictor = load_predictor(args)
    result = segment_volume_file(
        predictor, args.input, args.output, prompts=prompts, window=args.window, output_format=args.output_format,
        montage_path=args.montage, config=config, label_names=args.label or None, series_uid=args.series_uid,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    seg = result.segmentation
    voxel_ml = float(np.prod(result.volume.spacing_mm)) / 1000.0
    print(f"volume {result.volume.shape[::-1]} (x, y, z), spacing {tuple(round(s, 3) for s in result.volume.spacing_mm[::-1])} mm, "
          f"window {result.window}, mode {args.mode}")
    for obj in seg.objects:
        name = args.label[obj.object_id] if obj.object_id < len(args.label) else f"object {obj.object_id + 1}"
        where = f"slices {obj.z_range[0]}..{obj.z_range[1]}" if obj.z_range else "nothing"
        ends = "; ".join(f"{'up' if e.direction > 0 else 'down'}: {e.reason}" for e in obj.ends)
        print(f"label {obj.label} ({name}): {where}, {obj.voxels} voxels = {obj.voxels * voxel_ml:.2f} mL"
              + (f" ({ends})" if ends else ""))
    print(f"encoded {seg.slices_encoded} slices, decoded {seg.slices_visited}; wrote {result.output.path} "
          f"({result.output.format})" + (f" and {result.montage_path}" if result.montage_path else "")
          + f" in {result.seconds:.1f} s")
    return 0
