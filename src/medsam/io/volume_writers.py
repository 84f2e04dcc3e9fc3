"""Label volumes out as NIfTI / NRRD / MHA with exactly the geometry of the volume they were made on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import OutputError
from medsam.io.atomic import atomic_path, check_writable
from medsam.io.labels import as_label_array
from medsam.types import Volume

LABEL_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def label_volume_suffix(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    for suffix in LABEL_VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def to_sitk_image(array: np.ndarray, reference: Volume) -> Any:
    """A SimpleITK image of ``array`` (z, y, x) carrying the reference's spacing, origin and direction."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(reference.spacing_mm)))
    image.SetOrigin(tuple(float(o) for o in reference.origin_mm))
    image.SetDirection(tuple(float(d) for d in np.asarray(reference.direction, dtype=np.float64).reshape(-1)))
    return image


def write_label_volume(
    labels: np.ndarray, reference: Volume, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write a (z, y, x) label map on ``reference``'s grid as .nii.gz / .nii / .nrrd / .mha (atomic).

    Spacing, origin and direction are the reference's, so the labels land on the same physical voxels
    (for a DICOM reference with uneven slice distances, the volume's mean distance is used).
    Labels are stored as uint8, or uint16 when a label exceeds 255; NIfTI/NRRD/MHA are compressed.
    """
    suffix = label_volume_suffix(path)
    if suffix is None:
        raise OutputError(
            f"output {path}: unknown label volume format; end the name with "
            f"{', '.join(LABEL_VOLUME_SUFFIXES)} (DICOM outputs: write_dicom_seg / write_rtstruct)"
        )
    check_writable(path, overwrite=overwrite)
    data = as_label_array(labels, reference.shape, what=f"labels for {path}")
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover
        raise OutputError("writing label volumes needs SimpleITK: pip install 'medsam-toolkit[volumes]'") from exc
    image = to_sitk_image(data, reference)
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=suffix != ".nii")
        except RuntimeError as exc:
            raise OutputError(f"output {path}: SimpleITK could not write it: {str(exc).strip().splitlines()[-1]}") from exc
    return Path(path)
