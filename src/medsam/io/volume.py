"""One entry point for volumes: ``read_volume(path)`` -> :class:`medsam.types.Volume`.

Dispatch by what the path is:
- a folder: a DICOM series, or a folder of several series (``series_uid`` chooses; else the one with the
  most slices, named in a warning and in ``volume.metadata["series_choice"]``);
- ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``: SimpleITK (:mod:`medsam.io.itk`);
- ``.npz``: CVPR24 MedSAM-on-laptop or MedSAM2 layout (:mod:`medsam.io.npz`; use ``read_npz_case`` to get
  the ground truth and boxes too);
- any other file that is DICOM (``.dcm`` or the DICM preamble): its whole series (:mod:`medsam.io.dicom`).

Every Volume has ``array`` (z, y, x) with raw values (CT in HU after slope/intercept), ``spacing_mm``
(z, y, x), ``origin_mm`` (x, y, z) and ``direction`` (3x3, ITK convention), ``modality`` when the source
says it, and ``metadata["format"]`` / ``metadata["source_path"]``. Anything unusable is an InputError
naming the file and what to do.
"""

from __future__ import annotations

from pathlib import Path

from medsam.errors import InputError
from medsam.types import Volume

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".dcm", ".dicom", ".ima")
_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def read_volume(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read a 3D image from a DICOM folder/file, NIfTI, NRRD, MHA/MHD or npz file (see the module doc)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist; give a DICOM folder or a .nii.gz/.nrrd/.mha/.npz file")
    if path.is_dir():
        from medsam.io.dicom import read_dicom

        return read_dicom(path, series_uid=series_uid)

    from medsam.io.itk import itk_suffix

    name = path.name.lower()
    if itk_suffix(path) is not None:
        from medsam.io.itk import read_itk

        return _no_series(read_itk(path), series_uid, path)
    if name.endswith(".npz"):
        from medsam.io.npz import read_npz_volume

        return _no_series(read_npz_volume(path), series_uid, path)
    if name.endswith(_RASTER_SUFFIXES):
        raise InputError(
            f"{path} is a 2D image, not a volume; use `medsam segment` for 2D images "
            "(a volume is a DICOM series folder or a .nii.gz/.nrrd/.mha/.npz file)"
        )
    from medsam.io.dicom import looks_like_dicom, read_dicom

    if looks_like_dicom(path):
        return read_dicom(path, series_uid=series_uid)
    raise InputError(
        f"{path}: unknown volume format; give a DICOM series folder or file, or a "
        ".nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd/.npz file"
    )


def _no_series(volume: Volume, series_uid: str | None, path: Path) -> Volume:
    if series_uid is not None:
        raise InputError(f"series_uid was given but {path} is not DICOM; a single-volume file has no series to choose")
    return volume
