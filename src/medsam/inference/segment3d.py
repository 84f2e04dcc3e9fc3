"""One volume in, a label volume (and a montage) out: the job of `medsam segment-volume`.

    result = segment_volume_file(predictor, "ct_folder/", "liver.nii.gz",
                                 prompts=[ObjectPrompt.from_box3d(Box3D(100, 120, 40, 180, 200, 60))],
                                 window="soft_tissue", montage_path="liver.png")

Input: anything ``medsam.io.volume.read_volume`` reads (DICOM folder/file, NIfTI, NRRD, MHA, npz).
Intensity: the window (CT name, "W,L", "percentile", "auto") brings the volume to uint8 before the model.
Output format from ``output_format`` or the name: .nii.gz/.nii (NIfTI), .nrrd, .mha, .dcm (DICOM-SEG, or
RT-STRUCT with ``output_format="rtstruct"``), or a folder (the file is named after the input inside it).
Everything that can be checked is checked before the model runs; outputs are written atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from medsam.errors import OutputError
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import ObjectPrompt, PropagationConfig, StackSegmentation, segment_stack
from medsam.io.atomic import check_writable
from medsam.types import Volume

OutputFormat = Literal["nifti", "nrrd", "mha", "dicom-seg", "rtstruct"]
OUTPUT_FORMATS: tuple[str, ...] = ("nifti", "nrrd", "mha", "dicom-seg", "rtstruct")
_SUFFIX_FORMAT = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".mha": "mha", ".dcm": "dicom-seg"}
_FORMAT_SUFFIXES = {
    "nifti": (".nii.gz", ".nii"), "nrrd": (".nrrd",), "mha": (".mha",), "dicom-seg": (".dcm",), "rtstruct": (".dcm",),
}
_FOLDER_NAMES = {"nifti": "{stem}_seg.nii.gz", "nrrd": "{stem}_seg.nrrd", "mha": "{stem}_seg.mha",
                 "dicom-seg": "{stem}_seg.dcm", "rtstruct": "{stem}_rtstruct.dcm"}


@dataclass(frozen=True)
class OutputTarget:
    """Where and how the label volume is written."""

    path: Path
    format: OutputFormat


@dataclass(frozen=True)
class VolumeSegmentationResult:
    input_path: Path
    output: OutputTarget
    montage_path: Path | None
    volume: Volume
    window: str
    segmentation: StackSegmentation
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return self.segmentation.labels


def _suffix_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(_SUFFIX_FORMAT, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def input_stem(path: str | Path) -> str:
    """The input's name without volume suffixes ("ct.nii.gz" -> "ct"; a DICOM folder -> its name)."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "volume"
    return name or "volume"


def resolve_output(
    output: str | Path, *, output_format: str | None, input_path: str | Path, dicom_input: bool
) -> OutputTarget:
    """Decide the output file and format from the name and/or ``output_format``.

    A name with a known suffix is a file; an existing folder, or a name without a suffix, is a folder that
    gets ``<input>_seg.<ext>`` (DICOM-SEG by default for DICOM input, else NIfTI).
    """
    output = Path(output).expanduser()
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise OutputError(f"--format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
    suffix = _suffix_of(output)
    if output.is_dir() or (suffix is None and output.suffix == ""):
        fmt = output_format or ("dicom-seg" if dicom_input else "nifti")
        return OutputTarget(output / _FOLDER_NAMES[fmt].format(stem=input_stem(input_path)), fmt)  # type: ignore[arg-type]
    if suffix is None:
        raise OutputError(
            f"output {output}: unknown format {output.suffix!r}; end the name with .nii.gz, .nii, .nrrd, .mha or "
            ".dcm (DICOM-SEG / RT-STRUCT), or give a folder"
        )
    if output_format is None:
        return OutputTarget(output, _SUFFIX_FORMAT[suffix])  # type: ignore[arg-type]
    if suffix not in _FORMAT_SUFFIXES[output_format]:
        raise OutputError(
            f"output {output}: the name ends with {suffix} but --format is {output_format}; "
            f"use a name ending with {' or '.join(_FORMAT_SUFFIXES[output_format])}"
        )
    return OutputTarget(output, output_format)  # type: ignore[arg-type]


def write_labels(
    labels: np.ndarray,
    volume: Volume,
    target: OutputTarget,
    *,
    label_names: Mapping[int, str] | Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a (z, y, x) label map on ``volume``'s grid in the target's format (atomic)."""
    if target.format == "dicom-seg":
        from medsam.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(labels, volume, target.path, label_names=label_names, overwrite=overwrite)
    if target.format == "rtstruct":
        from medsam.io.rtstruct import write_rtstruct

        return write_rtstruct(labels, volume, target.path, label_names=label_names, overwrite=overwrite)
    from medsam.io.volume_writers import write_label_volume

    return write_label_volume(labels, volume, target.path, overwrite=overwrite)


def segment_volume(
    predictor: Predictor,
    volume: Volume,
    prompts: Sequence[ObjectPrompt],
    *,
    window: str = "auto",
    config: PropagationConfig = PropagationConfig(),
    progress: bool = True,
) -> tuple[StackSegmentation, np.ndarray, str]:
    """Window ``volume`` to uint8 and propagate ``prompts`` through it. A ``MemoryPredictor`` (SAM 2 family)
    runs MedSAM2's procedure (``medsam.inference.memory_video.medsam2_segment_volume``; ``config`` does not apply).

    Returns the segmentation, the uint8 volume the model saw, and the window used (as text).
    """
    from medsam.preprocess.intensity import apply_window, resolve_window

    resolved = resolve_window(volume, window)
    volume_u8 = apply_window(volume, resolved)
    source = str(volume.metadata.get("source_path", "volume"))
    if getattr(predictor, "is_memory_predictor", False):  # SAM 2 / MedSAM2: MedSAM2's 3D procedure
        from medsam.inference.memory_video import stack_segmentation

        result = stack_segmentation(predictor, volume_u8, prompts, procedure="medsam2", progress=progress,
                                    source=source)
        return result, volume_u8, str(resolved)
    result = segment_stack(predictor, volume_u8, prompts, config, progress=progress, source=source)
    return result, volume_u8, str(resolved)


def segment_volume_file(
    predictor: Predictor,
    input_path: str | Path,
    output: str | Path,
    *,
    prompts: Sequence[ObjectPrompt],
    window: str = "auto",
    output_format: str | None = None,
    montage_path: str | Path | None = None,
    config: PropagationConfig = PropagationConfig(),
    label_names: Sequence[str] | None = None,
    series_uid: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> VolumeSegmentationResult:
    """Read a volume, segment ``prompts`` by propagation, write the labels (and a montage PNG).

    Output paths and the DICOM requirement of DICOM-SEG/RT-STRUCT are checked before reading the voxels'
    worth of work; prompts are checked against the volume before the model runs.
    """
    from medsam.io.volume import read_volume

    start = time.perf_counter()
    input_path = Path(input_path)
    if montage_path is not None:
        check_writable(montage_path, overwrite=overwrite)
    early = _early_target(output, output_format, input_path)
    if early is not None:
        check_writable(early.path, overwrite=overwrite)
    volume = read_volume(input_path, series_uid=series_uid)
    target = resolve_output(
        output, output_format=output_format, input_path=input_path, dicom_input="dicom" in volume.metadata
    )
    check_writable(target.path, overwrite=overwrite)
    if target.format in ("dicom-seg", "rtstruct"):
        from medsam.io.dicom_seg import dicom_info

        dicom_info(volume, what="DICOM-SEG" if target.format == "dicom-seg" else "RT-STRUCT")
    segmentation, volume_u8, window_text = segment_volume(
        predictor, volume, prompts, window=window, config=config, progress=progress
    )
    if not segmentation.labels.any():
        raise OutputError(
            f"{input_path}: the propagation found nothing for any object; nothing was written. "
            "Check the prompts (x, y in slice pixels, z = slice index)"
        )
    write_labels(segmentation.labels, volume, target, label_names=label_names, overwrite=overwrite)
    if montage_path is not None:
        from medsam.io.montage import write_montage

        write_montage(volume_u8, segmentation.labels, montage_path, overwrite=overwrite)
    return VolumeSegmentationResult(
        input_path, target, Path(montage_path) if montage_path else None, volume, window_text, segmentation,
        time.perf_counter() - start,
    )


def _early_target(output: str | Path, output_format: str | None, input_path: Path) -> OutputTarget | None:
    """The output target when it does not depend on the volume (checked before reading it)."""
    output = Path(output).expanduser()
    is_folder = output.is_dir() or (_suffix_of(output) is None and output.suffix == "")
    if is_folder and output_format is None:
        return None  # DICOM-SEG or NIfTI depends on the input
    return resolve_output(output, output_format=output_format, input_path=input_path, dicom_input=False)
