"""Exports of a session's labels through the io writers, into the session's ``exports/`` folder.

A session's labels live in its view frame (see :mod:`medsam.serve.source`); every label export (NIfTI, NRRD,
MHA, npz, DICOM-SEG, RT-STRUCT) maps them back to the stored grid and writes the source's geometry, so they
land on the source voxels whatever orientation the session was shown in. The montage shows the view.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsam.errors import InputError
from medsam.serve.errors import Conflict, NotFound
from medsam.serve.session import Session
from medsam.serve.source import safe_filename

SUFFIXES = {
    "png": ".png",
    "overlay": ".png",
    "nifti": ".nii.gz",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "npz": ".npz",
    "dicom-seg": ".dcm",
    "rtstruct": ".dcm",
    "montage": ".png",
}
ONLY_2D = ("png", "overlay")
ONLY_3D = ("montage",)
_DEFAULT_STEM = {"overlay": "_overlay", "dicom-seg": "_seg", "rtstruct": "_rtstruct", "montage": "_montage"}


def export_folder(session: Session) -> Path:
    return session.folder / "exports"


def export_name(session: Session, fmt: str, filename: str | None) -> str:
    suffix = SUFFIXES[fmt]
    if filename:
        if re.search(r"[\\/]", filename) or filename.startswith(".") or ".." in filename:
            raise InputError(f"export file name {filename!r}: give a plain file name without folders")
        name = safe_filename(filename)
        return name if name.lower().endswith(suffix) else name + suffix
    stem = safe_filename(session.name).split(".")[0] or "labels"
    return f"{stem}_labels{_DEFAULT_STEM.get(fmt, '')}{suffix}"


def export_path(session: Session, name: str) -> Path:
    clean = safe_filename(name)
    if clean != name:
        raise NotFound(f"export {name!r} does not exist")
    path = export_folder(session) / clean
    if not path.is_file():
        raise NotFound(f"export {name!r} does not exist in session {session.id}")
    return path


def write_export(session: Session, fmt: str, filename: str | None, overwrite: bool) -> Path:
    """Write the labels as ``fmt``; an existing file is a Conflict (409) unless ``overwrite``.
    Call under the session lock (the labels must not change while written)."""
    stack = session.stack
    if fmt in ONLY_2D and stack.dims != "2d":
        raise InputError(f"export format {fmt!r} is for 2D images; for volumes use nifti, nrrd, mha, npz, dicom-seg, rtstruct or montage")
    if fmt in ONLY_3D and stack.dims != "3d":
        raise InputError(f"export format {fmt!r} is for volumes; for 2D images use png or overlay")
    name = export_name(session, fmt, filename)
    folder = export_folder(session)
    folder.mkdir(exist_ok=True)
    path = folder / name
    if path.exists() and not overwrite:
        raise Conflict(f"export {name} already exists in session {session.id}; choose another file name or pass overwrite=true")
    labels = session.labels
    names = {e.value: e.name for e in session.labels_table.values()}
    if fmt == "png":
        from medsam.io.raster import write_mask_png

        return write_mask_png(labels[0], path, overwrite=overwrite)
    if fmt == "overlay":
        from medsam.io.raster import write_overlay_png

        return write_overlay_png(stack.display(0), labels[0], path, overwrite=overwrite)
    if fmt == "montage":
        from medsam.io.montage import write_montage

        reo = stack.orientation
        slice_names = {z: reo.slice_to_source(z) for z in range(stack.depth)} if reo.keeps_slice_axis else None
        return write_montage(stack.model_slices, labels, path, slice_names=slice_names, overwrite=overwrite)
    source_labels = stack.labels_to_source(labels) if stack.dims == "3d" else labels
    if fmt in ("nifti", "nrrd", "mha"):
        from medsam.io.volume_writers import write_label_volume

        return write_label_volume(source_labels, stack.source, path, overwrite=overwrite)
    if fmt == "npz":
        from medsam.io.npz import write_npz_segs

        return write_npz_segs(labels[0] if stack.dims == "2d" else source_labels, path, overwrite=overwrite)
    if fmt == "dicom-seg":
        from medsam.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(source_labels, stack.source, path, label_names=names, overwrite=overwrite)
    if fmt == "rtstruct":
        from medsam.io.rtstruct import write_rtstruct

        return write_rtstruct(source_labels, stack.source, path, label_names=names, overwrite=overwrite)
    raise InputError(f"unknown export format {fmt!r}")


def list_exports(session: Session) -> list[Path]:
    folder = export_folder(session)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def empty_labels(labels: np.ndarray) -> bool:
    return not labels.any()
