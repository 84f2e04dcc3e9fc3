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
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

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


# --- CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation" ---------------------------

# The challenge stores its prompts as pickled Python objects (lists of dicts of numpy integers). They are read with
# an unpickler that builds numpy arrays, dtypes and scalars only: nothing else a pickle could name is called.
_PLAIN_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
CVPR25_BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    """One array of an npz; object arrays through the plain-data unpickler."""
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if dtype.hasobject:
            try:
                array = _PlainDataUnpickler(fh).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
                raise InputError(
                    f"{path}: '{name[:-4]}' holds Python objects that are not plain numbers, lists and dicts ({exc}); "
                    "refused for safety"
                ) from exc
            return np.asarray(array, dtype=object).reshape(shape)
    with zf.open(name) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def load_npz_plain(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an npz file, object arrays included when they hold plain data only (numbers, strings,
    lists, dicts, numpy arrays), as the CVPR 2025 challenge's files do; anything else is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist (or is not a file)")
    try:
        with zipfile.ZipFile(path) as zf:
            return {n[:-4]: _read_member(zf, n, path) for n in zf.namelist() if n.endswith(".npy")}
    except InputError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path} is not a readable npz file ({exc}); it may be truncated or corrupt") from exc


def is_cvpr25_npz(path: str | Path) -> bool:
    """True for a CVPR 2025 interactive case: prompts as objects (``boxes`` of dicts) or ``clicks`` present."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if {"clicks.npy", "clicks_order.npy"} & names:
                return True
            if "boxes.npy" in names:
                with zf.open("boxes.npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    return bool(header(fh)[2].hasobject)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return False
    return False


@dataclass(frozen=True)
class Cvpr25Box:
    """One class's box: the slice ``z_mid`` with its 2D box, and the object's inclusive slice range."""

    z_min: int
    z_max: int
    z_mid: int
    x_min: int
    y_min: int
    x_max: int
    y_max: int

    @property
    def box(self) -> Box:
        return Box(float(self.x_min), float(self.y_min), float(self.x_max), float(self.y_max))

    @property
    def z_limits(self) -> tuple[int, int]:
        return self.z_min, self.z_max

    def as_dict(self) -> dict[str, int]:
        values = (self.z_min, self.z_max, self.z_mid, self.x_min, self.y_min, self.x_max, self.y_max)
        return dict(zip(CVPR25_BOX_KEYS, (int(v) for v in values)))


@dataclass(frozen=True)
class Cvpr25Clicks:
    """One class's clicks so far: foreground and background clicks as [z, y, x] array indices, and their order
    ("fg"/"bg" per click)."""

    fg: tuple[tuple[int, int, int], ...] = ()
    bg: tuple[tuple[int, int, int], ...] = ()
    order: tuple[str, ...] = ()

    def sequence(self) -> tuple[tuple[int, int, int, int], ...]:
        """Every click in the order given: (z, y, x, label) with label 1 for fg, 0 for bg."""
        out, i_fg, i_bg = [], 0, 0
        order = self.order or tuple(["fg"] * len(self.fg) + ["bg"] * len(self.bg))
        for kind in order:
            if kind == "fg" and i_fg < len(self.fg):
                out.append((*self.fg[i_fg], 1))
                i_fg += 1
            elif kind == "bg" and i_bg < len(self.bg):
                out.append((*self.bg[i_bg], 0))
                i_bg += 1
        out += [(*c, 1) for c in self.fg[i_fg:]] + [(*c, 0) for c in self.bg[i_bg:]]
        return tuple(out)


@dataclass(frozen=True)
class Cvpr25Case:
    """A CVPR 2025 interactive case: ``imgs`` (D, H, W), ``spacing`` as stored, per class its box (None where the
    case has no boxes) and its clicks so far, the previous prediction when given, and ``gts`` when the file has
    them (training cases)."""

    path: Path
    imgs: np.ndarray
    spacing: np.ndarray | None
    boxes: tuple[Cvpr25Box | None, ...]
    clicks: tuple[Cvpr25Clicks, ...]
    prev_pred: np.ndarray | None
    gts: np.ndarray | None

    @property
    def n_classes(self) -> int:
        return max(len(self.boxes), len(self.clicks))

    @property
    def n_clicks(self) -> int:
        return sum(len(c.sequence()) for c in self.clicks)


def _int_triplet(value: object, what: str) -> tuple[int, int, int]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: a click is 3 numbers [z, y, x], got {value!r}")
    return int(arr[0]), int(arr[1]), int(arr[2])


def _cvpr25_boxes(raw: np.ndarray | None, path: Path) -> tuple[Cvpr25Box | None, ...]:
    if raw is None:
        return ()
    items = list(np.asarray(raw, dtype=object).reshape(-1))
    out: list[Cvpr25Box | None] = []
    for i, item in enumerate(items):
        if item is None:
            out.append(None)
            continue
        if not isinstance(item, dict) or not set(CVPR25_BOX_KEYS) <= set(item):
            raise InputError(
                f"{path}: boxes[{i}] should be a dict with {', '.join(CVPR25_BOX_KEYS)}, got {str(item)[:120]}"
            )
        try:
            out.append(Cvpr25Box(*(int(item[k]) for k in CVPR25_BOX_KEYS)))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: boxes[{i}] holds values that are not whole numbers ({exc})") from exc
    return tuple(out)


def _cvpr25_clicks(raw: np.ndarray | None, order_raw: np.ndarray | None, path: Path) -> tuple[Cvpr25Clicks, ...]:
    if raw is None:
        return ()
    items = list(np.asarray(raw, dtype=object).reshape(-1))
    orders: list[tuple[str, ...]] = []
    if order_raw is not None:
        o = np.asarray(order_raw, dtype=object)
        rows = list(o) if o.ndim >= 1 else []
        for row in rows:
            seq = [] if row is None else list(np.asarray(row, dtype=object).reshape(-1))
            orders.append(tuple(str(v) for v in seq if str(v) in ("fg", "bg")))
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{path}: clicks[{i}] should be a dict {{'fg': [...], 'bg': [...]}}, got {str(item)[:120]}")
        fg = tuple(_int_triplet(c, f"{path} clicks[{i}]['fg']") for c in item.get("fg", []) or [])
        bg = tuple(_int_triplet(c, f"{path} clicks[{i}]['bg']") for c in item.get("bg", []) or [])
        out.append(Cvpr25Clicks(fg, bg, orders[i] if i < len(orders) else ()))
    return tuple(out)


def read_cvpr25_case(path: str | Path) -> Cvpr25Case:
    """Read a CVPR 2025 interactive case (``imgs``, ``spacing``, ``boxes``, ``clicks``, ``clicks_order``,
    ``prev_pred``; ``gts`` on training cases); a malformed file is an InputError that says which key is wrong."""
    path = Path(path)
    data = load_npz_plain(path)
    if "imgs" not in data:
        raise InputError(f"{path} has no 'imgs' array (it has: {', '.join(sorted(data)) or 'nothing'})")
    imgs = data["imgs"]
    if imgs.ndim != 3 or imgs.size == 0 or imgs.dtype == object:
        raise InputError(f"{path}: 'imgs' has shape {imgs.shape}; a CVPR 2025 case is a (D, H, W) volume")
    boxes = _cvpr25_boxes(data.get("boxes"), path)
    clicks = _cvpr25_clicks(data.get("clicks"), data.get("clicks_order"), path)
    if not boxes and not clicks:
        raise InputError(f"{path} has neither 'boxes' nor 'clicks': nothing says what to segment")
    if boxes and clicks and len(boxes) != len(clicks):
        raise InputError(f"{path}: {len(boxes)} boxes but clicks for {len(clicks)} classes; give one of each per class")
    depth, h, w = imgs.shape
    for i, b in enumerate(boxes):
        if b is None:
            continue
        if not (0 <= b.z_min <= b.z_mid <= b.z_max < depth):
            raise InputError(f"{path}: boxes[{i}] has z_min {b.z_min}, z_mid {b.z_mid}, z_max {b.z_max}; the volume has "
                             f"slices 0..{depth - 1} and z_min <= z_mid <= z_max")
        if not (0 <= b.x_min <= b.x_max < w and 0 <= b.y_min <= b.y_max < h):
            raise InputError(f"{path}: boxes[{i}] ({b.x_min},{b.y_min})-({b.x_max},{b.y_max}) does not fit slices of "
                             f"{w} columns and {h} rows")
    for i, c in enumerate(clicks):
        for z, y, x, _ in c.sequence():
            if not (0 <= z < depth and 0 <= y < h and 0 <= x < w):
                raise InputError(f"{path}: a click of class {i + 1} at [z={z}, y={y}, x={x}] lies outside the volume "
                                 f"{imgs.shape} (clicks are [z, y, x] array indices)")
    prev = data.get("prev_pred")
    if prev is not None and prev.shape != imgs.shape:
        raise InputError(f"{path}: 'prev_pred' has shape {prev.shape} but 'imgs' {imgs.shape}")
    gts = data.get("gts")
    if gts is not None and gts.shape != imgs.shape:
        raise InputError(f"{path}: 'gts' has shape {gts.shape} but 'imgs' {imgs.shape}")
    spacing = data.get("spacing")
    return Cvpr25Case(path, imgs, None if spacing is None else np.asarray(spacing, dtype=np.float64).reshape(-1),
                      boxes, clicks, prev, gts)


def write_cvpr25_input(
    path: str | Path,
    imgs: np.ndarray,
    spacing: Sequence[float],
    *,
    boxes: Sequence[Cvpr25Box] | None = None,
    clicks: Sequence[Cvpr25Clicks] | None = None,
    prev_pred: np.ndarray | None = None,
    gts: np.ndarray | None = None,
) -> Path:
    """Write a case as the challenge's harness does (pickled lists of dicts for boxes and clicks), atomically.
    For tests, benchmarks and simulating the protocol."""
    items: dict[str, object] = {"imgs": imgs, "spacing": np.asarray(spacing, dtype=np.float64)}
    if gts is not None:
        items["gts"] = gts
    if boxes is not None:
        items["boxes"] = np.array([b.as_dict() for b in boxes], dtype=object)
    if clicks is not None:
        items["clicks"] = np.array([{"fg": [list(c) for c in k.fg], "bg": [list(c) for c in k.bg]} for k in clicks],
                                   dtype=object)
        order = np.empty(len(clicks), dtype=object)
        for i, k in enumerate(clicks):
            order[i] = list(k.order)
        items["clicks_order"] = order
    if prev_pred is not None:
        items["prev_pred"] = prev_pred
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **items)  # object arrays are pickled, as the harness writes them
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)
