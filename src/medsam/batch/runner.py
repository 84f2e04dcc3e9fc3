"""What a worker does with one job: run the toolkit's own entry point for its kind, write into a folder.

    pool = PredictorPool(WorkerSettings(threads=1))       # one model per worker, loaded at its first job
    result = run_job(job, out_dir, pool)                   # outputs land in out_dir/<job.id>/ atomically

Per kind (the entry points `medsam segment`, `segment-volume`, `segment-video`, `everything` and the npz branch
of `segment` call): 2D images :func:`medsam.inference.segment2d.segment_file`; volumes
:func:`medsam.inference.segment3d.segment_volume_file` (3D boxes, key-slice boxes and clicks as
:class:`~medsam.inference.propagate.ObjectPrompt`); CVPR24 npz cases
:func:`medsam.inference.cvpr24.segment_npz_case`; videos :func:`medsam.inference.video.segment_video_file`; no
prompt: :class:`medsam.inference.everything.AutomaticSegmenter` on the image (or one slice of a volume).

A job's files are first written into a fresh folder (``atomic_dir``: a hidden ``.<id>.*.part`` beside the final
one) and renamed to ``<id>/`` only when all of them are complete, so a failed or killed job leaves nothing
behind under its name. Every output is deterministic (the same bytes from any worker, executor or thread count)
except DICOM-SEG / RT-STRUCT (new UIDs and dates each time) and mp4 overlay videos.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsam.batch.jobs import LABEL_VOLUME_FORMATS, Job, ModelRef, strip_suffix
import numpy as np

from medsam.errors import InputError, MedsamError, PromptError


@dataclass(frozen=True)
class WorkerSettings:
    """How every worker runs its model. threads: intra-op threads per worker (None: the engine's default).
    batch_size: slices per encoder batch in volumes (the slices in memory at once besides the volume).
    cache_mb: the predictor's embedding cache. max_memory_mb: a worker whose resident memory exceeds this after
    a job is replaced by a fresh one (None: never)."""

    device: str | None = None
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    batch_size: int = 4
    cache_mb: int = 64
    max_memory_mb: int | None = None


@dataclass(frozen=True)
class JobResult:
    """What a worker reports for one job. ``files`` are relative to the job's folder; ``payload`` carries their
    bytes when the worker cannot write the output folder itself (Ray workers on other nodes)."""

    job_id: str
    ok: bool
    seconds: float
    files: tuple[str, ...] = ()
    summary: str = ""
    error: str = ""
    error_type: str = ""
    detail: str = ""
    worker: str = ""
    rss_mb: float = 0.0
    payload: dict[str, bytes] | None = field(default=None, repr=False)


def worker_label(kind: str, index: int) -> str:
    return f"{kind}-{index} pid {os.getpid()} on {socket.gethostname()}"


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PredictorPool:
    """The worker's model: built at the first job that needs it and kept; a job naming another model or
    checkpoint replaces it (jobs are handed out grouped by model, so that is rare)."""

    def __init__(self, settings: WorkerSettings = WorkerSettings(), *, device_index: int = 0) -> None:
        self.settings = settings
        self.device_index = device_index
        self.loads = 0
        self.notes: list[str] = []
        self._key: str | None = None
        self._predictor: Any = None

    def device(self) -> str | None:
        """``cuda`` with several GPUs here: worker i takes GPU i mod count."""
        device = self.settings.device
        if device == "cuda":
            import torch

            count = torch.cuda.device_count()
            if count > 1:
                return f"cuda:{self.device_index % count}"
        return device

    def get(self, model: ModelRef) -> Any:
        if self._key == model.key and self._predictor is not None:
            return self._predictor
        from medsam.inference.engines import ExecutionOptions, make_predictor
        from medsam.models.registry import build_model

        self._predictor = None  # free the old model before building the next
        built = build_model(model.name, checkpoint=model.checkpoint, device=self.device())
        s = self.settings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            predictor = make_predictor(
                built, ExecutionOptions(s.precision, s.backend, s.threads), cache_bytes=s.cache_mb * 2**20
            )
        self.notes = [str(w.message) for w in caught]
        self._predictor, self._key = predictor, model.key
        self.loads += 1
        return predictor


def run_job(job: Job, out_dir: Path, pool: PredictorPool, *, worker: str = "") -> JobResult:
    """Run ``job`` with the worker's model and write its outputs to ``out_dir/<job.id>/`` (atomic). Never
    raises for a bad job: the result says what went wrong."""
    from medsam.io.atomic import atomic_dir

    start = time.perf_counter()
    try:
        with atomic_dir(Path(out_dir) / job.id, overwrite=True) as tmp:
            summary = execute(job, tmp, pool)
            files = list_files(tmp)
        return JobResult(job.id, True, time.perf_counter() - start, files, summary, worker=worker, rss_mb=resident_mb())
    except BaseException as exc:  # noqa: BLE001 - one bad job must never stop the worker
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return failure(job, exc, time.perf_counter() - start, worker)


def run_job_in_memory(job: Job, pool: PredictorPool, *, worker: str = "") -> JobResult:
    """Like :func:`run_job`, but the files come back as bytes in ``payload`` (for a driver on another node)."""
    import shutil
    import tempfile

    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"medsam-batch-{job.id}-"))
    try:
        summary = execute(job, tmp, pool)
        files = list_files(tmp)
        payload = {name: (tmp / name).read_bytes() for name in files}
        return JobResult(job.id, True, time.perf_counter() - start, files, summary, worker=worker,
                         rss_mb=resident_mb(), payload=payload)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return failure(job, exc, time.perf_counter() - start, worker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def failure(job: Job, exc: BaseException, seconds: float, worker: str) -> JobResult:
    """A failed result: our own errors by their message, anything else named as unexpected with its traceback."""
    if isinstance(exc, MedsamError):
        message, detail = str(exc), ""
    elif isinstance(exc, MemoryError):
        message = f"{job.input}: ran out of memory; run fewer workers or give the worker more memory"
        detail = ""
    else:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        message = f"{job.input}: unexpected {type(exc).__name__}{': ' + last if last else ''} (see the traceback in failures.txt)"
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    return JobResult(job.id, False, seconds, error=message, error_type=type(exc).__name__, detail=detail,
                     worker=worker, rss_mb=resident_mb())


def list_files(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))


# ------------------------------------------------------------------------------------------ per kind

def execute(job: Job, folder: Path, pool: PredictorPool) -> str:
    """Run the job, writing its outputs into ``folder``; returns a one-line summary."""
    if not job.uri and not job.input.exists():
        raise InputError(f"input {job.input} does not exist ({job.source or job.id})")
    if job.kind == "npz":
        return _npz(job, folder, pool)
    if job.everything:
        return _everything(job, folder, pool)
    if job.kind == "image":
        return _image(job, folder, pool)
    if job.kind == "video":
        return _video(job, folder, pool)
    return _volume(job, folder, pool)


def _stem(job: Job) -> str:
    return strip_suffix(job.input.name) or "input"


def _config(job: Job, pool: PredictorPool):
    from medsam.inference.propagate import PropagationConfig

    return PropagationConfig(mode=job.mode, batch_size=pool.settings.batch_size)  # type: ignore[arg-type]


def _image(job: Job, folder: Path, pool: PredictorPool) -> str:
    from medsam.inference.segment2d import segment_file

    stem = _stem(job)
    overlay = folder / f"{stem}_overlay.png" if "overlay" in job.outputs else None
    result = segment_file(pool.get(job.model), job.input, folder / f"{stem}_mask.png", boxes=job.boxes,
                          points=job.points, overlay_path=overlay)
    areas = [int(result.prediction.masks[i, 0].sum()) for i in range(result.prediction.num_objects)]
    return f"{len(areas)} object(s), {sum(areas)} px"


def object_prompts(job: Job) -> list:
    """The propagation prompts of a volume job: each 3D box, and each box on ``slice`` (with the clicks of one
    object); key-slice boxes and 3D clicks are handed to segment_volume_file apart."""
    from medsam.inference.propagate import ObjectPrompt

    prompts = [ObjectPrompt.from_box3d(b) for b in job.boxes3d]
    if job.slice is not None:
        if not job.boxes:
            prompts.append(ObjectPrompt(z=job.slice, points=job.points, z_limits=job.z_range))
        for box in job.boxes:
            prompts.append(ObjectPrompt(z=job.slice, box=box, points=job.points, z_limits=job.z_range))
    if not prompts and not job.key_boxes:
        raise PromptError(f"{job.id}: no object in the volume: give boxes3d, slice with boxes/points, or key_boxes "
                          "(3D clicks correct an object, they do not start one)")
    return prompts


def _volume(job: Job, folder: Path, pool: PredictorPool) -> str:
    """3D boxes and slice boxes propagate; key-slice boxes (one object: several key slices, parts on one slice)
    and 3D clicks (each one correction, in order) go through the interactive volume, all by
    :func:`medsam.inference.segment3d.segment_volume_file` in the default orientation."""
    from medsam.inference.interactive3d import Click3D, KeyBox
    from medsam.inference.segment3d import segment_volume_file

    prompts = object_prompts(job)
    formats = [o for o in job.outputs if o in LABEL_VOLUME_FORMATS]
    montage = folder / f"{_stem(job)}_montage.png" if "montage" in job.outputs else None
    result = segment_volume_file(
        pool.get(job.model), job.source_path, folder, prompts=prompts, window=job.window,
        output_format=None if formats[0] == "auto" else formats[0], montage_path=montage, config=_config(job, pool),
        label_names=list(job.labels) or None, progress=False,
        key_boxes=[(KeyBox(k.z, k.box), None) for k in job.key_boxes],
        clicks=[Click3D(c.z, c.y, c.x, c.label) for c in job.clicks],
    )
    _write_more_formats(job, folder, result.labels, result.volume, formats[1:], {result.output.path})
    objects = int(len(np.unique(result.labels)) - 1)
    summary = f"{objects} object(s), {int((result.labels > 0).sum())} voxels"
    if job.key_boxes or job.clicks:
        summary += f", {len(job.key_boxes)} key box(es), {len(job.clicks)} click(s)"
    return summary


def _write_more_formats(job: Job, folder: Path, labels: np.ndarray, volume: Any, formats: list[str], written: set) -> None:
    from medsam.inference.segment3d import resolve_output, write_labels

    for fmt in formats:
        target = resolve_output(folder, output_format=None if fmt == "auto" else fmt, input_path=job.input,
                                dicom_input="dicom" in volume.metadata)
        if target.path not in written:
            write_labels(labels, volume, target, label_names=list(job.labels) or None)
            written.add(target.path)


def _resolve_input(job: Job) -> Any:
    """A PACS series (dicomweb://) as a verified local copy; a path as it is."""
    if job.uri:
        from medsam.io.dicomweb import resolve_input

        return resolve_input(job.uri, progress=False)
    return job.input


def _npz(job: Job, folder: Path, pool: PredictorPool) -> str:
    from medsam.io.npz import is_cvpr25_npz

    if is_cvpr25_npz(job.input):
        # a CVPR 2025 case: its box step (and clicks, when the file holds some), as a submission runs it; the
        # interactive protocol propagates in the default mode whatever ``mode`` says
        from medsam.inference.cvpr25 import segment_cvpr25_case
        from medsam.inference.propagate import PropagationConfig

        step = segment_cvpr25_case(pool.get(job.model), job.input, folder / job.input.name,
                                   config=PropagationConfig(batch_size=pool.settings.batch_size))
        return f"CVPR25 npz, step {step.step}, {step.classes} class(es)"
    from medsam.inference.cvpr24 import segment_npz_case

    result = segment_npz_case(pool.get(job.model), job.input, folder / job.input.name, config=_config(job, pool))
    return f"{'3D' if result.is_3d else '2D'} npz, {result.objects} object(s)"


def _video(job: Job, folder: Path, pool: PredictorPool) -> str:
    from medsam.inference.video import segment_video_file
    from medsam.io.video import write_mask_frames

    stem = _stem(job)
    frames = folder / f"{stem}_frames"
    masks = folder / f"{stem}_segs.npz" if "npz" in job.outputs or "frames" not in job.outputs else frames
    overlay = folder / f"{stem}_overlay.mp4" if "overlay-video" in job.outputs else None
    result = segment_video_file(
        pool.get(job.model), job.input, masks, frame=int(job.frame or 0), boxes=job.boxes, points=job.points,
        frame_range=job.z_range, overlay_video=overlay, config=_config(job, pool), progress=False,
    )
    if "frames" in job.outputs and masks != frames:
        write_mask_frames(result.labels, frames)
    return f"{len(result.segmentation.objects)} object(s) over {result.labels.shape[0]} frames"


def _everything(job: Job, folder: Path, pool: PredictorPool) -> str:
    from medsam.inference.amg.export import (
        coco_document, label_map, render_everything_overlay, write_json, write_label_png, write_rgb_png,
    )
    from medsam.inference.everything import AutomaticSegmenter

    image, name, z = _plane(job)
    stem = _stem(job) + (f"_z{z}" if z is not None else "")
    segmenter = AutomaticSegmenter(pool.get(job.model))
    result = segmenter.run(image, source=f"image {name}")
    instances = result.instances
    write_label_png(label_map(instances, result.image_hw), folder / f"{stem}_labels.png")
    if "overlay" in job.outputs:
        write_rgb_png(render_everything_overlay(image, instances), folder / f"{stem}_overlay.png")
    if "json" in job.outputs:
        # no timings in the document: the same job gives the same bytes
        info = {"description": "medsam everything proposals", "model": job.model.name, "slice": z,
                "prompt_mode": segmenter.prompt_mode, "grid": segmenter.grid}
        write_json(coco_document(instances, result.image_hw, file_name=name, info=info), folder / f"{stem}_proposals.json")
    return f"{len(instances)} proposal(s)"


def _plane(job: Job):
    """The 2D image of a segment-everything job: the image, or the windowed ``slice`` (default middle)."""
    if job.kind == "image":
        from medsam.io.raster import read_image

        return read_image(job.input), job.input.name, None
    from medsam.io.volume import read_volume
    from medsam.preprocess.intensity import apply_window, resolve_window

    volume = read_volume(_resolve_input(job))
    depth = volume.shape[0]
    z = depth // 2 if job.slice is None else int(job.slice)
    if not 0 <= z < depth:
        raise PromptError(f"slice {job.slice}: {job.input} has {depth} slices; give 0..{depth - 1}")
    plane = apply_window(volume.array[z : z + 1], resolve_window(volume, job.window))[0]
    return plane, f"{job.input.name}#z={z}", z
