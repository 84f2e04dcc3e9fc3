"""RT-STRUCT out (our own pydicom code): closed planar contours per slice per label, in patient mm.

Contours follow each slice's labelled pixels (OpenCV ``findContours`` through the centres of the boundary
pixels, holes included as inner contours) and are placed with that slice's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing: pixel (column c, row r) lies at
``IPP + c * PixelSpacing[1] * row_direction + r * PixelSpacing[0] * column_direction``.
Each contour references its slice's SOPInstanceUID (ContourImageSequence); the structure set references
the series, the study and the FrameOfReferenceUID. Inner contours are holes under the usual even-odd rule,
which is how ``read_rtstruct_labels`` rasterises them back.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medsam.errors import InputError, OutputError
from medsam.io.atomic import atomic_path, check_writable
from medsam.io.dicom_seg import dicom_info
from medsam.io.labels import as_label_array, segment_labels
from medsam.types import Volume

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# RT Referenced Study Sequence items reference the study with the Detached Study Management SOP Class.
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_COPIED_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "SpecificCharacterSet",
)


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D boolean mask as (N, 2) float arrays of (column, row) pixel coordinates.

    Outer boundaries and hole boundaries both come out (the even-odd rule tells them apart). A contour of
    one or two pixels becomes a small rectangle around their centres, so every contour has 3+ points.
    """
    import cv2

    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    contours = []
    for c in found:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3:
            lo, hi = pts.min(axis=0) - 0.25, pts.max(axis=0) + 0.25  # holds those pixel centres only
            pts = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
        contours.append(pts)
    return contours


def _pixel_to_patient(pts_cr: np.ndarray, ipp: np.ndarray, orientation: np.ndarray, spacing_rc: tuple[float, float]) -> np.ndarray:
    row_dir, col_dir = orientation[:3], orientation[3:]
    return ipp[None, :] + pts_cr[:, :1] * spacing_rc[1] * row_dir[None, :] + pts_cr[:, 1:2] * spacing_rc[0] * col_dir[None, :]


def _patient_to_pixel(xyz: np.ndarray, ipp: np.ndarray, orientation: np.ndarray, spacing_rc: tuple[float, float]) -> np.ndarray:
    row_dir, col_dir = orientation[:3], orientation[3:]
    rel = xyz - ipp[None, :]
    return np.column_stack([rel @ row_dir / spacing_rc[1], rel @ col_dir / spacing_rc[0]])


def _ds(**items: Any) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in items.items():
        setattr(ds, key, value)
    return ds


def _image_ref(info: Any, k: int) -> Any:
    """A reference to slice ``k``: its SOP instance, and its frame when the source is multi-frame."""
    item = _ds(ReferencedSOPClassUID=info.sop_class_uid, ReferencedSOPInstanceUID=info.sop_instance_uids[k])
    if info.frame_numbers is not None:
        item.ReferencedFrameNumber = info.frame_numbers[k]
    return item


def write_rtstruct(
    labels: np.ndarray,
    reference: Volume,
    path: str | Path,
    *,
    label_names: Mapping[int, str] | Sequence[str] | None = None,
    structure_set_label: str = "MedSAM",
    overwrite: bool = False,
) -> Path:
    """Write an RT Structure Set of ``labels`` (z, y, x) on a DICOM ``reference`` (atomic).

    One ROI per non-zero label (ROINumber = the label value, ROIName from ``label_names`` or
    "label <value>", ROIDisplayColor the toolkit's colour); one CLOSED_PLANAR contour per connected
    outline per slice, referencing that slice's SOPInstanceUID.
    """
    check_writable(path, overwrite=overwrite)
    info = dicom_info(reference, what="RT-STRUCT")
    data = as_label_array(labels, reference.shape, what=f"labels for {path}")
    segments = segment_labels(data, label_names)
    if not segments:
        raise OutputError(f"output {path}: the label map is empty; an RT-STRUCT needs at least one labelled voxel")
    try:
        from pydicom.dataset import FileMetaDataset
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    except ImportError as exc:  # pragma: no cover
        raise OutputError("writing RT-STRUCT needs pydicom: pip install 'medsam-toolkit[volumes]'") from exc
    from medsam import __version__

    first = info.datasets[0]
    now = datetime.datetime.now()
    sop_uid = generate_uid()
    ds = _ds()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in _COPIED_TAGS:
        if tag in first:
            setattr(ds, tag, getattr(first, tag))
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if tag not in ds:
            setattr(ds, tag, "")  # type 2 attributes: present, may be empty
    ds.StudyInstanceUID = info.study_instance_uid
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = str(getattr(first, "PositionReferenceIndicator", "") or "")
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(getattr(first, "SeriesNumber", 0) or 0) + 2000
    ds.SeriesDescription = "MedSAM structures"
    ds.InstanceNumber = 1
    ds.Manufacturer = "medsam-toolkit"
    ds.ManufacturerModelName = "medsam"
    ds.SoftwareVersions = __version__
    ds.InstanceCreationDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.StructureSetLabel = structure_set_label[:16]
    ds.OperatorsName = ""

    contour_images = DicomSequence([_image_ref(info, k) for k in range(info.num_slices)])
    series_item = _ds(SeriesInstanceUID=info.series_instance_uid, ContourImageSequence=contour_images)
    study_item = _ds(
        ReferencedSOPClassUID=_STUDY_COMPONENT_SOP_CLASS,
        ReferencedSOPInstanceUID=info.study_instance_uid,
        RTReferencedSeriesSequence=DicomSequence([series_item]),
    )
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [_ds(FrameOfReferenceUID=info.frame_of_reference_uid, RTReferencedStudySequence=DicomSequence([study_item]))]
    )

    roi_items, contour_items, observation_items = [], [], []
    for n, seg in enumerate(segments, start=1):
        roi_items.append(
            _ds(
                ROINumber=seg.value,
                ReferencedFrameOfReferenceUID=info.frame_of_reference_uid,
                ROIName=seg.name[:64],
                ROIGenerationAlgorithm="SEMIAUTOMATIC",
            )
        )
        contours = []
        for k in range(data.shape[0]):
            mask = data[k] == seg.value
            if not mask.any():
                continue
            for pts in slice_contours(mask):
                xyz = _pixel_to_patient(pts, info.positions_mm[k], info.orientation, info.pixel_spacing_mm)
                contours.append(
                    _ds(
                        ContourImageSequence=DicomSequence([_image_ref(info, k)]),
                        ContourGeometricType="CLOSED_PLANAR",
                        NumberOfContourPoints=len(xyz),
                        ContourData=[f"{v:.4f}" for v in xyz.reshape(-1)],
                    )
                )
        contour_items.append(
            _ds(
                ROIDisplayColor=list(seg.colour),
                ReferencedROINumber=seg.value,
                ContourSequence=DicomSequence(contours),
            )
        )
        observation_items.append(
            _ds(ObservationNumber=n, ReferencedROINumber=seg.value, RTROIInterpretedType="", ROIInterpreter="")
        )
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)
    if "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 100"

    with atomic_path(path, overwrite=overwrite) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def read_rtstruct_labels(path: str | Path, reference: Volume) -> tuple[np.ndarray, dict[int, str]]:
    """Rasterise an RT-STRUCT's contours onto a DICOM ``reference`` volume's grid.

    Returns the (z, y, x) label map (value = ROINumber; later ROIs win overlaps) and {ROINumber: ROIName}.
    Contours on one slice combine by the even-odd rule (an inner contour is a hole); pixels on a contour line
    count as inside (this module's contours pass through boundary pixel centres). Contours that
    reference a slice outside the reference series are an InputError.
    """
    import cv2
    import pydicom

    info = dicom_info(reference, what="reading an RT-STRUCT")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"{path} is not a readable DICOM file ({exc})") from exc
    if str(getattr(ds, "Modality", "")) != "RTSTRUCT":
        raise InputError(f"{path} is not an RT-STRUCT (Modality {getattr(ds, 'Modality', None)!r})")
    frames = info.frame_numbers or (None,) * info.num_slices
    slice_of = {(uid, frame): k for k, (uid, frame) in enumerate(zip(info.sop_instance_uids, frames))}
    names = {int(item.ROINumber): str(item.ROIName) for item in getattr(ds, "StructureSetROISequence", [])}
    rows, cols = reference.shape[1:]
    top = max(names, default=0)
    out = np.zeros(reference.shape, dtype=np.uint8 if top < 256 else np.uint16)
    for roi in getattr(ds, "ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        parity = np.zeros(reference.shape, dtype=np.uint8)
        edges = np.zeros(reference.shape, dtype=np.uint8)
        for contour in getattr(roi, "ContourSequence", []):
            refs = getattr(contour, "ContourImageSequence", [])
            if not refs:
                raise InputError(f"{path}: a contour of ROI {number} references no image")
            uid = str(refs[0].ReferencedSOPInstanceUID)
            frame = getattr(refs[0], "ReferencedFrameNumber", None) if info.frame_numbers is not None else None
            key = (uid, int(frame) if frame is not None else None)
            if key not in slice_of:
                where = f"image {uid}" + (f" frame {frame}" if frame is not None else "")
                raise InputError(f"{path}: ROI {number} references {where}, which is not in the reference series")
            k = slice_of[key]
            xyz = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            cr = _patient_to_pixel(xyz, info.positions_mm[k], info.orientation, info.pixel_spacing_mm)
            polygon = [np.round(cr).astype(np.int32).reshape(-1, 1, 2)]
            filled = np.zeros((rows, cols), dtype=np.uint8)
            cv2.fillPoly(filled, polygon, 1)
            parity[k] ^= filled
            # contours run through the centres of the object's boundary pixels, holes' too: keep those pixels
            cv2.polylines(edges[k], polygon, isClosed=True, color=1)
        out[(parity | edges).astype(bool)] = number
    return out, names
