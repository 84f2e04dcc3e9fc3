"""The npz layouts people exchange: CVPR 2024 MedSAM-on-laptop and MedSAM2.

CVPR 2024 MedSAM-on-laptop ("cvpr24"): ``imgs`` (D, H, W) uint8 for 3D, (H, W, 3) or (H, W) for 2D;
optional ``gts`` on the same grid, ``boxes`` ((N, 6) x0,y0,z0,x1,y1,z1 in 3D, (N, 4) x0,y0,x1,y1 in 2D,
inclusive) and ``spacing`` (3D only).

MedSAM2 ("medsam2"): ``imgs`` and ``gts`` (D, H, W), ``spacing``, ``direction`` (9 values) and ``origin``
(3 values). Recognised by the presence of ``direction`` or ``origin``.

Spacing order, the classic trap:
- medsam2: ``spacing`` is SimpleITK's (x, y, z) beside (z, y, x) arrays (the files in
  shared/data/ct_lesions_3d store e.g. (0.78, 0.78, 5.0) for 13 slices of 5 mm); it is always reversed.
  ``direction`` is SimpleITK's row-major 3x3, ``origin`` its (x, y, z): kept as they are.
- cvpr24: the challenge's preprocessing (MedSAM ``pre_CT_MR.py``) saves ``img_sitk.GetSpacing()``, also
  (x, y, z), so the rule is the same: reversed. One exception guards against files written in array order:
  when the last two values are equal and the first differs (e.g. (5.0, 0.78, 0.78): equal in-plane spacing
  stored last), the spacing is taken as already (z, y, x). ``NpzCase.spacing_rule`` and
  ``volume.metadata["spacing_rule"]`` say which rule was applied.

The modality is not stored in either layout; it is taken from the file name's tokens when one is a
modality code (``3DBox_CT_0566.npz``, ``CT_Lesion_....npz``), else left unknown.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medsam.errors import InputError
from medsam.io.atomic import atomic_path
from medsam.types import Box, Box3D, Volume

NpzLayout = Literal["cvpr24", "medsam2"]
_MODALITY_TOKENS = {"CT": "CT", "MR": "MR", "MRI": "MR", "PET": "PT", "PT": "PT", "US": "US", "XRAY": "DX"}


@dataclass(frozen=True)
class NpzCase:
    """One npz case: the image, its ground truth and boxes, typed.

    image: ``imgs`` as stored ((D, H, W) for 3D; (H, W) or (H, W, 3) for 2D).
    volume: the 3D image with its geometry (spacing in z, y, x), or None for a 2D case.
    gts: the ground-truth label map on the image grid ((D, H, W) or (H, W)), or None when absent.
    boxes: the stored ``boxes`` as Box3D (3D) or Box (2D), in file order; empty when absent.
    spacing_rule: how the stored spacing was turned into (z, y, x).
    """

    path: Path
    layout: NpzLayout
    image: np.ndarray
    volume: Volume | None
    gts: np.ndarray | None
    boxes: tuple[Box3D, ...] | tuple[Box, ...]
    spacing_rule: str

    @property
    def is_3d(self) -> bool:
        return self.volume is not None


def modality_from_name(path: Path) -> str | None:
    """A modality code found among the file name's '_'-separated tokens, or None."""
    for token in path.name.split(".")[0].replace("-", "_").split("_"):
        code = _MODALITY_TOKENS.get(token.upper())
        if code:
            return code
    return None


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{path} does not exist (or is not a file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse for safety
        raise InputError(
            f"{path} holds Python objects (pickled arrays), which are not read for safety; save plain arrays "
            "(np.savez_compressed(imgs=..., gts=..., spacing=...))"
        ) from exc
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise InputError(f"{path} is not a readable npz file ({exc}); it may be truncated or corrupt") from exc


def _spacing_zyx(raw: np.ndarray | None, layout: NpzLayout, path: Path) -> tuple[tuple[float, float, float], str]:
    if raw is None:
        return (1.0, 1.0, 1.0), "no spacing stored: 1 mm assumed on every axis"
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"{path}: 'spacing' should be 3 positive numbers, got {values.tolist()}")
    x_or_z, y, z_or_x = (float(v) for v in values)
    if layout == "medsam2":
        return (z_or_x, y, x_or_z), "medsam2: spacing stored (x, y, z) as SimpleITK gives it; reversed"
    same = lambda a, b: abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1.0)  # noqa: E731
    if same(y, z_or_x) and not same(x_or_z, y):
        return (x_or_z, y, z_or_x), "cvpr24: spacing looks stored (z, y, x) (equal in-plane values last); kept"
    return (z_or_x, y, x_or_z), "cvpr24: spacing stored (x, y, z) as MedSAM's preprocessing saves it; reversed"


def read_npz_case(path: str | Path) -> NpzCase:
    """Read a CVPR24 or MedSAM2 npz file: the image (as a Volume when 3D), its ground truth and boxes."""
    path = Path(path)
    data = _load(path)
    if "imgs" not in data:
        raise InputError(
            f"{path} has no 'imgs' array (it has: {', '.join(sorted(data)) or 'nothing'}); expected the CVPR24 "
            "(imgs, gts, boxes, spacing) or MedSAM2 (imgs, gts, spacing, direction, origin) layout"
        )
    imgs = data["imgs"]
    layout: NpzLayout = "medsam2" if ("direction" in data or "origin" in data) else "cvpr24"
    is_3d = imgs.ndim == 3 and not (imgs.shape[-1] == 3 and imgs.shape[0] > 3 and imgs.shape[1] > 3)
    if imgs.ndim not in (2, 3) or imgs.size == 0:
        raise InputError(f"{path}: 'imgs' has shape {imgs.shape}; expected (D, H, W), (H, W) or (H, W, 3)")
    if layout == "medsam2" and not is_3d:
        raise InputError(f"{path}: a MedSAM2 npz must hold a (D, H, W) volume, 'imgs' has shape {imgs.shape}")
    grid = imgs.shape if is_3d else imgs.shape[:2]

    gts = data.get("gts")
    if gts is not None and tuple(gts.shape) != tuple(grid):
        raise InputError(f"{path}: 'gts' has shape {gts.shape} but the image grid is {tuple(grid)}; they must match")

    boxes = _boxes(data.get("boxes"), is_3d, path)
    modality = modality_from_name(path)
    if not is_3d:
        return NpzCase(path, layout, imgs, None, gts, boxes, "2D case: no spacing")

    spacing, rule = _spacing_zyx(data.get("spacing"), layout, path)
    origin = (0.0, 0.0, 0.0)
    direction = np.eye(3)
    if "origin" in data:
        o = np.asarray(data["origin"], dtype=np.float64).reshape(-1)
        if o.size != 3:
            raise InputError(f"{path}: 'origin' should hold 3 numbers (x, y, z), got {o.size}")
        origin = tuple(float(v) for v in o)  # type: ignore[assignment]
    if "direction" in data:
        d = np.asarray(data["direction"], dtype=np.float64).reshape(-1)
        if d.size != 9 or abs(abs(np.linalg.det(d.reshape(3, 3))) - 1.0) > 1e-3:
            raise InputError(f"{path}: 'direction' should be a 3x3 rotation (9 numbers), got {d.tolist()}")
        direction = d.reshape(3, 3)
    volume = Volume(
        array=imgs,
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        modality=modality,
        metadata={"format": "npz", "layout": layout, "spacing_rule": rule, "source_path": str(path)},
    )
    return NpzCase(path, layout, imgs, volume, gts, boxes, rule)


def _boxes(raw: np.ndarray | None, is_3d: bool, path: Path) -> tuple[Box3D, ...] | tuple[Box, ...]:
    if raw is None:
        return ()
    arr = np.asarray(raw, dtype=np.float64)
    width = 6 if is_3d else 4
    if arr.size == 0:
        return ()
    if arr.ndim == 1 and arr.size == width:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != width:
        order = "x0,y0,z0,x1,y1,z1" if is_3d else "x0,y0,x1,y1"
        raise InputError(f"{path}: 'boxes' has shape {raw.shape}; expected (N, {width}) rows of {order}")
    if is_3d:
        return tuple(Box3D.from_sequence(row, source=f"{path} box {i}") for i, row in enumerate(arr))
    return tuple(Box.from_sequence(row, source=f"{path} box {i}") for i, row in enumerate(arr))


def read_npz_volume(path: str | Path) -> Volume:
    """The 3D image of an npz case as a Volume; a 2D case is an InputError."""
    case = read_npz_case(path)
    if case.volume is None:
        raise InputError(
            f"{path} holds a 2D image (imgs {case.image.shape}), not a volume; use `medsam segment` for 2D cases"
        )
    return case.volume


def write_npz_segs(segs: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``segs`` (a label map on the case's grid) as the challenge expects: npz with one key ``segs``."""
    segs = np.asarray(segs)
    if segs.ndim not in (2, 3):
        raise InputError(f"segs must be (H, W) or (D, H, W), got shape {segs.shape}")
    dtype = np.uint8 if segs.size == 0 or segs.max() < 256 else np.uint16
    buffer = io.BytesIO()
    np.savez_compressed(buffer, segs=segs.astype(dtype, copy=False))
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)
