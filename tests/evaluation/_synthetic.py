"""Tiny synthetic datasets for the evaluation tests: discs and squares in small images, a small volume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

HEADER = ["dataset", "case", "modality", "dims", "image", "mask", "label", "target"]


def disc_case(folder: Path, name: str, *, centre=(30, 24), radius=10, shape=(48, 64), value=255) -> tuple[Path, Path]:
    """A grayscale PNG with a bright disc and its 0/value mask; returns (image, mask) paths."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    image = np.full(shape, 40, np.uint8)
    image[inside] = 210
    image[::5, ::7] = 50
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    img_path, mask_path = folder / "images" / f"{name}.png", folder / "masks" / f"{name}.png"
    Image.fromarray(image).save(img_path)
    Image.fromarray((inside * value).astype(np.uint8)).save(mask_path)
    return img_path, mask_path


def lesion_volume(path: Path, *, shape=(9, 40, 48)) -> Path:
    """A MedSAM2-style npz: a uint8 volume with an ellipsoid (label 1), spacing stored (x, y, z)."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    inside = ((zz - 4) / 3.0) ** 2 + ((yy - 20) / 9.0) ** 2 + ((xx - 24) / 11.0) ** 2 <= 1.0
    imgs = np.full(shape, 30, np.uint8)
    imgs[inside] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, imgs=imgs, gts=inside.astype(np.uint8), spacing=np.array([0.8, 0.8, 2.5]),
        direction=np.eye(3).reshape(-1), origin=np.zeros(3),
    )
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in HEADER})
    return path


def small_manifest(root: Path, *, with_3d: bool = True) -> Path:
    """Two 2D datasets (3 + 2 cases) and, optionally, one 3D case, under ``root``."""
    rows = []
    for i, (cx, cy, r) in enumerate([(30, 24, 10), (20, 18, 8), (40, 28, 12)]):
        disc_case(root / "discs", f"d{i}", centre=(cx, cy), radius=r)
        rows.append(dict(dataset="discs", case=f"d{i}", modality="synthetic", dims="2d", image=f"discs/images/d{i}.png",
                         mask=f"discs/masks/d{i}.png", label=255, target="disc"))
    for i in range(2):
        disc_case(root / "blobs", f"b{i}", centre=(25 + 8 * i, 22), radius=9, value=1)
        rows.append(dict(dataset="blobs", case=f"b{i}", modality="other", dims="2d", image=f"blobs/images/b{i}.png",
                         mask=f"blobs/masks/b{i}.png", label=1, target="blob"))
    if with_3d:
        lesion_volume(root / "vol" / "lesion.npz")
        rows.append(dict(dataset="vols", case="lesion", modality="CT", dims="3d", image="vol/lesion.npz",
                         mask="vol/lesion.npz", label=1, target="lesion"))
    return write_manifest(root / "cases.csv", rows)
