"""What a session shows and segments: a 2D image or a volume as a stack of slices, with display windows.

``ImageStack`` holds the raw voxels (for display windows), the uint8 slices the model sees (volumes are
windowed once when opened, with the session's model window) and the geometry for exports. It is immutable
after loading, so any thread may read it without the session lock.

A volume's stack is the *view* of its orientation (:mod:`medsam.preprocess.orientation`; "canonical" by
default: the radiological display orientation of the series' slice plane): ``raw``, ``model_slices``,
``volume`` and every slice index and pixel of the session are in the view frame; ``source_volume`` and
``reorientation`` take labels back to the stored grid for exports.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medsam.errors import InputError
from medsam.inference.predictor import PreparedImage, Predictor
from medsam.inference.slices import SliceEncoder
from medsam.io.raster import RASTER_SUFFIXES
from medsam.serve.errors import Conflict, ForbiddenPath, NotFound, UploadTooLarge
from medsam.preprocess.intensity import CT_WINDOWS, IntensityWindow, apply_window, resolve_window
from medsam.preprocess.orientation import AxisReorientation, orient_volume
from medsam.types import Volume

ZIP_MAX_FILES = 20000
ZIP_EXPANSION = 8  # a zip may unpack to at most this many times the upload limit


@dataclass
class ImageStack:
    """dims "2d": raw (1, H, W[, C]) as read, no model slices (the predictor prepares the image itself).
    dims "3d": raw (z, y, x) volume voxels and model_slices (z, y, x) uint8 after the model window, both in
    the view frame; volume is the view Volume, source_volume the volume as stored (None: the same) and
    reorientation the map between them (None: the identity)."""

    dims: str
    raw: np.ndarray
    volume: Volume
    model_window: str
    model_slices: np.ndarray | None = None
    window: IntensityWindow | None = None
    source_volume: Volume | None = None
    reorientation: AxisReorientation | None = None
    _windows: dict[str, IntensityWindow] = field(default_factory=dict)
    _signatures: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def depth(self) -> int:
        return int(self.raw.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.raw.shape[1]), int(self.raw.shape[2])

    @property
    def channels(self) -> int:
        return int(self.raw.shape[3]) if self.raw.ndim == 4 else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth, *self.hw)

    @property
    def modality(self) -> str | None:
        return self.volume.modality

    @property
    def source(self) -> Volume:
        """The volume as stored (exports write its geometry)."""
        return self.source_volume if self.source_volume is not None else self.volume

    @property
    def orientation(self) -> AxisReorientation:
        if self.reorientation is not None:
            return self.reorientation
        return AxisReorientation.identity(self.source.shape, name="stored")

    def labels_to_source(self, labels: np.ndarray) -> np.ndarray:
        """A view-frame (z, y, x) label map on the stored grid."""
        reo = self.orientation
        return labels if reo.is_identity else np.ascontiguousarray(reo.to_source(labels))

    def check_z(self, z: int) -> int:
        if not 0 <= int(z) < self.depth:
            raise NotFound(f"slice {z} does not exist; this {'image' if self.dims == '2d' else 'volume'} has slices 0..{self.depth - 1}")
        return int(z)

    # --- the model's view -----------------------------------------------------------------------------

    def prepare(self, predictor: Predictor, z: int) -> PreparedImage:
        """Slice z resized and normalised for the model (numpy; no lock needed)."""
        z = self.check_z(z)
        if self.dims == "2d":
            prepared = predictor.prepare(self.raw[0], source="image")
        else:
            prepared = SliceEncoder(predictor, self.model_slices, batch_size=1).prepare(z)
        with self._lock:
            self._signatures[z] = prepared.signature
        return prepared

    def signature(self, predictor: Predictor, z: int) -> str:
        """The embedding-cache key of slice z (the same key ``Predictor``/``SliceEncoder`` use), memoised."""
        with self._lock:
            found = self._signatures.get(z)
        if found is not None:
            return found
        from medsam.inference.cache import image_signature

        image = self.raw[0] if self.dims == "2d" else self.model_slices[self.check_z(z)]
        sig = image_signature(image, predictor.model_id, predictor.config.name)
        with self._lock:
            self._signatures[z] = sig
        return sig

    # --- the person's view ----------------------------------------------------------------------------

    def window_presets(self) -> list[str]:
        if self.dims == "2d" and self.raw.dtype == np.uint8:
            return ["auto", "percentile"]
        presets = ["auto"]
        if self._looks_ct():
            presets += list(CT_WINDOWS)
        presets.append("percentile")
        return presets

    def _looks_ct(self) -> bool:
        if self.raw.dtype == np.uint8:
            return False
        if (self.modality or "").upper() == "CT":
            return True
        return bool(np.issubdtype(self.raw.dtype, np.number) and float(np.min(self.raw[self.depth // 2])) < -500)

    def resolve_display_window(self, text: str | None) -> IntensityWindow | None:
        """None for the default view; the window is resolved once against the whole stack and cached."""
        key = (text or "auto").strip().lower()
        if key in ("", "auto"):
            return self.window
        with self._lock:
            found = self._windows.get(key)
        if found is not None:
            return found
        data = self.raw if self.raw.ndim == 3 else self.raw[..., 0]
        resolved = resolve_window(data, text, modality=self.modality)
        with self._lock:
            self._windows[key] = resolved
        return resolved

    def display(self, z: int, window: str | None = None) -> np.ndarray:
        """Slice z as uint8 (H, W) or (H, W, 3) for the screen."""
        z = self.check_z(z)
        resolved = self.resolve_display_window(window)
        if self.dims == "3d":
            if resolved is None or resolved is self.window:
                return self.model_slices[z]
            return apply_window(self.raw[z], resolved)
        image = self.raw[0]
        if resolved is not None and image.ndim == 2:
            return apply_window(image, resolved)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.dtype == np.uint8:
            return image[..., :3] if image.ndim == 3 else image
        from medsam.preprocess.intensity import to_display_range

        out = np.clip(to_display_range(image), 0, 255).astype(np.uint8)
        return out[..., :3] if out.ndim == 3 else out


def load_stack(
    path: Path, window: str = "auto", orientation: str = "canonical", *, expected: AxisReorientation | None = None
) -> ImageStack:
    """Read a 2D image (PNG/JPEG/TIFF/BMP) or a volume (DICOM folder/file, NIfTI, NRRD, MHA, npz); a volume is
    shown in the view of ``orientation``, or of ``expected`` (a reorientation read back from a session record,
    which must be the one the file's geometry gives, else the file changed)."""
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(RASTER_SUFFIXES):
        from medsam.io.raster import read_image
        from medsam.preprocess.geometry import check_image_shape

        image = read_image(path)
        check_image_shape(image, source=f"image {path.name}")
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        gray = image if image.ndim == 2 else image[..., 0]
        volume = Volume(np.asarray(gray)[None], metadata={"format": "raster", "source_path": str(path)})
        return ImageStack("2d", image[None], volume, model_window="auto")
    from medsam.io.volume import read_volume

    source = read_volume(path)
    oriented = orient_volume(source, orientation)
    if expected is not None and expected != oriented.reorientation:
        raise Conflict(
            f"{path.name}: the session was made in the view {expected.summary()!r} but the file's geometry now gives "
            f"{oriented.reorientation.summary()!r}; the file changed, so its labels would not land where they were drawn"
        )
    view = oriented.view
    resolved = resolve_window(source, window)
    slices = apply_window(view, resolved)
    return ImageStack(
        "3d", view.array, view, model_window=str(window or "auto"), model_slices=slices, window=resolved,
        source_volume=source, reorientation=oriented.reorientation,
    )


# --- paths and uploads ---------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, *, default: str = "upload") -> str:
    """A plain file name from what a client sent: no folders, only [A-Za-z0-9._-], no leading dots."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _SAFE_NAME.sub("_", base).lstrip(".")
    return base[:128] or default


def resolve_in_root(root: Path | None, relative: str) -> Path:
    """``relative`` inside the data root, symlinks resolved; '..', absolute paths outside it and escapes by
    symlink are ForbiddenPath; a missing file is an InputError."""
    if root is None:
        raise ForbiddenPath("this server was started without --data-root; opening files by path is disabled (upload the file instead)")
    text = str(relative).replace("\\", "/")
    if any(part == ".." for part in text.split("/")):
        raise ForbiddenPath(f"path {relative!r} contains '..'; give a path inside the data root without '..'")
    candidate = Path(text)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(root)
        except ValueError:
            raise ForbiddenPath(f"path {relative!r} is outside the data root; give a path relative to it") from None
    try:
        resolved = (root / candidate).resolve(strict=True)
    except FileNotFoundError:
        raise InputError(f"{relative!r} does not exist in the data root") from None
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{relative!r} cannot be opened: {exc}") from None
    if resolved != root and root not in resolved.parents:
        raise ForbiddenPath(f"path {relative!r} leads outside the data root (through a symbolic link); refused")
    return resolved


def save_upload(stream: BinaryIO, target: Path, max_bytes: int) -> int:
    """Copy an uploaded stream to ``target`` in chunks; more than ``max_bytes`` is an UploadTooLarge."""
    written = 0
    tmp = target.with_name(f".{target.name}.part")
    try:
        with open(tmp, "wb") as out:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                written += len(chunk)
                if written > max_bytes:
                    raise UploadTooLarge(f"the upload is larger than the server's limit of {max_bytes / 2**20:g} MiB")
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return written


def unpack_zip(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Unpack a zip (e.g. a DICOM series) safely: plain member names only, bounded size and count.
    Returns what to read: the one volume file inside, else the folder (a DICOM series)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{archive.name} is not a readable zip file: {exc}") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > ZIP_MAX_FILES:
            raise InputError(f"{archive.name} holds {len(members)} files; at most {ZIP_MAX_FILES} are accepted")
        if sum(m.file_size for m in members) > max_bytes * ZIP_EXPANSION:
            raise UploadTooLarge(f"{archive.name} unpacks to more than {max_bytes * ZIP_EXPANSION / 2**20:g} MiB")
        names: set[str] = set()
        for i, m in enumerate(members):
            parts = [p for p in m.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            if not parts or any(p == ".." for p in parts) or m.filename.startswith("/"):
                raise ForbiddenPath(f"{archive.name}: member {m.filename!r} has an unsafe path; refused")
            if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            name = f"{i:05d}_{safe_filename(parts[-1])}"
            names.add(name)
            with zf.open(m) as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    files = sorted(folder.iterdir())
    if not files:
        raise InputError(f"{archive.name} is empty")
    from medsam.io.volume import VOLUME_SUFFIXES

    volumes = [f for f in files if f.name.lower().endswith(tuple(s for s in VOLUME_SUFFIXES if s not in (".dcm", ".dicom", ".ima")))]
    rasters = [f for f in files if f.name.lower().endswith(RASTER_SUFFIXES)]
    if len(volumes) == 1:
        return volumes[0]
    if len(files) == 1 and rasters:
        return rasters[0]
    return folder
