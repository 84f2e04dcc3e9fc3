"""Video segmentation: a prompt on one frame propagated forwards and backwards, frames taken as slices.

    video = read_video("clip.mp4")
    result = segment_video(predictor, video.frames, frame=30, boxes=[Box(100, 80, 180, 150)])
    result.labels                                   # (T, H, W): object i has value i + 1
    segment_video_file(predictor, "clip.mp4", "masks/", frame=30, boxes=[...], overlay_video="overlay.mp4")

The engine is :mod:`medsam.inference.propagate` in the default mode (each frame's box comes from the previous
frame's mask; an object stops where it leaves the picture); ``config.stop_rule=False`` keeps following it
until the mask is empty.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medsam.errors import OutputError, PromptError
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import ObjectPrompt, PropagationConfig, StackSegmentation, segment_stack
from medsam.io.atomic import check_writable
from medsam.types import Box, Points


@dataclass(frozen=True)
class VideoSegmentationResult:
    video_path: Path
    masks_path: Path
    overlay_path: Path | None
    segmentation: StackSegmentation
    fps: float
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return self.segmentation.labels


def video_prompts(frame: int, boxes: Sequence[Box] = (), points: Points | None = None,
                  frame_range: tuple[int, int] | None = None) -> list[ObjectPrompt]:
    """One ObjectPrompt per box on ``frame`` (points refine a single object)."""
    if not boxes and points is None:
        raise PromptError("no prompt: give at least one box x0,y0,x1,y1 (or points x,y,1) on the key frame")
    if points is not None and len(boxes) > 1:
        raise PromptError("points refine one object: give them with a single box (or without a box)")
    if not boxes:
        return [ObjectPrompt(z=frame, points=points, z_limits=frame_range)]
    return [ObjectPrompt(z=frame, box=b, points=points, z_limits=frame_range) for b in boxes]


def segment_video(
    predictor: Predictor,
    frames: np.ndarray,
    *,
    frame: int,
    boxes: Sequence[Box] = (),
    points: Points | None = None,
    frame_range: tuple[int, int] | None = None,
    config: PropagationConfig = PropagationConfig(),
    progress: bool = True,
) -> StackSegmentation:
    """Segment objects through (T, H, W, 3) uint8 frames from prompts on frame ``frame``. A
    ``MemoryPredictor`` (SAM 2 family) tracks with memory (``config`` does not apply)."""
    prompts = video_prompts(frame, boxes, points, frame_range)
    if getattr(predictor, "is_memory_predictor", False):  # SAM 2 / MedSAM2: memory tracking
        from medsam.inference.memory_video import stack_segmentation

        return stack_segmentation(predictor, frames, prompts, procedure="video", progress=progress, source="video")
    return segment_stack(predictor, frames, prompts, config, progress=progress, source="video",
                         description="frames")


def overlay_frames(frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 frames with each label tinted and outlined (as the 2D overlays)."""
    from medsam.io.raster import render_overlay

    return np.stack([render_overlay(f, l) for f, l in zip(frames, labels)])


def segment_video_file(
    predictor: Predictor,
    video_path: str | Path,
    masks_path: str | Path,
    *,
    frame: int,
    boxes: Sequence[Box] = (),
    points: Points | None = None,
    frame_range: tuple[int, int] | None = None,
    overlay_video: str | Path | None = None,
    config: PropagationConfig = PropagationConfig(),
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> VideoSegmentationResult:
    """Read a video, propagate the prompts, write the masks and (optionally) an overlay video.

    masks_path: a folder (one PNG per frame) or a ``.npz`` file (key ``segs``: (T, H, W) labels).
    overlay_video: ``.mp4`` (H.264), ``.avi`` or ``.gif``; when mp4/avi cannot be written here (no
    imageio-ffmpeg), a ``.gif`` beside it is written instead and named in the result.
    """
    from medsam.io.video import read_video, video_writer_available, write_mask_frames, write_video

    start = time.perf_counter()
    masks_path = Path(masks_path)
    check_writable(masks_path, overwrite=overwrite)
    overlay_path = Path(overlay_video) if overlay_video is not None else None
    if overlay_path is not None:
        if overlay_path.suffix.lower() not in (".mp4", ".avi", ".gif"):
            raise OutputError(f"overlay video {overlay_path}: give a name ending with .mp4, .avi or .gif")
        if overlay_path.suffix.lower() != ".gif" and not video_writer_available():
            overlay_path = overlay_path.with_suffix(".gif")
        check_writable(overlay_path, overwrite=overwrite)
    video = read_video(video_path, max_frames=max_frames)
    seg = segment_video(predictor, video.frames, frame=frame, boxes=boxes, points=points,
                        frame_range=frame_range, config=config, progress=progress)
    if masks_path.suffix.lower() == ".npz":
        from medsam.io.npz import write_npz_segs

        write_npz_segs(seg.labels, masks_path, overwrite=overwrite)
    else:
        write_mask_frames(seg.labels, masks_path, overwrite=overwrite)
    if overlay_path is not None:
        write_video(overlay_frames(video.frames, seg.labels), overlay_path, fps=video.fps, overwrite=overwrite)
    return VideoSegmentationResult(Path(video_path), masks_path, overlay_path, seg, video.fps,
                                   time.perf_counter() - start)
