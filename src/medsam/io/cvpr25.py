"""CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation" npz cases, read safely.

A case holds ``imgs`` (D, H, W) uint8, ``spacing`` and, for box-prompted cases, ``boxes``: an object array of
one dict per class, ``{"z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max",
"z_mid_y_max"}`` (voxel indices, inclusive): the class's z extent and its 2D box on the key slice ``z_mid``.
Object arrays are pickles; ``np.load(allow_pickle=True)`` would run whatever a file asks for, so ``boxes`` is
read with an unpickler that builds only numpy arrays, numpy scalars and plain Python containers, and refuses
anything else. Other members are read as plain arrays (``allow_pickle=False``).

``is_cvpr25_case(path)`` tells such a file from a CVPR 2024 one (whose ``boxes`` is a plain (N, 6) array).
"""

from __future__ import annotations

import ast
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import InputError
from medsam.types import Box

BOX_KEYS = ("z_min", "z_max", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


@dataclass(frozen=True)
class ClassBox:
    """One class's CVPR25 box: its z extent (inclusive) and its 2D box on key slice ``z_mid``."""

    z_min: int
    z_max: int
    z_mid: int
    box: Box


@dataclass(frozen=True)
class Cvpr25Case:
    path: Path
    imgs: np.ndarray  # (D, H, W)
    spacing: tuple[float, ...] | None
    boxes: tuple[ClassBox, ...]


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CVPR25 'boxes' array")


def _member(archive: zipfile.ZipFile, key: str) -> bytes | None:
    name = f"{key}.npy"
    return archive.read(name) if name in archive.namelist() else None


def _npy_header(raw: bytes) -> tuple[dict, int]:
    if raw[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy member")
    major = raw[6]
    size_bytes = 2 if major == 1 else 4
    length = int.from_bytes(raw[8 : 8 + size_bytes], "little")
    start = 8 + size_bytes
    return ast.literal_eval(raw[start : start + length].decode("latin1")), start + length


def _read_object_array(raw: bytes) -> np.ndarray:
    header, offset = _npy_header(raw)
    if header.get("descr") != "|O":
        return np.load(io.BytesIO(raw), allow_pickle=False)
    value = _NumpyOnly(io.BytesIO(raw[offset:])).load()
    return np.asarray(value, dtype=object)


def is_cvpr25_case(path: str | Path) -> bool:
    """An npz whose ``boxes`` member is an object array (CVPR25 dicts), not a CVPR24 number array."""
    try:
        with zipfile.ZipFile(path) as archive:
            raw = _member(archive, "boxes")
            return raw is not None and _npy_header(raw)[0].get("descr") == "|O"
    except (OSError, zipfile.BadZipFile, ValueError, SyntaxError):
        return False


def _int(value: Any, key: str, path: Path, index: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: box {index + 1} {key}={value!r} is not a number") from None
    return int(number)


def read_cvpr25_case(path: str | Path) -> Cvpr25Case:
    """The image and the class boxes of a CVPR25 case (see the module doc)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            imgs_raw, spacing_raw, boxes_raw = (_member(archive, k) for k in ("imgs", "spacing", "boxes"))
            if imgs_raw is None:
                raise InputError(f"{path} has no 'imgs' array; a CVPR25 case holds imgs, spacing and boxes")
            imgs = np.load(io.BytesIO(imgs_raw), allow_pickle=False)
            spacing = None
            if spacing_raw is not None:
                spacing = tuple(float(v) for v in np.load(io.BytesIO(spacing_raw), allow_pickle=False).reshape(-1))
            raw_boxes = _read_object_array(boxes_raw) if boxes_raw is not None else np.zeros(0, dtype=object)
    except InputError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, SyntaxError, EOFError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path} is not a readable CVPR25 npz case ({exc})") from exc
    if imgs.ndim != 3 or imgs.size == 0:
        raise InputError(f"{path}: 'imgs' has shape {imgs.shape}; a CVPR25 case is a (D, H, W) volume")
    boxes = []
    for i, item in enumerate(raw_boxes.reshape(-1)):
        if not isinstance(item, dict) or not all(k in item for k in BOX_KEYS):
            raise InputError(f"{path}: box {i + 1} should be a dict with {', '.join(BOX_KEYS)}; got {item!r:.120}")
        v = {k: _int(item[k], k, path, i) for k in BOX_KEYS}
        z_mid = _int(item["z_mid"], "z_mid", path, i) if "z_mid" in item else (v["z_min"] + v["z_max"]) // 2
        if not v["z_min"] <= z_mid <= v["z_max"]:
            raise InputError(f"{path}: box {i + 1} z_mid {z_mid} lies outside z_min..z_max {v['z_min']}..{v['z_max']}")
        plane = Box.from_sequence([v["z_mid_x_min"], v["z_mid_y_min"], v["z_mid_x_max"], v["z_mid_y_max"]],
                                  source=f"{path} box {i + 1}")
        boxes.append(ClassBox(v["z_min"], v["z_max"], z_mid, plane))
    return Cvpr25Case(path, imgs, spacing, tuple(boxes))
