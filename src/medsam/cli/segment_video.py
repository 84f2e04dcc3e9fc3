"""`medsam segment-video VIDEO --frame F --box x0,y0,x1,y1 [--box ...] [--point x,y,1|0] -o MASKS_DIR|MASKS.npz
[--overlay-video OUT.mp4|OUT.gif] [--overwrite]`.

Example:
    medsam segment-video colonoscopy.mp4 --frame 40 --box 210,120,330,230 -o polyp_masks/ --overlay-video polyp.mp4
"""

from __future__ import annotations

import argparse

from medsam.cli.common import add_model_options, load_predictor


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "segment-video",
        help="segment objects through a video (mp4, avi, mov, gif) from a prompt on one frame",
        description="Segment objects in a video from a box (and/or clicks) on one frame, propagated forwards and "
        "backwards frame by frame. Coordinates: x, y in frame pixels; frames counted from 0.",
    )
    parser.add_argument("video", help="video file (.mp4, .avi, .mov, .mkv, .gif)")
    parser.add_argument("--frame", type=int, required=True, help="the frame (0-based) the prompts are drawn on")
    parser.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1", help="box; repeat for several objects")
    parser.add_argument("--point", action="append", default=[], metavar="x,y,1|0", help="click (1 inside, 0 outside)")
    parser.add_argument("--frame-range", default=None, metavar="F0,F1", help="optional inclusive frame limits")
    parser.add_argument("-o", "--output", required=True,
                        help="folder for one mask PNG per frame, or a .npz file (key segs: frames x height x width)")
    parser.add_argument("--overlay-video", default=None, metavar="OUT.mp4",
                        help="also write the video with the masks drawn on it (.mp4, .avi or .gif)")
    parser.add_argument("--follow", action="store_true",
                        help="follow each object until its mask is empty (no predicted-IoU/area stopping rule)")
    parser.add_argument("--max-frames", type=int, default=None, help="read at most this many frames")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per encoder batch (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medsam.errors import PromptError
    from medsam.inference.propagate import PropagationConfig
    from medsam.inference.video import segment_video_file
    from medsam.types import Box, Points

    boxes = [Box.from_sequence(b, source=f"--box {b!r}") for b in args.box]
    points = Points.parse(args.point) if args.point else None
    frame_range = None
    if args.frame_range is not None:
        try:
            f0, f1 = (int(p) for p in args.frame_range.split(","))
        except ValueError as exc:
            raise PromptError(f"--frame-range {args.frame_range!r}: give two frame numbers F0,F1") from exc
        frame_range = (f0, f1)
    config = PropagationConfig(batch_size=args.batch_size, stop_rule=not args.follow)
    predictor = load_predictor(args)
    result = segment_video_file(
        predictor, args.video, args.output, frame=args.frame, boxes=boxes, points=points, frame_range=frame_range,
        overlay_video=args.overlay_video, config=config, max_frames=args.max_frames, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    seg = result.segmentation
    for obj in seg.objects:
        where = f"frames {obj.z_range[0]}..{obj.z_range[1]}" if obj.z_range else "nothing"
        ends = "; ".join(f"{'forward' if e.direction > 0 else 'backward'}: {e.reason}" for e in obj.ends)
        print(f"object {obj.label}: {where}" + (f" ({ends})" if ends else ""))
    print(f"wrote {result.masks_path}" + (f" and {result.overlay_path}" if result.overlay_path else "")
          + f" in {result.seconds:.1f} s")
    return 0
