"""DICOM-SEG out (highdicom): one segment per label, referencing the source DICOM series slice by slice."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medsam.errors import OutputError
from medsam.io.atomic import atomic_path, check_writable
from medsam.io.labels import as_label_array, segment_labels
from medsam.types import Volume


def dicom_info(reference: Volume, *, what: str) -> "DicomSeriesInfo":  # noqa: F821 - lazy import below
    """The source series description kept by the DICOM reader; OutputError when the volume is not DICOM."""
    from medsam.io.dicom import DicomSeriesInfo

    info = reference.metadata.get("dicom")
    if not isinstance(info, DicomSeriesInfo):
        fmt = reference.metadata.get("format", "a non-DICOM file")
        raise OutputError(
            f"{what} needs a DICOM source series to reference, but the volume came from {fmt}; "
            "write a NIfTI/NRRD label volume instead (.nii.gz)"
        )
    if info.num_slices != reference.shape[0]:
        raise OutputError(f"{what}: the volume has {reference.shape[0]} slices but its DICOM series {info.num_slices}")
    return info


def write_dicom_seg(
    labels: np.ndarray,
    reference: Volume,
    path: str | Path,
    *,
    label_names: Mapping[int, str] | Sequence[str] | None = None,
    series_description: str = "MedSAM segmentation",
    overwrite: bool = False,
) -> Path:
    """Write a binary DICOM Segmentation of ``labels`` (z, y, x) on a DICOM ``reference`` (atomic).

    Each non-zero label value becomes one segment, numbered 1..K in ascending label order (DICOM needs
    consecutive numbers; the segment label keeps the name, "label <value>" by default) with the toolkit's
    display colour. Frames reference the source slices' SOPInstanceUIDs and the series' FrameOfReferenceUID;
    slices without any label are omitted. Read it back with ``highdicom.seg.segread``.
    """
    check_writable(path, overwrite=overwrite)
    info = dicom_info(reference, what="DICOM-SEG")
    data = as_label_array(labels, reference.shape, what=f"labels for {path}")
    segments = segment_labels(data, label_names)
    if not segments:
        raise OutputError(f"output {path}: the label map is empty; a DICOM-SEG needs at least one labelled voxel")
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:  # pragma: no cover
        raise OutputError("writing DICOM-SEG needs highdicom: pip install 'medsam-toolkit[volumes]'") from exc
    from medsam import __version__

    numbered = np.zeros(data.shape, dtype=np.uint8 if len(segments) < 256 else np.uint16)
    for number, seg in enumerate(segments, start=1):
        numbered[data == seg.value] = number

    if info.frame_numbers is not None:  # a multi-frame source: frames in the file's order, not slice order
        in_frame_order = np.zeros_like(numbered)
        in_frame_order[np.asarray(info.frame_numbers) - 1] = numbered
        numbered = in_frame_order

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medsam", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=seg.name[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*seg.colour),
        )
        for number, seg in enumerate(segments, start=1)
    ]
    first = info.datasets[0]
    try:
        seg_ds = hd.seg.Segmentation(
            source_images=list(info.datasets),
            pixel_array=numbered,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medsam-toolkit",
            manufacturer_model_name="medsam",
            software_versions=__version__,
            device_serial_number="0",
            series_description=series_description[:64],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"output {path}: highdicom refused the segmentation: {exc}") from exc
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg_ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
