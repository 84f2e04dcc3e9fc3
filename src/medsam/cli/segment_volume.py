"""`medsam segment-volume INPUT (--box3d x0,y0,z0,x1,y1,z1 ... | --slice Z --box x0,y0,x1,y1 ... [--point x,y,1|0])
-o OUT.nii.gz|OUT.nrrd|OUT.dcm|OUT_DIR [--format nifti|nrrd|mha|dicom-seg|rtstruct] [--window NAME|W,L]
[--montage PNG] [--mode default|reference] [--orientation canonical|lps|stored] [--label NAME ...] [--overwrite]`.

Every coordinate on the command line is in source-array indices: x, y = column, row of the stored slice,
z = stored slice index (as a viewer that shows the array as stored numbers them). The model itself sees the
volume in the radiological orientation of its slice plane (--orientation canonical, the default; the
reference mode defaults to stored); the labels are written on the input's own grid either way.

Examples:
    medsam segment-volume ct_series/ --box3d 180,200,40,260,290,58 -o liver.nii.gz --window soft_tissue --montage liver.png
    medsam segment-volume ct_series/ --slice 50 --box 180,200,260,290 -o out/ --format rtstruct --label liver
    medsam segment-volume brain.nrrd --slice 14 --box 90,80,140,130 --point 115,105,1 -o tumour.nrrd --window percentile
    medsam segment-volume dicomweb://pacs:8042/dicom-web/studies/S/series/R --box3d 180,200,40,260,290,58 -o liver_seg.dcm --store
    medsam segment-volume ct.nii.gz --key-box 40:180,200,260,290 --key-box 52:175,210,250,280 -o liver.nii.gz
    medsam segment-volume brain.nii.gz --key-box 30:60,80,90,120 --key-box 30:130,80,160,120 -o ventricles.nii.gz
    medsam segment-volume ct.nii.gz --box3d 180,200,40,260,290,58 --click 45,230,250,0 --click 50,240,200,1 -o liver.nii.gz

Corrections in 3D: each --click z,y,x,1|0 (a source-array index [z, y, x]: slice, row, column) re-segments its
slice (the box and every click on it, through the refiner) and re-propagates from it both ways until the new masks
agree with the existing ones or the object ends, after the segmentation from the boxes, in the order given. Each
--key-box Z:x0,y0,x1,y1 is a box on slice Z: boxes on several slices are key slices of one object, several boxes on
one slice are separate parts of it (joined into one label, e.g. both lateral ventricles); ":L" at the end gives the
label (an existing object's to add key slices to it; default one new object for all key boxes without one).
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
        "slice in both directions. Coordinates are source-array indices: x, y = column, row of the stored slice, "
        "z = stored slice index from 0 (whatever --orientation the model sees the volume in). "
        "Output: NIfTI/NRRD/MHA label volume on the input's exact grid, DICOM-SEG or RT-STRUCT for DICOM input.",
    )
    parser.add_argument("input", help="DICOM series folder or file, .nii/.nii.gz, .nrrd, .mha/.mhd or .npz volume, or a PACS "
                        "series dicomweb[s]://HOST:PORT/dicom-web/studies/S/series/R (credentials: MEDSAM_DICOMWEB_* variables)")
    prompts = parser.add_argument_group("prompts (each --box3d / --box is one object)")
    prompts.add_argument("--box3d", action="append", default=[], metavar="x0,y0,z0,x1,y1,z1",
                         help="3D box, bounds inclusive; the object is segmented from its middle slice to z0 and z1")
    prompts.add_argument("--slice", type=int, default=None, metavar="Z", help="key slice of --box / --point")
    prompts.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1", help="box on the key slice")
    prompts.add_argument("--point", action="append", default=[], metavar="x,y,1|0",
                         help="click on the key slice (1 inside, 0 outside); refines a single object")
    prompts.add_argument("--z-range", default=None, metavar="Z0,Z1",
                         help="optional inclusive slice limits for --slice prompts (default: until the object ends)")
    prompts.add_argument("--key-box", action="append", default=[], metavar="Z:x0,y0,x1,y1[:L]",
                         help="a box on slice Z; several on other slices are key slices of one object, several on one slice "
                         "its parts (one label); :L names the label (default: one new object for all key boxes)")
    prompts.add_argument("--click", action="append", default=[], metavar="z,y,x,1|0[,L]",
                         help="a corrective click after the segmentation ([z, y, x] source-array index; 1 object here, 0 not; "
                         ",L for label L, else the object under or nearest to the click); repeatable, run in order")
    prompts.add_argument("--agreement", type=float, default=None, metavar="DSC",
                         help="rewrite re-propagation only: stop where the new mask agrees with the old one at this DSC")
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
    parser.add_argument("--orientation", choices=("canonical", "lps", "stored"), default=None,
                        help="what the model sees: canonical = the radiological display orientation of the series' own "
                        "slice plane (axial: anterior up, patient right on the left; slices kept), lps = strict LPS "
                        "(may reslice sagittal/coronal series), stored = the arrays as stored. Default canonical "
                        "(stored with --mode reference). Prompts stay in stored indices; labels land on the input grid")
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
    parser.add_argument("--store", action="store_true",
                        help="dicomweb:// input: also store the DICOM-SEG / RT-STRUCT back into that PACS (STOW-RS) and check "
                        "that it reads back and references the source series")
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
    if not prompts and not getattr(args, "key_box", []):
        raise PromptError("no prompt: give --box3d x0,y0,z0,x1,y1,z1, --slice Z with --box x0,y0,x1,y1, or --key-box "
                          "Z:x0,y0,x1,y1")
    return prompts


def build_interactions(args: argparse.Namespace) -> tuple[list, list]:
    """(key boxes with their labels, clicks) from --key-box and --click."""
    from medsam.inference.interactive3d import Click3D, KeyBox

    return [KeyBox.parse(text) for text in args.key_box], [Click3D.parse(text) for text in args.click]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from medsam.inference.propagate import PropagationConfig
    from medsam.inference.segment3d import segment_volume_file

    prompts = build_prompts(args)
    key_boxes, clicks = build_interactions(args)
    if args.store:
        check_store(args)
    config = PropagationConfig(
        mode=args.mode, batch_size=args.batch_size, largest_component=args.largest_component,
        mask_prompt=args.mask_prompt,
    )
    predictor = load_predictor(args)
    result = segment_volume_file(
        predictor, args.input, args.output, prompts=prompts, window=args.window, output_format=args.output_format,
        montage_path=args.montage, config=config, label_names=args.label or None, series_uid=args.series_uid,
        orientation=args.orientation, key_boxes=key_boxes, clicks=clicks, overwrite=args.overwrite,
        progress=not args.no_progress, **({"agreement": args.agreement} if args.agreement is not None else {}),
    )
    seg = result.segmentation
    voxel_ml = float(np.prod(result.volume.spacing_mm)) / 1000.0
    print(f"volume {result.volume.shape[::-1]} (x, y, z), spacing {tuple(round(s, 3) for s in result.volume.spacing_mm[::-1])} mm, "
          f"window {result.window}, mode {args.mode}")
    print(f"orientation {result.reorientation.summary()}")
    view_ends = result.oriented is not None and result.oriented.view_ends
    for obj in result.objects:
        name = args.label[obj.object_id] if obj.object_id < len(args.label) else f"object {obj.object_id + 1}"
        where = f"slices {obj.z_range[0]}..{obj.z_range[1]}" if obj.z_range else "nothing"
        ends = "; ".join(f"{'up' if e.direction > 0 else 'down'}: {e.reason}" for e in obj.ends)
        ends = f"view slices: {ends}" if ends and view_ends else ends
        print(f"label {obj.label} ({name}): {where}, {obj.voxels} voxels = {obj.voxels * voxel_ml:.2f} mL"
              + (f" ({ends})" if ends else ""))
    for step in result.oriented.interactions if result.oriented is not None else ():
        if step.kind == "click":
            print(f"  click for label {step.label}: {len(step.changed_slices)} slices changed (view slices "
                  f"{_span(step.changed_slices)}), {step.slices_decoded} decoded, {step.seconds:.2f} s"
                  + (f"; {'; '.join(step.ends)}" if step.ends else ""))
    print(f"encoded {seg.slices_encoded} slices, decoded {seg.slices_visited}; wrote {result.output.path} "
          f"({result.output.format})" + (f" and {result.montage_path}" if result.montage_path else "")
          + f" in {result.seconds:.1f} s")
    if args.store:
        from medsam.io.dicomweb import store_result

        stored = store_result(result.output.path, args.input)
        print(f"stored {stored.kind} {stored.sop_instance_uid} in study {stored.study_instance_uid}; read back and checked: "
              f"it references series {stored.source_series_instance_uid} ({stored.referenced_instances} images). "
              f"{stored.retrieve_url}")
    return 0


def _span(zs) -> str:
    return f"{min(zs)}..{max(zs)}" if zs else "none"


def check_store(args: argparse.Namespace) -> None:
    """--store needs a dicomweb:// input and a DICOM-SEG / RT-STRUCT output; checked before the model loads."""
    from medsam.errors import InputError, OutputError
    from medsam.inference.segment3d import resolve_output
    from medsam.io.dicomweb import is_dicomweb_uri, parse_series_uri

    if not is_dicomweb_uri(args.input):
        raise InputError(
            f"--store sends the result back to the PACS the input came from, but {args.input} is a local path; give the "
            "series as dicomweb://HOST:PORT/dicom-web/studies/S/series/R"
        )
    ref = parse_series_uri(args.input)
    target = resolve_output(args.output, output_format=args.output_format, input_path=ref.series_instance_uid, dicom_input=True)
    if target.format not in ("dicom-seg", "rtstruct"):
        raise OutputError(
            f"--store stores DICOM objects, but {target.path} is {target.format}; write a .dcm (DICOM-SEG, or "
            "--format rtstruct)"
        )
