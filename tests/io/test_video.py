"""Video in and out (mp4/avi through imageio-ffmpeg, gif through Pillow), mask frames, and segment_video with a
stand-in model whose answer is known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medsam.errors import InputError, OutputError
from medsam.io.video import read_mask_frames, read_video, video_writer_available, write_mask_frames, write_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from oracle_model import OracleModel  # noqa: E402

needs_ffmpeg = pytest.mark.skipif(not video_writer_available(), reason="imageio-ffmpeg is not installed")


def moving_disc(frames: int = 12, h: int = 48, w: int = 64, visible=range(2, 11)) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames of a bright disc moving right on a dark background, and its (T, H, W) truth."""
    yy, xx = np.mgrid[:h, :w]
    video = np.full((frames, h, w, 3), (20, 30, 40), np.uint8)
    truth = np.zeros((frames, h, w), bool)
    for t in (t for t in visible if t < frames):
        disc = (xx - (14 + 3 * t)) ** 2 + (yy - 24) ** 2 <= 8**2
        video[t][disc] = (230, 200, 180)
        truth[t] = disc
    for t in range(frames):  # a faint frame number so no two frames are the same image
        video[t, 0, : t + 1] = (21, 30, 40)
    return video, truth


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_ffmpeg_round_trip(tmp_path, suffix):
    video, _ = moving_disc(h=47, w=63)  # odd sizes: padded for H.264, read back at the padded size
    path = write_video(video, tmp_path / f"clip{suffix}", fps=12)
    back = read_video(path)
    assert len(back) == len(video) and back.frames.dtype == np.uint8
    assert back.fps == pytest.approx(12, abs=0.01)
    crop = back.frames[:, :47, :63].astype(int)
    assert np.abs(crop - video.astype(int)).mean() < 6  # lossy codecs, but the picture is there
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]  # no temporary left behind


def test_gif_round_trip_and_max_frames(tmp_path):
    video, _ = moving_disc()
    path = write_video(video, tmp_path / "clip.gif", fps=5)
    back = read_video(path)
    assert back.frames.shape == video.shape and back.fps == pytest.approx(5)
    assert np.abs(back.frames.astype(int) - video.astype(int)).max() <= 8
    assert len(read_video(path, max_frames=4)) == 4


def test_writers_refuse_to_overwrite_and_bad_names(tmp_path):
    video, _ = moving_disc(frames=3)
    path = write_video(video, tmp_path / "a.gif")
    before = path.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_video(video[:1], path)
    assert path.read_bytes() == before
    with pytest.raises(OutputError, match=".mp4"):
        write_video(video, tmp_path / "a.webm")


def test_bad_video_files(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 3)
    with pytest.raises(InputError, match="broken.mp4"):
        read_video(broken)
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(InputError, match="unknown video format"):
        read_video(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    bad_gif = tmp_path / "bad.gif"
    bad_gif.write_bytes(b"GIF89a garbage")
    with pytest.raises(InputError, match="bad.gif"):
        read_video(bad_gif)


def test_mask_frames_round_trip(tmp_path):
    _, truth = moving_disc()
    folder = write_mask_frames(truth.astype(np.uint8), tmp_path / "masks")
    assert len(list(folder.glob("*.png"))) == len(truth)
    assert np.array_equal(read_mask_frames(folder), truth.astype(np.uint8))
    with pytest.raises(OutputError, match="already exists"):
        write_mask_frames(truth.astype(np.uint8), folder)
    labels = truth.astype(np.uint8) * 3
    assert np.array_equal(read_mask_frames(write_mask_frames(labels, tmp_path / "labels")), labels)


def test_segment_video_follows_the_disc_forwards_and_backwards():
    from medsam.inference.predictor import Predictor
    from medsam.inference.propagate import PropagationConfig
    from medsam.inference.video import segment_video
    from medsam.types import Box

    video, truth = moving_disc()
    model = OracleModel()
    result = segment_video(Predictor(model), video, frame=6, boxes=[Box(23, 14, 42, 34)],
                           config=PropagationConfig(min_area_fraction=0.0), progress=False)
    frames = np.flatnonzero(result.labels.reshape(len(video), -1).any(axis=1))
    assert (frames[0], frames[-1]) == (2, 10)
    inter = np.sum((result.labels > 0) & truth)
    assert 2 * inter / (np.sum(result.labels > 0) + truth.sum()) > 0.9


def test_segment_video_file_writes_masks_and_overlay(tmp_path):
    from medsam.inference.predictor import Predictor
    from medsam.inference.video import segment_video_file
    from medsam.types import Box

    video, truth = moving_disc()
    clip = write_video(video, tmp_path / "clip.gif", fps=8)
    overlay = tmp_path / ("overlay.mp4" if video_writer_available() else "overlay.gif")
    result = segment_video_file(Predictor(OracleModel()), clip, tmp_path / "masks", frame=6,
                                boxes=[Box(23, 14, 42, 34)], overlay_video=overlay, progress=False)
    masks = read_mask_frames(result.masks_path)
    assert masks.shape == truth.shape and masks[6].any() and not masks[0].any()
    shown = read_video(result.overlay_path)
    assert len(shown) == len(video)
    npz = segment_video_file(Predictor(OracleModel()), clip, tmp_path / "labels.npz", frame=6,
                             boxes=[Box(23, 14, 42, 34)], progress=False)
    assert np.array_equal(np.load(npz.masks_path)["segs"] > 0, masks > 0)
