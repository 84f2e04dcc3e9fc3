"""Small synthetic studies for the batch tests: images, a NIfTI volume, npz cases, a GIF video, a DICOM series."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]


def disc_image(size=(96, 128), centre=(60, 40), radius=15, seed=0) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 40, size=(h, w)).astype(np.uint8)
    image[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2] = 200
    return image


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


def ball_volume(shape=(12, 40, 48), centre=(6, 20, 24), radius=6) -> np.ndarray:
    z, y, x = np.indices(shape)
    vol = np.full(shape, -1000, np.int16)
    vol[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2] = 60
    return vol


def write_nifti(path: Path, volume: np.ndarray, spacing_xyz=(0.8, 0.8, 2.5)) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))
    return path


def write_gif(path: Path, frames: int = 6) -> Path:
    from PIL import Image

    pictures = []
    for t in range(frames):
        frame = np.stack([disc_image(centre=(50 + 2 * t, 40), seed=t)] * 3, axis=-1)
        pictures.append(Image.fromarray(frame))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    return path


def write_dicom_series(folder: Path):
    sys.path.insert(0, str(TESTS / "io"))
    import dicom_synth

    return dicom_synth.write_ct_series(folder, num_slices=6, rows=32, cols=32)


def mixed_studies(root: Path, *, with_bad: bool = True, with_dicom: bool = False) -> Path:
    """A cohort of every kind of job (and, with_bad, a corrupt file, a missing file and a malformed row);
    returns the JOBS.jsonl path."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        write_png(root / f"img{i}.png", disc_image(seed=i))
    write_nifti(root / "ct.nii.gz", ball_volume())
    vol = np.clip(ball_volume() + 1000, 0, 255).astype(np.uint8)
    np.savez_compressed(root / "3DBox_CT_0001.npz", imgs=vol, boxes=np.array([[16, 12, 3, 32, 28, 9]]),
                        spacing=np.array([0.8, 0.8, 2.5]))
    np.savez_compressed(root / "2DBox_US_0001.npz", imgs=disc_image(), boxes=np.array([[40, 20, 80, 60]]))
    write_gif(root / "clip.gif")
    jobs = [
        {"id": "img0", "input": "img0.png", "boxes": [[40, 20, 80, 60]], "outputs": ["mask", "overlay"]},
        {"id": "img1", "input": "img1.png", "boxes": [[40, 20, 80, 60], [0, 0, 30, 30]]},
        {"id": "recist", "input": "img2.png", "recist": [[45, 40, 75, 40, 60, 25, 60, 55]]},
        {"id": "everything", "input": "img2.png", "outputs": ["labels", "json"]},
        {"id": "ct", "input": "ct.nii.gz", "boxes3d": [[16, 12, 3, 32, 28, 9]], "window": "soft_tissue",
         "outputs": ["nifti", "montage"]},
        {"id": "ct_slice", "input": "ct.nii.gz", "slice": 6, "boxes": [[16, 12, 32, 28]], "window": "soft_tissue",
         "outputs": ["nrrd"]},
        {"id": "npz3d", "input": "3DBox_CT_0001.npz"},
        {"id": "npz2d", "input": "2DBox_US_0001.npz"},
        {"id": "video", "input": "clip.gif", "frame": 2, "boxes": [[40, 20, 80, 60]]},
    ]
    if with_dicom:
        write_dicom_series(root / "dicom_ct")
        jobs.append({"id": "dicom", "input": "dicom_ct", "boxes3d": [[8, 8, 1, 24, 24, 4]], "outputs": ["dicom-seg"]})
    if with_bad:
        (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        jobs += [
            {"id": "corrupt", "input": "corrupt.png", "boxes": [[1, 1, 5, 5]]},
            {"id": "missing", "input": "missing.nii.gz", "boxes3d": [[1, 1, 1, 5, 5, 3]]},
            {"id": "badbox", "input": "img0.png", "boxes": [[1, 2, 3]]},
            # the NIfTI is written, then DICOM-SEG fails (no DICOM source): the job must leave nothing behind
            {"id": "half", "input": "ct.nii.gz", "boxes3d": [[16, 12, 3, 32, 28, 9]], "outputs": ["nifti", "dicom-seg"]},
        ]
    path = root / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    return path


GOOD_IDS = ("img0", "img1", "recist", "everything", "ct", "ct_slice", "npz3d", "npz2d", "video")
BAD_IDS = ("corrupt", "missing", "badbox", "half")


def tree(root: Path) -> dict[str, bytes]:
    """Every job output file under OUT_DIR (the batch's own journal and reports left out) with its bytes."""
    own = {"journal.jsonl", "summary.csv", "failures.txt", ".batch.lock"}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in own}
