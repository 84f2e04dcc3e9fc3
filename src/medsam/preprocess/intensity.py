"""Intensity handling in numpy: bring any image to the 0..255 range the SAM family expects.

2D images: ``to_display_range``. Volumes: ``parse_window`` / ``resolve_window`` / ``apply_window`` with CT
windows by name or "W,L", MR percentile clipping over non-zero voxels, or ``auto`` (from the modality, else
from the intensity range).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from medsam.errors import InputError

if TYPE_CHECKING:
    from medsam.types import Volume


def rescale_to_uint8_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and map linearly to 0..255 (float32). A flat window gives zeros."""
    image = np.asarray(image, dtype=np.float32)
    span = float(high) - float(low)
    if span <= 0:
        return np.zeros_like(image, dtype=np.float32)
    return (np.clip(image, low, high) - low) * np.float32(255.0 / span)


def percentile_window(
    image: np.ndarray, lower: float = 0.5, upper: float = 99.5, *, nonzero_only: bool = False
) -> tuple[float, float]:
    """The (low, high) intensity window at the given percentiles, optionally over non-zero values only."""
    values = np.asarray(image)
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values.ravel()
    if nonzero_only:
        values = values[values != 0]
    if values.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(values, [lower, upper])
    return float(low), float(high)


def to_display_range(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Bring a 2D image (H, W) or (H, W, C) to values in 0..255.

    uint8 stays as it is (the exact path of the reference pipelines). Other integer types (16-bit PNG,
    TIFF) and floats get a 0.5-99.5 percentile window over the whole image, as MedSAM does for MR.
    NaN or infinite pixels, and constant images, are errors: they cannot give a meaningful mask.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise InputError(f"{source}: the image is empty (shape {image.shape})")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise InputError(
            f"{source}: contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) before segmenting"
        )
    if image.dtype != np.uint8:
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise InputError(f"{source}: unsupported pixel type {image.dtype}; give integer or float pixels")
    if image.max() == image.min():
        raise InputError(
            f"{source}: every pixel has the same value ({image.flat[0].item()!r}); there is nothing to segment. "
            "Check that the right file or slice was given"
        )
    if image.dtype == np.uint8:
        return image
    low, high = percentile_window(image)
    if high <= low:
        low, high = float(image.min()), float(image.max())
    return rescale_to_uint8_range(image, low, high)


# ---------------------------------------------------------------------------------------------------------
# Volume windows: CT presets, MR percentile clipping, and the automatic choice.
# ---------------------------------------------------------------------------------------------------------

WindowKind = Literal["ct", "percentile", "passthrough", "auto"]

#: CT presets as (width, level) in Hounsfield units. Soft tissue W400/L40 is what MedSAM's preprocessing
#: (pre_CT_MR.py) uses for every CT; the others are the usual radiology presets (Radiopaedia, "Windowing (CT)").
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "liver": (150.0, 30.0),
    "mediastinum": (350.0, 50.0),
}
_WINDOW_ALIASES = {
    "soft": "soft_tissue",
    "softtissue": "soft_tissue",
    "abdomen": "soft_tissue",
    "lungs": "lung",
    "mr": "percentile",
    "mri": "percentile",
    "none": "passthrough",
    "uint8": "passthrough",
}
#: Values below this suggest CT Hounsfield units (air is -1000 HU) when the modality is unknown.
CT_AIR_THRESHOLD_HU = -500.0


@dataclass(frozen=True)
class WindowSpec:
    """An intensity window as asked for (by name, by numbers, or ``auto``), before it meets the data.

    kind: "ct" (fixed width/level in HU), "percentile" (clip to percentiles of the non-zero voxels, MedSAM's
        MR rule), "passthrough" (uint8 data used as it is) or "auto" (decided by ``resolve_window``).
    width, level: the CT window in HU (kind "ct" only); the window spans level - width/2 .. level + width/2.
    lower_percentile, upper_percentile: the percentile pair (kind "percentile" only).
    """

    kind: WindowKind
    name: str
    width: float | None = None
    level: float | None = None
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) in HU of a CT window."""
        if self.kind != "ct" or self.width is None or self.level is None:
            raise ValueError(f"window {self.name!r} is not a CT window; it has no fixed bounds")
        return self.level - self.width / 2.0, self.level + self.width / 2.0

    def __str__(self) -> str:
        if self.kind == "ct":
            return f"{self.name} (W{self.width:g} L{self.level:g})"
        if self.kind == "percentile":
            return f"percentile {self.lower_percentile:g}-{self.upper_percentile:g} of non-zero voxels"
        return self.name


AUTO = WindowSpec("auto", "auto")
PASSTHROUGH = WindowSpec("passthrough", "passthrough")
MR_PERCENTILE = WindowSpec("percentile", "percentile", lower_percentile=0.5, upper_percentile=99.5)


@dataclass(frozen=True)
class IntensityWindow:
    """A window resolved against data: voxels in [low, high] map linearly onto 0..255.

    zero_background: voxels exactly 0 in the input stay 0 in the output (MedSAM's MR rule: background
        outside the body is not lifted to the low end of the window).
    passthrough: the data is already uint8 and is used unchanged (low/high are then 0 and 255).
    spec: the request this window came from (after ``auto`` was decided).
    """

    low: float
    high: float
    spec: WindowSpec
    zero_background: bool = False
    passthrough: bool = False

    def __str__(self) -> str:
        if self.passthrough:
            return "passthrough (already uint8)"
        return f"{self.spec} -> [{self.low:g}, {self.high:g}]"


def _window_error(text: str, why: str) -> InputError:
    names = ", ".join(sorted(CT_WINDOWS))
    return InputError(
        f"window {text!r}: {why}. Give a CT window name ({names}), numbers \"W,L\" (width,level in HU, "
        "e.g. \"400,40\"), \"percentile\" (0.5-99.5 of non-zero voxels, as MedSAM does for MR; "
        "\"percentile:1,99\" for other percentiles), \"passthrough\" for uint8 data, or \"auto\""
    )


def parse_window(text: str | WindowSpec | None) -> WindowSpec:
    """Parse a window request: a CT preset name ("soft_tissue", "lung", ...), "W,L" numbers ("400,40"),
    "percentile" or "percentile:LOW,HIGH", "passthrough", or "auto" / None.

    Names are case-insensitive; spaces and hyphens count as underscores. Bad text is an InputError that
    lists what is accepted.
    """
    if text is None:
        return AUTO
    if isinstance(text, WindowSpec):
        return text
    raw = str(text)
    key = raw.strip().lower().replace("-", "_").replace(" ", "_")
    if key == "":
        return AUTO
    key = _WINDOW_ALIASES.get(key, key)
    if key == "auto":
        return AUTO
    if key == "passthrough":
        return PASSTHROUGH
    if key in CT_WINDOWS:
        width, level = CT_WINDOWS[key]
        return WindowSpec("ct", key, width=width, level=level)
    compact = raw.strip().lower().replace(" ", "")
    if key.startswith("percentile"):
        rest = compact[len("percentile"):].lstrip(":=_")
        if rest == "":
            return MR_PERCENTILE
        lo_hi = _parse_numbers(rest, raw)
        if len(lo_hi) != 2 or not (0.0 <= lo_hi[0] < lo_hi[1] <= 100.0):
            raise _window_error(raw, "percentiles must be two numbers LOW,HIGH with 0 <= LOW < HIGH <= 100")
        return WindowSpec("percentile", "percentile", lower_percentile=lo_hi[0], upper_percentile=lo_hi[1])
    if any(ch.isdigit() for ch in compact):
        numbers = _parse_numbers(compact, raw)
        if len(numbers) != 2:
            raise _window_error(raw, f"expected 2 numbers W,L, got {len(numbers)}")
        width, level = numbers
        if width <= 0:
            raise _window_error(raw, f"the width must be positive, got {width:g} (the order is W,L: width first)")
        return WindowSpec("ct", f"W{width:g}_L{level:g}", width=width, level=level)
    raise _window_error(raw, "unknown window name")


def _parse_numbers(text: str, raw: str) -> list[float]:
    parts = [p for p in text.replace(";", ",").replace("/", ",").split(",") if p.strip() != ""]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise _window_error(raw, "expected numbers") from None
    if not all(np.isfinite(values)):
        raise _window_error(raw, "numbers must be finite")
    return values


def normalise_modality(modality: str | None) -> str | None:
    """DICOM-style modality code: "MRI" -> "MR", "ct" -> "CT"; None or "" stays None."""
    if modality is None:
        return None
    code = str(modality).strip().upper()
    if code == "":
        return None
    return {"MRI": "MR", "PET": "PT"}.get(code, code)


def _unwrap(data: "Volume | np.ndarray", modality: str | None) -> tuple[np.ndarray, str | None]:
    array = getattr(data, "array", None)
    if array is not None:  # a Volume
        return np.asarray(array), normalise_modality(modality or getattr(data, "modality", None))
    return np.asarray(data), normalise_modality(modality)


def choose_window(data: "Volume | np.ndarray", *, modality: str | None = None) -> WindowSpec:
    """The ``auto`` rule. uint8 data passes through; else CT -> soft tissue (W400/L40, as MedSAM), MR and
    other known modalities -> percentile 0.5-99.5 of non-zero voxels; with no modality, values below
    -500 suggest CT in HU (soft tissue window), anything else gets the percentile window.

    ``modality`` overrides the Volume's own.
    """
    array, modality = _unwrap(data, modality)
    if array.dtype == np.uint8:
        return PASSTHROUGH
    if modality == "CT":
        return parse_window("soft_tissue")
    if modality is not None:
        return MR_PERCENTILE
    if array.size and np.issubdtype(array.dtype, np.number):
        low = float(np.nanmin(array)) if np.issubdtype(array.dtype, np.floating) else float(array.min())
        if low < CT_AIR_THRESHOLD_HU:
            return parse_window("soft_tissue")
    return MR_PERCENTILE


def resolve_window(
    data: "Volume | np.ndarray", spec: str | WindowSpec | None = "auto", *, modality: str | None = None
) -> IntensityWindow:
    """Decide ``auto`` and compute the numeric bounds of ``spec`` on this data (percentiles need the data)."""
    array, _ = _unwrap(data, modality)
    _check_numeric(array)
    spec = parse_window(spec)
    if spec.kind == "auto":
        spec = choose_window(data, modality=modality)
    if spec.kind == "passthrough":
        if array.dtype != np.uint8:
            raise InputError(
                f"window 'passthrough' needs uint8 data, got {array.dtype} with values "
                f"{_finite_min(array):g}..{_finite_max(array):g}; choose a CT window or \"percentile\""
            )
        return IntensityWindow(0.0, 255.0, spec, passthrough=True)
    if spec.kind == "ct":
        low, high = spec.bounds
        return IntensityWindow(low, high, spec)
    low, high = percentile_window(array, spec.lower_percentile, spec.upper_percentile, nonzero_only=True)
    if high <= low:  # (almost) all non-zero voxels equal: fall back to the full range
        low, high = _finite_min(array), _finite_max(array)
    if high <= low:
        raise InputError(
            f"every voxel has the same value ({low:g}); there is nothing to segment. "
            "Check that the right file or series was given"
        )
    return IntensityWindow(low, high, spec, zero_background=True)


def apply_window(
    data: "Volume | np.ndarray",
    spec: str | WindowSpec | IntensityWindow | None = "auto",
    *,
    modality: str | None = None,
    chunk_slices: int = 16,
) -> np.ndarray:
    """Window a volume (z, y, x) or image to uint8 0..255, the way MedSAM's preprocessing does.

    Each voxel becomes ``uint8((clip(v, low, high) - low) / (high - low) * 255)`` (truncation, as
    ``np.uint8`` does in MedSAM); with the percentile window, voxels that were exactly 0 stay 0.
    A CT window uses fixed bounds: MedSAM min-max normalises the clipped volume instead, which is the same
    whenever the volume reaches both ends of the window (any CT with air and bone does).
    Work is done ``chunk_slices`` slices at a time in float64, so memory stays near the output's size.
    """
    array, _ = _unwrap(data, modality)
    window = spec if isinstance(spec, IntensityWindow) else resolve_window(data, spec, modality=modality)
    if window.passthrough:
        if array.dtype != np.uint8:
            raise InputError(f"window 'passthrough' needs uint8 data, got {array.dtype}")
        return array
    _check_numeric(array)
    out = np.empty(array.shape, dtype=np.uint8)
    flat_in = array.reshape((-1,) + array.shape[-2:]) if array.ndim >= 2 else array.reshape(1, -1)
    flat_out = out.reshape(flat_in.shape)
    span = float(window.high) - float(window.low)
    step = max(1, int(chunk_slices))
    for start in range(0, flat_in.shape[0], step):
        block = flat_in[start : start + step]
        scaled = (np.clip(block.astype(np.float64), window.low, window.high) - window.low) / span * 255.0
        if window.zero_background:
            scaled[block == 0] = 0.0
        flat_out[start : start + step] = scaled.astype(np.uint8)
    return out


def _check_numeric(array: np.ndarray) -> None:
    if array.size == 0:
        raise InputError(f"the image is empty (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"unsupported voxel type {array.dtype}; give integer or float voxels")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(
            "the volume contains NaN or infinite voxels; replace them (e.g. np.nan_to_num) before windowing"
        )


def _finite_min(array: np.ndarray) -> float:
    return float(np.nanmin(array)) if np.issubdtype(array.dtype, np.floating) else float(array.min())


def _finite_max(array: np.ndarray) -> float:
    return float(np.nanmax(array)) if np.issubdtype(array.dtype, np.floating) else float(array.max())
