"""Videos in and out: mp4/avi/mov/mkv through imageio's FFmpeg plugin (imageio-ffmpeg ships its own ffmpeg
binary, so no system codecs are needed), GIF through Pillow; mask frames as a PNG folder or a label npz.

    video = read_video("endoscopy.mp4")              # VideoFrames: frames (T, H, W, 3) uint8, fps
    write_video(frames, "overlay.mp4", fps=video.fps)   # .mp4 (H.264), .avi (MJPEG) or .gif
    write_mask_frames(labels, "masks/")              # frame_00000.png ... (0/255 for one object, else 1..N)

All frames are held in memory (T x H x W x 3 bytes): ``max_frames`` bounds a long video. Writers are atomic
and never overwrite unasked. H.264 needs even sizes: odd-sized frames are padded by one edge row/column.
Install the extra: ``pip install 'medsam-toolkit[video]'`` (GIF works without it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsam.errors import InputError, OutputError
from medsam.io.atomic import atomic_dir, atomic_path, check_writable

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".gif")
WRITE_SUFFIXES = (".mp4", ".avi", ".gif")
_CODECS = {".mp4": "libx264", ".avi": "mjpeg"}


@dataclass(frozen=True)
class VideoFrames:
    """frames: (T, H, W, 3) uint8 RGB; fps: frames per second (from the file; 10 when it does not say)."""

    frames: np.ndarray
    fps: float
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _imageio() -> Any:
    try:
        import imageio.v2 as imageio_v2
        import imageio_ffmpeg  # noqa: F401  - the FFmpeg plugin's binary
    except ImportError as exc:
        raise InputError(
            "video files need imageio and imageio-ffmpeg: pip install 'medsam-toolkit[video]' (GIF works without)"
        ) from exc
    return imageio_v2


def _rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    elif frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


def read_video(path: str | Path, *, max_frames: int | None = None) -> VideoFrames:
    """Read a video's frames as (T, H, W, 3) uint8 RGB. Unreadable, empty or unknown files are InputErrors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path} does not exist (or is not a file); give an .mp4, .avi, .mov, .mkv or .gif video")
    suffix = _suffix(path)
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"{path}: unknown video format {suffix!r}; give one of {', '.join(VIDEO_SUFFIXES)}")
    frames, fps, meta = _read_gif(path, max_frames) if suffix == ".gif" else _read_ffmpeg(path, max_frames)
    if not frames:
        raise InputError(f"{path} holds no frames; check the file")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"{path}: frames change size ({sorted(shapes)}); re-encode the video at one size")
    return VideoFrames(np.stack(frames), float(fps), path, meta)


def _read_ffmpeg(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float, dict[str, Any]]:
    imageio_v2 = _imageio()
    try:
        reader = imageio_v2.get_reader(str(path), format="FFMPEG")
    except Exception as exc:  # imageio raises OSError/RuntimeError/ValueError depending on the failure
        raise InputError(f"{path} cannot be opened as a video ({_first_line(exc)}); the file may be corrupt") from exc
    frames: list[np.ndarray] = []
    meta: dict[str, Any] = {}
    try:
        meta = dict(reader.get_meta_data())
        for frame in reader:
            frames.append(_rgb(frame))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except Exception as exc:
        if not frames:
            raise InputError(f"{path}: decoding failed ({_first_line(exc)}); the file may be corrupt") from exc
        meta["warning"] = f"decoding stopped after {len(frames)} frames: {_first_line(exc)}"
    finally:
        reader.close()
    fps = meta.get("fps") or 10.0
    return frames, float(fps), {k: v for k, v in meta.items() if isinstance(v, (str, int, float, tuple))}


def _read_gif(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float, dict[str, Any]]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            durations, frames = [], []
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(frame.info.get("duration", 100) or 100)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path} cannot be read as a GIF ({exc}); the file may be corrupt") from exc
    fps = 1000.0 / float(np.median(durations)) if durations else 10.0
    return frames, fps, {"format": "gif"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) to even H and W by repeating the last row/column (H.264 with yuv420p needs it)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(frames: np.ndarray | Sequence[np.ndarray], path: str | Path, *, fps: float = 10.0,
                overwrite: bool = False) -> Path:
    """Write RGB frames (T, H, W, 3) uint8 as .mp4 (H.264), .avi (MJPEG) or .gif (atomic)."""
    path = Path(path).expanduser()
    suffix = _suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise OutputError(f"output {path}: write videos as {', '.join(WRITE_SUFFIXES)}")
    check_writable(path, overwrite=overwrite)
    stack = np.stack([_rgb(f) for f in frames]) if not isinstance(frames, np.ndarray) or frames.ndim != 4 else frames
    if stack.shape[0] == 0:
        raise OutputError(f"output {path}: no frames to write")
    fps = float(fps) if fps and fps > 0 else 10.0
    with atomic_path(path, overwrite=overwrite) as tmp:
        if suffix == ".gif":
            _write_gif(stack, tmp, fps)
        else:
            try:
                imageio_v2 = _imageio()
            except InputError as exc:
                raise OutputError(str(exc)) from exc
            try:
                writer = imageio_v2.get_writer(
                    str(tmp), format="FFMPEG", mode="I", fps=fps, codec=_CODECS[suffix], macro_block_size=1,
                    pixelformat="yuv420p" if suffix == ".mp4" else "yuvj420p", quality=8,
                    ffmpeg_log_level="error",
                )
                try:
                    for frame in _even(stack) if suffix == ".mp4" else stack:
                        writer.append_data(np.ascontiguousarray(frame))
                finally:
                    writer.close()
            except OutputError:
                raise
            except Exception as exc:
                raise OutputError(f"output {path}: ffmpeg could not write it ({_first_line(exc)})") from exc
    return path


def _write_gif(stack: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in stack]
    duration = max(20, int(round(1000.0 / fps)))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)


def video_writer_available() -> bool:
    """Whether .mp4/.avi can be written here (imageio-ffmpeg installed); GIF always can."""
    try:
        _imageio()
    except InputError:
        return False
    return True


def write_mask_frames(labels: np.ndarray, folder: str | Path, *, overwrite: bool = False,
                      pattern: str = "frame_{:05d}.png") -> Path:
    """Write (T, H, W) labels as one PNG per frame in a new folder (atomic: built aside, then renamed).

    One object (labels 0/1) gives 0/255 masks; several give label values 1..N.
    """
    from PIL import Image

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise OutputError(f"mask frames: expected (T, H, W) labels, got shape {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if top > 65535:
        raise OutputError("mask frames: label values above 65535 cannot be stored in PNG")
    single = top <= 1
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for t, frame in enumerate(labels):
            data = (frame > 0).astype(np.uint8) * 255 if single else frame.astype(np.uint8 if top < 256 else np.uint16)
            Image.fromarray(data).save(tmp / pattern.format(t), format="PNG")
    return Path(folder)


def read_mask_frames(folder: str | Path) -> np.ndarray:
    """Read a folder written by :func:`write_mask_frames` back as (T, H, W) (0/255 masks become 0/1)."""
    from PIL import Image

    folder = Path(folder)
    files = sorted(folder.glob("*.png"))
    if not files:
        raise InputError(f"{folder} holds no PNG mask frames")
    stack = np.stack([np.asarray(Image.open(f)) for f in files])
    if stack.dtype == np.uint8 and set(np.unique(stack).tolist()) <= {0, 255}:
        stack = (stack > 0).astype(np.uint8)
    return stack
