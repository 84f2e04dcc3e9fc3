"""DICOM series in: a file, a series folder, or a folder holding several series -> one ``Volume``.

Slices are grouped by SeriesInstanceUID, checked for one size / orientation / pixel spacing, sorted by
their ImagePositionPatient projected on the slice normal, and rescaled with RescaleSlope/Intercept
(CT becomes Hounsfield units). The z spacing comes from the positions, never from SliceThickness (which
is the slab thickness and differs from the slice distance for overlapping or gapped series).

The geometry follows the ITK convention of :class:`medsam.types.Volume`: the direction's columns are the
row direction (x, ImageOrientationPatient[:3]), the column direction (y, [3:]) and the slice normal (z);
origin is the first sorted slice's ImagePositionPatient; everything in the DICOM patient frame (LPS).

What the DICOM-SEG and RT-STRUCT writers need is kept as a :class:`DicomSeriesInfo` in
``volume.metadata["dicom"]``.

pydicom is imported lazily. Enhanced multi-frame files (one file holding all slices) are not read yet;
they raise an InputError that says how to convert them.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medsam.errors import InputError
from medsam.types import Volume

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Objects that live in image series folders but are not slices of the image.
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE_MM = 1e-3
_SCAN_TAGS = (
    "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "SeriesDescription", "SeriesNumber",
    "Rows", "Columns", "NumberOfFrames",
)


@dataclass(frozen=True)
class DicomSeriesSummary:
    """One series found in a folder: its UID, how many image files it has, and what it says it is."""

    series_instance_uid: str
    num_files: int
    modality: str | None
    description: str
    series_number: int | None
    files: tuple[Path, ...]

    def __str__(self) -> str:
        what = " ".join(p for p in (self.modality or "", repr(self.description) if self.description else "") if p)
        number = f" #{self.series_number}" if self.series_number is not None else ""
        return f"{self.series_instance_uid}{number} ({self.num_files} files{', ' + what if what else ''})"


@dataclass(frozen=True)
class DicomSeriesInfo:
    """What the DICOM writers need about the source series, slices in the Volume's z order.

    positions_mm: (z, 3) ImagePositionPatient of each slice; orientation: (6,) ImageOrientationPatient
    (row then column direction cosines); pixel_spacing_mm: (row spacing = y, column spacing = x).
    datasets: each slice's header (pixel data removed), for highdicom's ``source_images``.
    """

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]
    positions_mm: np.ndarray
    orientation: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    modality: str | None
    series_description: str
    datasets: tuple[Any, ...]

    @property
    def num_slices(self) -> int:
        return len(self.sop_instance_uids)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InputError(
            "reading DICOM needs pydicom: pip install 'medsam-toolkit[volumes]'"
        ) from exc
    return pydicom


def looks_like_dicom(path: Path) -> bool:
    """True when the file has the DICOM preamble ('DICM' at byte 128) or a DICOM suffix."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path, *, what: str = "scan") -> Any | None:
    """The file's dataset, or None when it is not DICOM. ``what``: "scan" (the few tags that group series),
    "header" (every tag but the pixel data) or "full"."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    kwargs: dict[str, Any] = {
        "scan": {"stop_before_pixels": True, "specific_tags": list(_SCAN_TAGS)},
        "header": {"stop_before_pixels": True},
        "full": {},
    }[what]
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        if path.suffix.lower() not in DICOM_SUFFIXES:
            return None
        try:  # a .dcm file without the 128-byte preamble (older exports)
            ds = pydicom.dcmread(path, force=True, **kwargs)
        except Exception:
            return None
        return ds if "SOPInstanceUID" in ds else None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _iter_candidate_files(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(root) / name
            if looks_like_dicom(path):
                yield path


def find_dicom_series(folder: str | Path) -> list[DicomSeriesSummary]:
    """Every image series under ``folder`` (searched recursively), most files first.

    Files that are not DICOM, and DICOM objects that are not images (SEG, RT-STRUCT, SR, ...), are skipped.
    """
    folder = Path(folder)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in _iter_candidate_files(folder):
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        if str(getattr(ds, "Modality", "")).upper() in _NON_IMAGE_MODALITIES or "Rows" not in ds:
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    summaries = []
    for uid, members in groups.items():
        first = members[0][1]
        number = getattr(first, "SeriesNumber", None)
        summaries.append(
            DicomSeriesSummary(
                series_instance_uid=uid,
                num_files=len(members),
                modality=str(getattr(first, "Modality", "")) or None,
                description=str(getattr(first, "SeriesDescription", "")),
                series_number=int(number) if number not in (None, "") else None,
                files=tuple(p for p, _ in members),
            )
        )
    summaries.sort(key=lambda s: (-s.num_files, s.series_instance_uid))
    return summaries


def read_dicom(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read a DICOM series as a Volume (array z, y, x with slope/intercept applied).

    path: a folder (searched recursively; with several series the one with the most slices is taken,
        unless ``series_uid`` names one, and a warning says which and lists the others), or one file of a
        series (its whole series is read from the file's folder).
    The chosen series, the others, and a :class:`DicomSeriesInfo` go into ``volume.metadata``.
    """
    path = Path(path)
    if path.is_dir():
        series = find_dicom_series(path)
        if not series:
            raise InputError(
                f"folder {path} holds no DICOM image files (searched its sub-folders too); give the folder of "
                "a DICOM series, or a NIfTI/NRRD/MHA/npz file"
            )
        chosen, note = _choose_series(path, series, series_uid)
        others = [s for s in series if s.series_instance_uid != chosen.series_instance_uid]
        files = chosen.files
    elif path.is_file():
        header = _read_header(path)
        if header is None or "SeriesInstanceUID" not in header:
            raise InputError(f"{path} is not a readable DICOM file; check the file, or give the series folder")
        _refuse_multiframe(path, header)
        uid = str(header.SeriesInstanceUID)
        if series_uid is not None and series_uid != uid:
            raise InputError(
                f"{path} belongs to series {uid}, not to the asked series {series_uid}; give the folder to choose "
                "among several series"
            )
        siblings = [s for s in find_dicom_series_flat(path.parent) if s.series_instance_uid == uid]
        chosen = siblings[0] if siblings else DicomSeriesSummary(uid, 1, None, "", None, (path,))
        if chosen.num_files < 2:
            raise InputError(
                f"{path} is a single 2D DICOM image and its folder holds no other slice of its series; "
                "a volume needs the whole series: give the series folder (or use `medsam segment` for 2D images)"
            )
        note = f"read series {uid} ({chosen.num_files} files in {path.parent}) that {path.name} belongs to"
        others = []
        files = chosen.files
    else:
        raise InputError(f"{path} does not exist")

    volume = _read_series_files(files, source=path)
    volume.metadata.update(
        {
            "format": "dicom",
            "source_path": str(path),
            "series_instance_uid": chosen.series_instance_uid,
            "series_choice": note,
            "other_series": [str(s) for s in others],
        }
    )
    return volume


def find_dicom_series_flat(folder: Path) -> list[DicomSeriesSummary]:
    """Like :func:`find_dicom_series` for the files directly in ``folder`` (no sub-folders)."""
    groups: dict[str, list[Path]] = {}
    meta: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not looks_like_dicom(path):
            continue
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds or "Rows" not in ds:
            continue
        if str(getattr(ds, "Modality", "")).upper() in _NON_IMAGE_MODALITIES:
            continue
        uid = str(ds.SeriesInstanceUID)
        groups.setdefault(uid, []).append(path)
        meta.setdefault(uid, ds)
    return [
        DicomSeriesSummary(
            uid, len(files), str(getattr(meta[uid], "Modality", "")) or None,
            str(getattr(meta[uid], "SeriesDescription", "")), None, tuple(files),
        )
        for uid, files in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]


def _choose_series(
    folder: Path, series: list[DicomSeriesSummary], series_uid: str | None
) -> tuple[DicomSeriesSummary, str]:
    if series_uid is not None:
        for s in series:
            if s.series_instance_uid == series_uid:
                return s, f"read series {series_uid} as asked"
        listing = "; ".join(str(s) for s in series)
        raise InputError(f"folder {folder} has no series {series_uid}; it holds: {listing}")
    chosen = series[0]
    if len(series) == 1:
        return chosen, f"read the only series in {folder}: {chosen}"
    listing = "; ".join(str(s) for s in series[1:])
    note = (
        f"folder {folder} holds {len(series)} series; read the one with the most slices: {chosen}. "
        f"Others: {listing}. Pass series_uid (CLI: --series-uid) to choose another"
    )
    log.warning(note)
    warnings.warn(note, UserWarning, stacklevel=3)
    return chosen, note


def _refuse_multiframe(path: Path, ds: Any) -> None:
    frames = getattr(ds, "NumberOfFrames", None)
    if frames not in (None, "") and int(frames) > 1:
        raise InputError(
            f"{path} is a multi-frame DICOM ({int(frames)} frames in one file), which is not read yet; "
            "convert it to NIfTI (e.g. `dcm2niix`) and give the .nii.gz"
        )


def _float_list(ds: Any, keyword: str, count: int, path: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None:
        raise InputError(
            f"{path} has no {keyword}; without it the slices cannot be placed in 3D. Give a series exported "
            "with its geometry, or convert it to NIfTI first"
        )
    array = np.array([float(v) for v in value], dtype=np.float64)
    if array.size != count:
        raise InputError(f"{path}: {keyword} has {array.size} values, expected {count}")
    return array


def _read_series_files(files: Iterable[Path], *, source: Path) -> Volume:
    """Read, check, sort and stack the slices of one series."""
    headers: list[tuple[Path, Any]] = []
    for f in files:
        ds = _read_header(f, what="header")
        if ds is None:
            raise InputError(f"{f} cannot be read as DICOM although it looked like one; it may be corrupt")
        _refuse_multiframe(f, ds)
        headers.append((f, ds))
    if len(headers) < 2:
        raise InputError(
            f"{source}: the series has a single slice, which is a 2D image, not a volume "
            "(use `medsam segment` for 2D images)"
        )

    first_path, first = headers[0]
    size = (int(first.Rows), int(first.Columns))
    orientation = _float_list(first, "ImageOrientationPatient", 6, first_path)
    spacing_rc = _float_list(first, "PixelSpacing", 2, first_path)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 0.5:
        raise InputError(f"{first_path}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors")
    normal /= np.linalg.norm(normal)

    positions, projections = [], []
    for f, ds in headers:
        samples = int(getattr(ds, "SamplesPerPixel", 1))
        if samples != 1:
            raise InputError(f"{f} has {samples} samples per pixel (colour); volumes must be grayscale")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise InputError(
                f"series {first.SeriesInstanceUID} mixes image sizes: {first_path.name} is "
                f"{size[0]}x{size[1]} but {f.name} is {int(ds.Rows)}x{int(ds.Columns)} (rows x columns). "
                "It is not one volume: export each part as its own series, or pass the folder of one part"
            )
        iop = _float_list(ds, "ImageOrientationPatient", 6, f)
        if np.max(np.abs(iop - orientation)) > _ORIENTATION_TOLERANCE:
            raise InputError(
                f"series {first.SeriesInstanceUID} mixes slice orientations ({first_path.name}: "
                f"{np.round(orientation, 4).tolist()}, {f.name}: {np.round(iop, 4).tolist()}), e.g. a localizer "
                "stored with the slices. It is not one volume: remove the odd files or export each stack on its own"
            )
        ps = _float_list(ds, "PixelSpacing", 2, f)
        if np.max(np.abs(ps - spacing_rc)) > _SPACING_TOLERANCE_MM:
            raise InputError(
                f"series {first.SeriesInstanceUID} mixes pixel spacings ({first_path.name}: {spacing_rc.tolist()}, "
                f"{f.name}: {ps.tolist()}); it is not one volume"
            )
        ipp = _float_list(ds, "ImagePositionPatient", 3, f)
        positions.append(ipp)
        projections.append(float(ipp @ normal))

    order = np.argsort(np.asarray(projections), kind="stable")
    proj = np.asarray(projections)[order]
    steps = np.diff(proj)
    if np.any(steps < _SPACING_TOLERANCE_MM):
        dup = int(np.argmax(steps < _SPACING_TOLERANCE_MM))
        a, b = headers[order[dup]][0].name, headers[order[dup + 1]][0].name
        raise InputError(
            f"series {first.SeriesInstanceUID} has several images at the same slice position ({a} and {b}, "
            f"{len(set(np.round(proj, 3)))} positions for {len(proj)} images): it mixes echoes, phases or "
            "time points. Export one of them as its own series (or convert with dcm2niix, which splits them)"
        )
    z_spacing = float((proj[-1] - proj[0]) / (len(proj) - 1))
    nonuniform = bool(np.max(np.abs(steps - z_spacing)) > max(0.01 * z_spacing, _SPACING_TOLERANCE_MM))
    if nonuniform:
        msg = (
            f"series {first.SeriesInstanceUID}: slice distances vary from {steps.min():.4g} to {steps.max():.4g} mm "
            f"(missing slices?); the volume uses their mean {z_spacing:.4g} mm, DICOM outputs keep each slice's "
            "own position"
        )
        log.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)

    sorted_headers = [headers[i] for i in order]
    array = _stack_pixels(sorted_headers)

    direction = np.column_stack([row_dir, col_dir, normal])
    modality = str(getattr(first, "Modality", "")).upper() or None
    info = DicomSeriesInfo(
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(getattr(first, "StudyInstanceUID", "")),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        sop_class_uid=str(getattr(first, "SOPClassUID", "")),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for _, ds in sorted_headers),
        files=tuple(Path(f) for f, _ in sorted_headers),
        positions_mm=np.asarray([positions[i] for i in order]),
        orientation=orientation,
        pixel_spacing_mm=(float(spacing_rc[0]), float(spacing_rc[1])),
        modality=modality,
        series_description=str(getattr(first, "SeriesDescription", "")),
        datasets=tuple(ds for _, ds in sorted_headers),
    )
    return Volume(
        array=array,
        spacing_mm=(z_spacing, float(spacing_rc[0]), float(spacing_rc[1])),
        origin_mm=tuple(positions[order[0]]),
        direction=direction,
        modality=modality,
        metadata={"dicom": info, "nonuniform_slice_spacing": nonuniform},
    )


def _rescale(ds: Any) -> tuple[float, float]:
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _output_dtype(headers: list[tuple[Path, Any]]) -> np.dtype:
    """int16 when every slice has slope 1 and an integer intercept and the values fit, else int32/float32."""
    lows, highs = [], []
    for _, ds in headers:
        slope, intercept = _rescale(ds)
        if slope != 1.0 or intercept != round(intercept):
            return np.dtype(np.float32)
        bits = int(getattr(ds, "BitsStored", 16))
        signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        lows.append(low + intercept)
        highs.append(high + intercept)
    info16 = np.iinfo(np.int16)
    return np.dtype(np.int16) if min(lows) >= info16.min and max(highs) <= info16.max else np.dtype(np.int32)


def _stack_pixels(headers: list[tuple[Path, Any]]) -> np.ndarray:
    dtype = _output_dtype(headers)
    rows, cols = int(headers[0][1].Rows), int(headers[0][1].Columns)
    out = np.empty((len(headers), rows, cols), dtype=dtype)
    for k, (f, _header) in enumerate(headers):
        # one file's pixels at a time: the headers kept for the writers never hold pixel data
        ds = _read_header(f, what="full")
        if ds is None:
            raise InputError(f"{f} could not be read again; was it changed or removed while reading?")
        try:
            raw = ds.pixel_array
        except Exception as exc:  # missing decoder for a compressed transfer syntax, truncated pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", str(syntax))
            raise InputError(
                f"{f}: the pixel data cannot be decoded ({exc}). Transfer syntax: {name}. Compressed DICOM "
                "needs a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg), or the "
                "file is truncated"
            ) from exc
        slope, intercept = _rescale(ds)
        if raw.shape != (rows, cols):
            raise InputError(f"{f}: pixel data shape {raw.shape} does not match Rows x Columns {rows}x{cols}")
        if dtype == np.float32:
            out[k] = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        else:
            out[k] = raw.astype(np.int32) + int(intercept)
    return out
