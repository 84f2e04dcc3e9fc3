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

An enhanced multi-frame file (one file holding every slice) is read too: its frames are placed by their
functional groups (PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence,
PixelValueTransformationSequence), and ``DicomSeriesInfo.frame_numbers`` maps slices back to frames.

pydicom is imported lazily.
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
    """One series found in a folder: its UID, its image files and slices (frames), and what it says it is."""

    series_instance_uid: str
    num_files: int
    modality: str | None
    description: str
    series_number: int | None
    files: tuple[Path, ...]
    num_slices: int = 0

    def __str__(self) -> str:
        what = " ".join(p for p in (self.modality or "", repr(self.description) if self.description else "") if p)
        number = f" #{self.series_number}" if self.series_number is not None else ""
        files = f"{self.num_files} file{'s' if self.num_files != 1 else ''}"
        count = f"{self.num_slices} slices in {files}" if self.num_slices != self.num_files else files
        return f"{self.series_instance_uid}{number} ({count}{', ' + what if what else ''})"


@dataclass(frozen=True)
class DicomSeriesInfo:
    """What the DICOM writers need about the source series, slices in the Volume's z order.

    positions_mm: (z, 3) ImagePositionPatient of each slice; orientation: (6,) ImageOrientationPatient
    (row then column direction cosines); pixel_spacing_mm: (row spacing = y, column spacing = x).
    datasets: the source headers (pixel data removed) for highdicom's ``source_images``: one per slice, or
        the single header of a multi-frame source.
    frame_numbers: for a multi-frame source, each slice's 1-based frame number in the file; else None.
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
    frame_numbers: tuple[int, ...] | None = None

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
                num_slices=sum(_num_frames(ds) for _, ds in members),
            )
        )
    summaries.sort(key=lambda s: (-s.num_slices, s.series_instance_uid))
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
        kind = str(getattr(header, "Modality", "")).upper()
        if kind in _NON_IMAGE_MODALITIES or "Rows" not in header:
            raise InputError(
                f"{path} is a DICOM {kind or 'non-image'} object, not an image; give the image series it belongs to"
            )
        uid = str(header.SeriesInstanceUID)
        if series_uid is not None and series_uid != uid:
            raise InputError(
                f"{path} belongs to series {uid}, not to the asked series {series_uid}; give the folder to choose "
                "among several series"
            )
        if _num_frames(header) > 1:  # an enhanced multi-frame image holds the whole volume
            siblings = [DicomSeriesSummary(uid, 1, None, "", None, (path,), _num_frames(header))]
        else:
            siblings = [s for s in find_dicom_series_flat(path.parent) if s.series_instance_uid == uid]
        chosen = siblings[0] if siblings else DicomSeriesSummary(uid, 1, None, "", None, (path,), 1)
        if chosen.num_slices < 2:
            raise InputError(
                f"{path} is a single 2D DICOM image and its folder holds no other slice of its series; "
                "a volume needs the whole series: give the series folder (or use `medsam segment` for 2D images)"
            )
        note = (
            f"read the multi-frame image {path} ({chosen.num_slices} frames)"
            if chosen.num_files == 1
            else f"read series {uid} ({chosen.num_files} files in {path.parent}) that {path.name} belongs to"
        )
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
    frames: dict[str, int] = {}
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
        frames[uid] = frames.get(uid, 0) + _num_frames(ds)
    return [
        DicomSeriesSummary(
            uid, len(files), str(getattr(meta[uid], "Modality", "")) or None,
            str(getattr(meta[uid], "SeriesDescription", "")), None, tuple(files), frames[uid],
        )
        for uid, files in sorted(groups.items(), key=lambda kv: -frames[kv[0]])
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


def _num_frames(ds: Any) -> int:
    frames = getattr(ds, "NumberOfFrames", None)
    return int(frames) if frames not in (None, "") else 1


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


@dataclass
class _Slice:
    """One 2D image of the series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    header: Any
    frame: int | None  # 1-based frame number in a multi-frame file, None for a single-frame file
    orientation: np.ndarray
    position: np.ndarray
    spacing_rc: np.ndarray
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame}"


def _rescale(ds: Any) -> tuple[float, float]:
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _single_frame_slice(path: Path, ds: Any) -> _Slice:
    slope, intercept = _rescale(ds)
    return _Slice(
        path, ds, None,
        _float_list(ds, "ImageOrientationPatient", 6, path),
        _float_list(ds, "ImagePositionPatient", 3, path),
        _float_list(ds, "PixelSpacing", 2, path),
        slope, intercept,
    )


def _functional_group(ds: Any, index: int, sequence: str) -> Any | None:
    """Item of a functional group macro for frame ``index`` (0-based): per-frame first, then shared."""
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    candidates = []
    if per_frame and index < len(per_frame):
        candidates.append(per_frame[index])
    if shared:
        candidates.append(shared[0])
    for item in candidates:
        seq = getattr(item, sequence, None)
        if seq:
            return seq[0]
    return None


def _multi_frame_slices(path: Path, ds: Any) -> list[_Slice]:
    """The frames of an enhanced multi-frame image, placed by their functional groups."""
    slices = []
    for i in range(_num_frames(ds)):
        plane = _functional_group(ds, i, "PlaneOrientationSequence")
        position = _functional_group(ds, i, "PlanePositionSequence")
        measures = _functional_group(ds, i, "PixelMeasuresSequence")
        if plane is None or position is None or measures is None:
            raise InputError(
                f"{path} is a multi-frame DICOM without per-frame plane positions/orientations; it cannot be "
                "placed in 3D. Convert it to NIfTI (e.g. `dcm2niix`) and give the .nii.gz"
            )
        transform = _functional_group(ds, i, "PixelValueTransformationSequence")
        slope, intercept = _rescale(transform if transform is not None else ds)
        slices.append(
            _Slice(
                path, ds, i + 1,
                _float_list(plane, "ImageOrientationPatient", 6, path),
                _float_list(position, "ImagePositionPatient", 3, path),
                _float_list(measures, "PixelSpacing", 2, path),
                slope, intercept,
            )
        )
    return slices


def _read_series_files(files: Iterable[Path], *, source: Path) -> Volume:
    """Read, check, sort and stack the slices of one series (single-frame files or one multi-frame file)."""
    slices: list[_Slice] = []
    files = list(files)
    for f in files:
        ds = _read_header(f, what="header")
        if ds is None:
            raise InputError(f"{f} cannot be read as DICOM although it looked like one; it may be corrupt")
        if _num_frames(ds) > 1:
            if len(files) > 1:
                raise InputError(
                    f"series {ds.SeriesInstanceUID} mixes a multi-frame file ({f.name}) with other files; "
                    "give the multi-frame file on its own"
                )
            slices.extend(_multi_frame_slices(f, ds))
        else:
            slices.append(_single_frame_slice(f, ds))
    if len(slices) < 2:
        raise InputError(
            f"{source}: the series has a single slice, which is a 2D image, not a volume "
            "(use `medsam segment` for 2D images)"
        )

    first = slices[0]
    uid = first.header.SeriesInstanceUID
    size = (int(first.header.Rows), int(first.header.Columns))
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 0.5:
        raise InputError(
            f"{first.path}: ImageOrientationPatient {first.orientation.tolist()} is not two orthogonal unit vectors"
        )
    normal /= np.linalg.norm(normal)

    for s in slices:
        samples = int(getattr(s.header, "SamplesPerPixel", 1))
        if samples != 1:
            raise InputError(f"{s.path} has {samples} samples per pixel (colour); volumes must be grayscale")
        rc = (int(s.header.Rows), int(s.header.Columns))
        if rc != size:
            raise InputError(
                f"series {uid} mixes image sizes: {first.name} is {size[0]}x{size[1]} but {s.name} is "
                f"{rc[0]}x{rc[1]} (rows x columns). It is not one volume: export each part as its own series, "
                "or pass the folder of one part"
            )
        if np.max(np.abs(s.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise InputError(
                f"series {uid} mixes slice orientations ({first.name}: {np.round(first.orientation, 4).tolist()}, "
                f"{s.name}: {np.round(s.orientation, 4).tolist()}), e.g. a localizer stored with the slices. "
                "It is not one volume: remove the odd files or export each stack on its own"
            )
        if np.max(np.abs(s.spacing_rc - first.spacing_rc)) > _SPACING_TOLERANCE_MM:
            raise InputError(
                f"series {uid} mixes pixel spacings ({first.name}: {first.spacing_rc.tolist()}, "
                f"{s.name}: {s.spacing_rc.tolist()}); it is not one volume"
            )

    projections = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(projections, kind="stable")
    proj = projections[order]
    steps = np.diff(proj)
    if np.any(steps < _SPACING_TOLERANCE_MM):
        dup = int(np.argmax(steps < _SPACING_TOLERANCE_MM))
        a, b = slices[order[dup]].name, slices[order[dup + 1]].name
        raise InputError(
            f"series {uid} has several images at the same slice position ({a} and {b}, "
            f"{len(set(np.round(proj, 3)))} positions for {len(proj)} images): it mixes echoes, phases or "
            "time points. Export one of them as its own series (or convert with dcm2niix, which splits them)"
        )
    z_spacing = float((proj[-1] - proj[0]) / (len(proj) - 1))
    nonuniform = bool(np.max(np.abs(steps - z_spacing)) > max(0.01 * z_spacing, _SPACING_TOLERANCE_MM))
    if nonuniform:
        msg = (
            f"series {uid}: slice distances vary from {steps.min():.4g} to {steps.max():.4g} mm "
            f"(missing slices?); the volume uses their mean {z_spacing:.4g} mm, DICOM outputs keep each slice's "
            "own position"
        )
        log.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)

    ordered = [slices[i] for i in order]
    array = _stack_pixels(ordered, size)
    multi = first.frame is not None
    header = first.header
    modality = str(getattr(header, "Modality", "")).upper() or None
    info = DicomSeriesInfo(
        series_instance_uid=str(uid),
        study_instance_uid=str(getattr(header, "StudyInstanceUID", "")),
        frame_of_reference_uid=str(getattr(header, "FrameOfReferenceUID", "")),
        sop_class_uid=str(getattr(header, "SOPClassUID", "")),
        sop_instance_uids=tuple(str(s.header.SOPInstanceUID) for s in ordered),
        files=tuple(s.path for s in ordered),
        positions_mm=np.asarray([s.position for s in ordered]),
        orientation=first.orientation,
        pixel_spacing_mm=(float(first.spacing_rc[0]), float(first.spacing_rc[1])),
        modality=modality,
        series_description=str(getattr(header, "SeriesDescription", "")),
        datasets=(header,) if multi else tuple(s.header for s in ordered),
        frame_numbers=tuple(int(s.frame) for s in ordered) if multi else None,  # type: ignore[arg-type]
    )
    return Volume(
        array=array,
        spacing_mm=(z_spacing, float(first.spacing_rc[0]), float(first.spacing_rc[1])),
        origin_mm=tuple(ordered[0].position),
        direction=np.column_stack([row_dir, col_dir, normal]),
        modality=modality,
        metadata={"dicom": info, "nonuniform_slice_spacing": nonuniform},
    )


def _output_dtype(slices: list[_Slice]) -> np.dtype:
    """int16 when every slice has slope 1 and an integer intercept and the values fit, else int32/float32."""
    lows, highs = [], []
    for s in slices:
        if s.slope != 1.0 or s.intercept != round(s.intercept):
            return np.dtype(np.float32)
        bits = int(getattr(s.header, "BitsStored", 16))
        signed = int(getattr(s.header, "PixelRepresentation", 0)) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        lows.append(low + s.intercept)
        highs.append(high + s.intercept)
    info16 = np.iinfo(np.int16)
    return np.dtype(np.int16) if min(lows) >= info16.min and max(highs) <= info16.max else np.dtype(np.int32)


def _decode(path: Path) -> np.ndarray:
    """The stored pixel values of one file ((rows, cols), or (frames, rows, cols))."""
    ds = _read_header(path, what="full")
    if ds is None:
        raise InputError(f"{path} could not be read again; was it changed or removed while reading?")
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder for a compressed transfer syntax, truncated pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise InputError(
            f"{path}: the pixel data cannot be decoded ({exc}). Transfer syntax: {name}. Compressed DICOM "
            "needs a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg), or the "
            "file is truncated"
        ) from exc


def _stack_pixels(slices: list[_Slice], size: tuple[int, int]) -> np.ndarray:
    """Decode one file at a time (the headers kept for the writers never hold pixel data) and rescale."""
    dtype = _output_dtype(slices)
    out = np.empty((len(slices), *size), dtype=dtype)
    frames = _decode(slices[0].path) if slices[0].frame is not None else None
    for k, s in enumerate(slices):
        raw = frames[s.frame - 1] if frames is not None and s.frame is not None else _decode(s.path)
        if raw.shape != size:
            raise InputError(f"{s.name}: pixel data shape {raw.shape} does not match Rows x Columns {size}")
        if dtype == np.float32:
            out[k] = raw.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        else:
            out[k] = raw.astype(np.int32) + int(s.intercept)
    return out
