"""NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) through SimpleITK.

The array is ``sitk.GetArrayFromImage`` (z, y, x); spacing is SimpleITK's (x, y, z) reversed into (z, y, x);
origin (x, y, z) and direction (3x3, columns = physical directions of the x, y, z index axes) are kept as
SimpleITK gives them (LPS), so writing a label volume back with the same values restores the geometry.

SimpleITK is imported lazily. A gzip file is checked end to end first: SimpleITK reads a truncated
.nii.gz without complaint and fills the missing voxels.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import InputError
from medsam.types import Volume

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InputError("reading NIfTI/NRRD/MHA needs SimpleITK: pip install 'medsam-toolkit[volumes]'") from exc
    return sitk


def itk_suffix(path: Path) -> str | None:
    """The recognised suffix of ``path`` (".nii.gz", ".nrrd", ...), or None."""
    name = path.name.lower()
    for suffix in sorted(ITK_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def check_gzip(path: Path, *, chunk_bytes: int = 1 << 20) -> None:
    """Decompress the whole file to nowhere, so a truncated or corrupt gzip fails here with a clear message."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(chunk_bytes):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path} is a damaged gzip file ({exc}); it was probably cut short while copying or downloading. "
            "Copy it again (check it with `gzip -t`)"
        ) from exc


def read_itk(path: str | Path) -> Volume:
    """Read a 3D NIfTI / NRRD / MHA / MHD file as a Volume (modality unknown: these formats do not say)."""
    sitk = _sitk()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist (or is not a file)")
    if path.name.lower().endswith(".gz"):
        check_gzip(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        size = reader.GetSize()
        components = reader.GetNumberOfComponents()
    except RuntimeError as exc:
        raise InputError(
            f"{path} cannot be read as {itk_suffix(path) or 'a medical image'}: {_first_line(exc)}. "
            "The file may be corrupt or not what its name says"
        ) from exc
    _check_shape(path, dim, size, components)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: reading the voxels failed: {_first_line(exc)}. The file may be truncated") from exc
    if image.GetDimension() == 4:  # a 4D header whose last axis has one element
        image = image[:, :, :, 0]
    array = sitk.GetArrayFromImage(image)
    metadata: dict[str, Any] = {"format": (itk_suffix(path) or "").lstrip("."), "source_path": str(path)}
    for key in image.GetMetaDataKeys():
        value = image.GetMetaData(key)
        if len(value) <= 200 and value.isprintable():
            metadata.setdefault("header", {})[key] = value
    return Volume(
        array=array,
        spacing_mm=tuple(reversed(image.GetSpacing())),
        origin_mm=image.GetOrigin(),
        direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        modality=None,
        metadata=metadata,
    )


def _check_shape(path: Path, dim: int, size: tuple[int, ...], components: int) -> None:
    if dim == 2:
        raise InputError(
            f"{path} is a 2D image ({size[0]}x{size[1]}), not a volume; use `medsam segment` for 2D images"
        )
    if dim == 4 and size[3] > 1:
        raise InputError(
            f"{path} is a 4D image ({'x'.join(str(s) for s in size)}: {size[3]} volumes, e.g. time points or "
            "channels); give one 3D volume (e.g. extract it with `fslroi` or SimpleITK: image[:, :, :, t])"
        )
    if dim not in (3, 4):
        raise InputError(f"{path} has {dim} dimensions; a 3D volume was expected")
    if components != 1:
        raise InputError(
            f"{path} has {components} values per voxel (colour or vector image); give a single-channel volume"
        )


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ERROR" in ln or "rror" in ln]
    text = (useful or lines or [type(exc).__name__])[-1]
    return text.replace("sitk::ERROR: ", "")
