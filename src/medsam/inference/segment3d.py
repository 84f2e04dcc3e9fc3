"""One volume in, a label volume (and a montage) out: the job of `medsam segment-volume`.

    result = segment_volume_file(predictor, "ct_folder/", "liver.nii.gz",
                                 prompts=[ObjectPrompt.from_box3d(Box3D(100, 120, 40, 180, 200, 60))],
                                 window="soft_tissue", montage_path="liver.png")

Input: anything ``medsam.io.volume.read_volume`` reads (DICOM folder/file, NIfTI, NRRD, MHA, npz), or a
``dicomweb://HOST:PORT/dicom-web/studies/S/series/R`` series (fetched and verified by ``medsam.io.dicomweb``).
Intensity: the window (CT name, "W,L", "percentile", "auto") brings the volume to uint8 before the model.
Output format from ``output_format`` or the name: .nii.gz/.nii (NIfTI), .nrrd, .mha, .dcm (DICOM-SEG, or
RT-STRUCT with ``output_format="rtstruct"``), or a folder (the file is named after the input inside it).
Everything that can be checked is checked before the model runs; outputs are written atomically.

Orientation (``orientation``, :mod:`medsam.preprocess.orientation`): the model sees the volume in the
radiological display orientation of its slice plane ("canonical", the default), strict LPS ("lps") or as
stored ("stored", the default of the reference mode, which is the official procedure on the arrays as
stored). Prompts are always given in stored-array indices (x, y = column, row of the stored slice, z =
stored slice index) and mapped to the view; the labels come back on the stored grid voxel for voxel and are
written with the source's geometry; the montage shows the view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from medsam.errors import OutputError, PromptError
from medsam.inference.interactive3d import DEFAULT_AGREEMENT, Click3D, InteractionResult, InteractiveVolume, KeyBox
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import (
    ObjectEnd,
    ObjectPrompt,
    ObjectTrackSummary,
    PropagationConfig,
    StackSegmentation,
    prompt_to_view,
    segment_stack,
)
from medsam.io.atomic import check_writable
from medsam.preprocess.orientation import AxisReorientation, OrientedVolume, check_orientation, orient_volume
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
class OrientedSegmentation:
    """What :func:`segment_volume` gives.

    labels: (z, y, x) label map on the stored (source) grid. objects: per object, slices and ends in stored
    slice indices (when the view keeps the slice axis; else the ends are in view slices, see ``view_ends``).
    segmentation: the propagation's own result, in the view frame. view_u8: the uint8 view the model saw.
    oriented: source volume, view volume and the reorientation between them. window: the window used.
    """

    labels: np.ndarray
    objects: tuple[ObjectTrackSummary, ...]
    segmentation: StackSegmentation
    view_u8: np.ndarray
    oriented: OrientedVolume
    window: str
    interactions: tuple[InteractionResult, ...] = ()  # key boxes and clicks, in the order they ran (view slices)

    @property
    def reorientation(self) -> AxisReorientation:
        return self.oriented.reorientation

    @property
    def view_ends(self) -> bool:
        """True when ``objects[*].ends`` speak of view slices (the view reslices the volume)."""
        return not self.reorientation.keeps_slice_axis


@dataclass(frozen=True)
class VolumeSegmentationResult:
    input_path: Path
    output: OutputTarget
    montage_path: Path | None
    volume: Volume
    window: str
    segmentation: StackSegmentation
    seconds: float
    oriented: OrientedSegmentation | None = None

    @property
    def labels(self) -> np.ndarray:
        """The labels on the input's stored grid (what was written)."""
        return self.oriented.labels if self.oriented is not None else self.segmentation.labels

    @property
    def objects(self) -> tuple[ObjectTrackSummary, ...]:
        return self.oriented.objects if self.oriented is not None else self.segmentation.objects

    @property
    def reorientation(self) -> AxisReorientation:
        if self.oriented is not None:
            return self.oriented.reorientation
        return AxisReorientation.identity(self.volume.shape)


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


def default_orientation(mode: str) -> str:
    """The orientation used when none is given: "stored" for the reference mode (the official procedure takes
    the arrays as stored), else "canonical"."""
    return "stored" if mode == "reference" else "canonical"


def segment_volume(
    predictor: Predictor,
    volume: Volume,
    prompts: Sequence[ObjectPrompt],
    *,
    window: str = "auto",
    config: PropagationConfig = PropagationConfig(),
    orientation: str | None = None,
    key_boxes: Sequence[tuple[KeyBox, int | None]] = (),
    clicks: Sequence[Click3D] = (),
    agreement: float = DEFAULT_AGREEMENT,
    progress: bool = True,
) -> OrientedSegmentation:
    """Window ``volume`` to uint8, reorient it (``orientation``; None = :func:`default_orientation` of the
    mode), propagate ``prompts`` (stored-array indices) through the view and map the labels back to the
    stored grid. A ``MemoryPredictor`` (SAM 2 family) runs MedSAM2's procedure
    (``medsam.inference.memory_video.medsam2_segment_volume``; ``config`` does not apply).

    ``key_boxes`` (a box on a slice, with the label of the object it belongs to: None = one new object for all
    such boxes) and ``clicks`` (corrective clicks [z, y, x], each one interaction after the segmentation) run
    through :class:`medsam.inference.interactive3d.InteractiveVolume`: several key slices per object, several
    parts on one slice, re-propagation from every click. All in stored-array indices as the prompts."""
    from medsam.preprocess.intensity import apply_window, resolve_window

    name = check_orientation(orientation or default_orientation(config.mode))
    oriented = orient_volume(volume, name)
    reo = oriented.reorientation
    source = str(volume.metadata.get("source_path", "volume"))
    view_prompts = [
        prompt_to_view(p, reo, index=i, source=source, mode=config.mode) for i, p in enumerate(prompts)
    ]
    resolved = resolve_window(volume, window)
    view_u8 = apply_window(oriented.view, resolved)
    if key_boxes or clicks:
        if getattr(predictor, "is_memory_predictor", False):
            raise PromptError("--key-box and --click run with the slice-by-slice models (LiteMedSAM, MedSAM, SAM); "
                              "with a SAM 2 model give a --box3d or a --slice box")
        return _segment_interactively(
            predictor, view_u8, view_prompts, key_boxes, clicks, oriented, str(resolved), config, agreement, source
        )
    try:
        if getattr(predictor, "is_memory_predictor", False):  # SAM 2 / MedSAM2: MedSAM2's 3D procedure
            from medsam.inference.memory_video import stack_segmentation

            result = stack_segmentation(predictor, view_u8, view_prompts, procedure="medsam2", progress=progress,
                                        source=source)
        else:
            result = segment_stack(predictor, view_u8, view_prompts, config, progress=progress, source=source)
    except PromptError as exc:  # e.g. an empty key slice: name it by its stored index
        if reo.keeps_slice_axis and reo.flip[0]:
            raise PromptError(slices_to_source(str(exc), reo.source_shape[0])) from exc
        raise
    labels = result.labels if reo.is_identity else oriented.labels_to_source(result.labels)
    objects = objects_to_source(result.objects, labels, reo)
    return OrientedSegmentation(labels, objects, result, view_u8, oriented, str(resolved))


def _segment_interactively(
    predictor: Predictor,
    view_u8: np.ndarray,
    view_prompts: Sequence[ObjectPrompt],
    key_boxes: Sequence[tuple[KeyBox, int | None]],
    clicks: Sequence[Click3D],
    oriented: OrientedVolume,
    window: str,
    config: PropagationConfig,
    agreement: float,
    source: str,
) -> OrientedSegmentation:
    """Objects from the prompts and key boxes, then the clicks, in an InteractiveVolume on the view."""
    reo = oriented.reorientation
    if config.mode != "default":
        raise PromptError("key boxes and clicks need the default propagation mode (not --mode reference)")
    if not reo.keeps_slice_axis:
        reo.require_slice_axis("key boxes and clicks")
    depth, h, w = reo.source_shape
    start = time.perf_counter()
    iv = InteractiveVolume(predictor, view_u8, config=config, agreement=agreement, source=source)
    done: list[InteractionResult] = []
    for i, prompt in enumerate(view_prompts):
        done.append(iv.add_object(prompt=prompt, label=i + 1))
    groups: dict[int, list[KeyBox]] = {}
    new_label = len(view_prompts) + 1
    for key, label in key_boxes:
        if not 0 <= key.z < depth:
            raise PromptError(f"key box on slice {key.z}: the volume has slices 0..{depth - 1} (stored slice indices)")
        key_box = key.box.validate((h, w), source=f"key box on slice {key.z}")
        z_view, box_view = reo.box_to_view(key.z, key_box)
        groups.setdefault(new_label if label is None else int(label), []).append(KeyBox(z_view, box_view))
    for label, keys in groups.items():
        done.append(iv.add_object(key_boxes=keys, label=label))
    for click in clicks:
        if not (0 <= click.z < depth and 0 <= click.y <= h - 1 and 0 <= click.x <= w - 1):
            raise PromptError(f"click {click.describe()} lies outside the volume of {depth} slices of {h} rows and {w} "
                              "columns (stored-array indices [z, y, x])")
        (z_view, y_view, x_view), = reo.indices_to_view(np.array([[click.z, click.y, click.x]], dtype=np.float64))
        done.append(iv.click(Click3D(int(round(z_view)), float(y_view), float(x_view), click.label, click.object_label)))
    view_labels = iv.labels()
    labels = view_labels if reo.is_identity else oriented.labels_to_source(view_labels)
    summaries = []
    for k, label in enumerate(iv.object_labels):
        mask = labels == label
        zs = np.flatnonzero(mask.reshape(depth, -1).any(axis=1))
        z_range = (int(zs[0]), int(zs[-1])) if zs.size else None
        summaries.append(ObjectTrackSummary(k, label, z_range, int(mask.sum()), ()))
    seg = StackSegmentation(view_labels, tuple(summaries), iv.slices_decoded, iv.encoder.encoded,
                            time.perf_counter() - start, config)
    return OrientedSegmentation(labels, tuple(summaries), seg, view_u8, oriented, window, tuple(done))


def objects_to_source(
    objects: Sequence[ObjectTrackSummary], labels: np.ndarray, reorientation: AxisReorientation
) -> tuple[ObjectTrackSummary, ...]:
    """Object summaries of a view-frame propagation in stored slice indices: z ranges from the stored
    ``labels``; the ends (direction, last slice, reason) mapped when the view keeps the slice axis."""
    if reorientation.is_identity:
        return tuple(objects)
    depth = reorientation.source_shape[0]
    out = []
    for obj in objects:
        zs = np.flatnonzero((labels == obj.label).reshape(depth, -1).any(axis=1))
        z_range = (int(zs[0]), int(zs[-1])) if zs.size else None
        ends = obj.ends
        if reorientation.keeps_slice_axis and reorientation.flip[0]:
            ends = tuple(_end_to_source(e, depth) for e in obj.ends)
        out.append(ObjectTrackSummary(obj.object_id, obj.label, z_range, obj.voxels, ends))
    return tuple(out)


def slices_to_source(text: str, depth: int) -> str:
    """A message about slices of a z-reversed view, with the slice numbers as stored slice indices."""
    import re

    return re.sub(r"(z limit |slice )(\d+)", lambda m: f"{m.group(1)}{depth - 1 - int(m.group(2))}", text)


def _end_to_source(end: ObjectEnd, depth: int) -> ObjectEnd:
    """An end of a z-reversed view in stored slices: the direction turns, slice numbers in the reason too
    ("reached the last slice" is the last in the direction of travel, true in both frames)."""
    return ObjectEnd(end.object_id, -end.direction, depth - 1 - end.last_z, slices_to_source(end.reason, depth))


def segment_volume_file(
    predictor: Predictor,
    input_path: str | Path,  # or a dicomweb:// series URI
    output: str | Path,
    *,
    prompts: Sequence[ObjectPrompt],
    window: str = "auto",
    output_format: str | None = None,
    montage_path: str | Path | None = None,
    config: PropagationConfig = PropagationConfig(),
    label_names: Sequence[str] | None = None,
    series_uid: str | None = None,
    orientation: str | None = None,
    key_boxes: Sequence[tuple[KeyBox, int | None]] = (),
    clicks: Sequence[Click3D] = (),
    agreement: float = DEFAULT_AGREEMENT,
    overwrite: bool = False,
    progress: bool = True,
) -> VolumeSegmentationResult:
    """Read a volume, segment ``prompts`` by propagation, write the labels (and a montage PNG).

    Output paths and the DICOM requirement of DICOM-SEG/RT-STRUCT are checked before reading the voxels'
    worth of work; prompts are checked against the volume before the model runs. ``orientation``: what the
    model sees (see the module doc; None = "canonical", or "stored" in the reference mode); the prompts are
    in stored-array indices and the labels are written on the stored grid whatever it is.
    """
    from medsam.io.dicomweb import resolve_input
    from medsam.io.volume import read_volume

    start = time.perf_counter()
    input_path = resolve_input(input_path, progress=progress)  # dicomweb:// -> a verified local copy of the series
    check_orientation(orientation or default_orientation(config.mode))
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
    done = segment_volume(
        predictor, volume, prompts, window=window, config=config, orientation=orientation, key_boxes=key_boxes,
        clicks=clicks, agreement=agreement, progress=progress,
    )
    if not done.labels.any():
        raise OutputError(
            f"{input_path}: the propagation found nothing for any object; nothing was written. "
            "Check the prompts (source-array indices: x, y = column, row of the stored slice; z = stored slice index)"
        )
    write_labels(done.labels, volume, target, label_names=label_names, overwrite=overwrite)
    if montage_path is not None:
        from medsam.io.montage import write_montage

        reo = done.reorientation
        names = {z: reo.slice_to_source(z) for z in range(reo.view_shape[0])} if reo.keeps_slice_axis else None
        write_montage(done.view_u8, done.segmentation.labels, montage_path, slice_names=names, overwrite=overwrite)
    return VolumeSegmentationResult(
        input_path, target, Path(montage_path) if montage_path else None, volume, done.window, done.segmentation,
        time.perf_counter() - start, done,
    )


def _early_target(output: str | Path, output_format: str | None, input_path: Path) -> OutputTarget | None:
    """The output target when it does not depend on the volume (checked before reading it)."""
    output = Path(output).expanduser()
    is_folder = output.is_dir() or (_suffix_of(output) is None and output.suffix == "")
    if is_folder and output_format is None:
        return None  # DICOM-SEG or NIfTI depends on the input
    return resolve_output(output, output_format=output_format, input_path=input_path, dicom_input=False)
