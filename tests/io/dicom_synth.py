"""Synthetic DICOM CT series for the volume I/O tests, written with pydicom (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, then y, then z."""
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SynthSeries:
    folder: Path
    hu: np.ndarray  # (z, y, x) the HU values the series encodes, in slice order along the normal
    direction: np.ndarray  # columns: row dir, column dir, normal
    origin: np.ndarray
    spacing_zyx: tuple[float, float, float]
    series_uid: str
    frame_uid: str
    study_uid: str
    sop_uids: list[str]  # in slice order


def hu_pattern(shape: tuple[int, int, int]) -> np.ndarray:
    """HU values that identify each voxel's (z, y, x): -1000 air border, a body whose value encodes z."""
    z, y, x = np.indices(shape)
    hu = (-1000 + 0 * z).astype(np.float64)
    body = (y >= 2) & (y < shape[1] - 2) & (x >= 2) & (x < shape[2] - 2)
    hu[body] = (z * 100 + y * 3 + x - 200)[body]
    return hu


def write_ct_series(
    folder: Path,
    *,
    num_slices: int = 6,
    rows: int = 32,
    cols: int = 32,
    pixel_spacing_rc: tuple[float, float] = (0.8, 0.7),
    slice_step_mm: float = 3.0,
    angles_deg: tuple[float, float, float] = (20.0, -15.0, 30.0),
    origin: tuple[float, float, float] = (-40.0, 25.0, 110.0),
    slope: float = 2.0,
    intercept: float = -1000.0,
    slice_thickness: float = 5.0,
    bits_stored: int = 16,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    series_number: int = 3,
    description: str = "synthetic CT",
    shuffle_seed: int | None = 7,
    name_prefix: str = "",
    direction: np.ndarray | None = None,
) -> SynthSeries:
    """Write a CT series (one file per slice, shuffled file names and InstanceNumbers) and describe it.

    SliceThickness deliberately differs from the slice step, so a reader that trusts it gets z wrong.
    ``direction`` (columns: row direction, column direction, slice normal) replaces ``angles_deg``.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    rot = rotation(*angles_deg) if direction is None else np.asarray(direction, dtype=np.float64)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    hu = hu_pattern((num_slices, rows, cols))
    raw = np.round((hu - intercept) / slope).astype(np.uint16)
    hu = raw.astype(np.float64) * slope + intercept

    order = list(range(num_slices))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    sop_uids = [generate_uid() for _ in range(num_slices)]
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uids[k]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "SYN001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.Manufacturer = "medsam-tests"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = file_index + 1  # deliberately not the slice order
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([row_dir, col_dir])]
        position = np.asarray(origin) + k * slice_step_mm * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.PixelSpacing = [f"{pixel_spacing_rc[0]:g}", f"{pixel_spacing_rc[1]:g}"]
        ds.SliceThickness = f"{slice_thickness:g}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "HU"
        ds.PixelData = raw[k].tobytes()
        ds.save_as(folder / f"{name_prefix}img{file_index:03d}.dcm", enforce_file_format=True)
    _ = pydicom  # imported for its side effects on dataset handling only
    direction = np.column_stack([row_dir, col_dir, normal])
    return SynthSeries(
        folder, hu, direction, np.asarray(origin, float), (slice_step_mm, *pixel_spacing_rc),
        series_uid, frame_uid, study_uid, sop_uids,
    )


def write_enhanced_ct(
    path: Path,
    *,
    num_frames: int = 5,
    rows: int = 24,
    cols: int = 20,
    pixel_spacing_rc: tuple[float, float] = (0.9, 0.6),
    slice_step_mm: float = 2.5,
    angles_deg: tuple[float, float, float] = (0.0, 30.0, 10.0),
    origin: tuple[float, float, float] = (5.0, -20.0, 60.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    frame_order_seed: int = 3,
) -> tuple[SynthSeries, list[int]]:
    """Write an Enhanced CT multi-frame file whose frames are stored out of spatial order.

    Returns the series description (``hu`` in spatial order) and, for each spatial slice, its 1-based frame.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    def item(**kw):
        ds = Dataset()
        for k, v in kw.items():
            setattr(ds, k, v)
        return ds

    path.parent.mkdir(parents=True, exist_ok=True)
    rot = rotation(*angles_deg)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    hu = hu_pattern((num_frames, rows, cols))
    raw = np.round((hu - intercept) / slope).astype(np.uint16)
    hu = raw.astype(np.float64) * slope + intercept
    order = list(range(num_frames))
    np.random.default_rng(frame_order_seed).shuffle(order)  # order[f] = spatial slice stored as frame f+1
    frame_of_slice = [0] * num_frames
    for f, k in enumerate(order):
        frame_of_slice[k] = f + 1

    sop_uid, series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Enhanced", "SYN002", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "2", "", ""
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "medsam-tests", 5, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PositionReferenceIndicator = ""
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, num_frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SharedFunctionalGroupsSequence = Sequence([
        item(
            PixelMeasuresSequence=Sequence([item(
                PixelSpacing=[f"{pixel_spacing_rc[0]:g}", f"{pixel_spacing_rc[1]:g}"], SliceThickness="3"
            )]),
            PlaneOrientationSequence=Sequence([item(
                ImageOrientationPatient=[f"{v:.6f}" for v in np.concatenate([row_dir, col_dir])]
            )]),
            PixelValueTransformationSequence=Sequence([item(
                RescaleSlope=f"{slope:g}", RescaleIntercept=f"{intercept:g}", RescaleType="HU"
            )]),
        )
    ])
    per_frame = []
    for f, k in enumerate(order):
        position = np.asarray(origin) + k * slice_step_mm * normal
        per_frame.append(item(
            PlanePositionSequence=Sequence([item(ImagePositionPatient=[f"{v:.6f}" for v in position])]),
            FrameContentSequence=Sequence([item(DimensionIndexValues=[f + 1])]),
        ))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack([raw[k] for k in order]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    series = SynthSeries(
        path.parent, hu, np.column_stack([row_dir, col_dir, normal]), np.asarray(origin, float),
        (slice_step_mm, *pixel_spacing_rc), series_uid, frame_uid, study_uid, [sop_uid] * num_frames,
    )
    return series, frame_of_slice
