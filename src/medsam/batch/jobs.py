"""Batch jobs: what one job is (typed), and how a jobs file or folder becomes a list of them.

A job is one input (2D image, DICOM series folder, NIfTI/NRRD/MHA volume, npz case, video), its prompts (or none:
segment everything), the model and the outputs to write. Sources (:func:`load_jobs`):

- ``JOBS.jsonl``: one JSON object per line (blank lines and lines starting with ``#`` are skipped);
- ``JOBS.csv``: one job per row, list values written ``a,b,c;d,e,f`` (groups by ``;``, numbers by ``,``); or a
  detector's boxes, one object per row in columns ``x0, y0, x1, y1`` (and ``z0, z1`` for a 3D box): rows with
  the same ``id`` (or, without ids, the same ``input``) make one job;
- a folder: every ``*.npz`` in it is a CVPR 2024 case (``boxes`` rows) or CVPR 2025 case (``boxes`` dicts, one
  protocol step: :mod:`medsam.inference.cvpr25`) with its own boxes; or its images with the prompts
  CSV beside them (``prompts.csv`` / ``jobs.csv``, paths relative to the folder).

Fields (JSONL keys = CSV columns; only ``input`` is required):

=========== ============================================================================================
id          job name, also its output folder ``OUT_DIR/<id>/`` (letters, digits, ``._-``); default: the input
            path relative to the jobs file without suffixes, ``/`` written ``__``
input       the file or folder, relative to the jobs file, or a PACS series ``dicomweb://HOST/.../series/UID``
kind        image | volume | npz | video (default: from the input: raster suffix -> image, video suffix ->
            video, ``.npz`` without prompts -> npz (its own boxes), anything else -> volume)
boxes       2D boxes x0,y0,x1,y1 (one object each): on the image, on ``slice`` of a volume, on ``frame``
boxes3d     3D boxes x0,y0,z0,x1,y1,z1, bounds inclusive (volumes)
points      clicks x,y,label (1 inside, 0 outside) refining one object (with at most one box)
recist      RECIST markers x1,y1,x2,y2,x3,y3,x4,y4 (long axis, then short axis): each becomes the box of
            its four ends, one object each
slice       key slice (z from 0) of boxes/points/recist in a volume; for segment-everything the slice
frame       key frame of boxes/points in a video (required for videos)
z_range     inclusive z0,z1 limits of slice prompts (videos: the frame range)
key_boxes   key-slice boxes ``z:x0,y0,x1,y1`` (JSONL: ``[{"z": 40, "box": [x0, y0, x1, y1]}]``) of one object
clicks      3D corrective clicks z,y,x,label of one object
window      volume intensity window (soft_tissue, W,L, percentile, auto, ...)
mode        propagation mode: default | reference
labels      object names in order (DICOM-SEG / RT-STRUCT), ``;``-separated in CSV
model       model variant (default: ``--model``); checkpoint: weights file (relative to the jobs file)
outputs     formats to write (``;``-separated in CSV), the first the main one; per kind:
            image: mask, overlay (everything: labels, overlay, json); volume: auto, nifti, nrrd, mha,
            dicom-seg, rtstruct, montage (everything: labels, overlay, json); npz: npz; video: npz, frames,
            overlay-video
=========== ============================================================================================

``key_boxes`` and ``clicks`` go to :class:`medsam.inference.interactive3d.InteractiveVolume`: the key boxes are
one object (boxes on one slice its parts, boxes on other slices its further key slices), then each click corrects
it (or, without key boxes, the object nearest to the click).

A row that cannot become a job (a malformed box, an unknown output) is kept as a :class:`JobProblem`: the run
reports it as failed and goes on. A jobs file that cannot be read at all is an InputError.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from medsam.errors import InputError, MedsamError, PromptError
from medsam.io.raster import RASTER_SUFFIXES
from medsam.io.video import VIDEO_SUFFIXES
from medsam.types import Box, Box3D, Points

JobKind = Literal["image", "volume", "npz", "video"]
KINDS: tuple[str, ...] = ("image", "volume", "npz", "video")

_STRIP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".dcm") + RASTER_SUFFIXES + VIDEO_SUFFIXES

#: Output formats per kind; the first is the default. Everything (no prompt) has its own on images and volumes.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "image": ("mask", "overlay"),
    "volume": ("auto", "nifti", "nrrd", "mha", "dicom-seg", "rtstruct", "montage"),
    "npz": ("npz",),
    "video": ("npz", "frames", "overlay-video"),
    "everything": ("labels", "overlay", "json"),
}
LABEL_VOLUME_FORMATS = ("auto", "nifti", "nrrd", "mha", "dicom-seg", "rtstruct")
#: The formats that hold a job's result; a job always writes at least one (its kind's first by default).
PRIMARY_OUTPUTS: dict[str, tuple[str, ...]] = {
    "image": ("mask",), "volume": LABEL_VOLUME_FORMATS, "npz": ("npz",), "video": ("npz", "frames"),
    "everything": ("labels",),
}
JOB_FIELDS = (
    "id", "input", "kind", "boxes", "boxes3d", "points", "recist", "slice", "frame", "z_range", "key_boxes",
    "clicks", "window", "mode", "labels", "model", "checkpoint", "outputs",
)
DETECTOR_COLUMNS = ("x0", "y0", "x1", "y1")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
PROMPTS_CSV_NAMES = ("prompts.csv", "jobs.csv", "boxes.csv")


@dataclass(frozen=True)
class ModelRef:
    """The model a job runs: a registered name and an optional checkpoint file."""

    name: str = "lite_medsam"
    checkpoint: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.checkpoint or ''}"


@dataclass(frozen=True)
class KeyBox:
    """A box drawn on key slice ``z`` (one of several key slices of one object)."""

    z: int
    box: Box


@dataclass(frozen=True)
class Click:
    """A 3D click at voxel (z, y, x); label 1 = inside, 0 = outside."""

    z: int
    y: float
    x: float
    label: int


@dataclass(frozen=True)
class Job:
    """One unit of batch work. Coordinates as everywhere: boxes (x0, y0, x1, y1) in pixels of the image or
    slice, 3D boxes (x0, y0, z0, x1, y1, z1) inclusive, z = slice index from 0."""

    id: str
    kind: JobKind
    input: Path
    outputs: tuple[str, ...]
    model: ModelRef = ModelRef()
    boxes: tuple[Box, ...] = ()
    boxes3d: tuple[Box3D, ...] = ()
    points: Points | None = None
    slice: int | None = None
    frame: int | None = None
    z_range: tuple[int, int] | None = None
    key_boxes: tuple[KeyBox, ...] = ()
    clicks: tuple[Click, ...] = ()
    window: str = "auto"
    mode: str = "default"
    labels: tuple[str, ...] = ()
    source: str = ""
    uri: str = ""  # a PACS series (dicomweb:// or dicomwebs://); then ``input`` is its name (the series UID)

    @property
    def source_path(self) -> Path | str:
        """What the reader is given: the PACS address, or the input path."""
        return self.uri or self.input

    @property
    def everything(self) -> bool:
        """No prompt at all: segment everything (images, or one slice of a volume)."""
        return self.kind in ("image", "volume") and not (
            self.boxes or self.boxes3d or self.points is not None or self.key_boxes or self.clicks
        )

    def record(self) -> dict[str, Any]:
        """The job as plain JSON values (what the fingerprint and the journal see)."""
        return {
            "id": self.id, "kind": self.kind, "input": str(self.input), "outputs": list(self.outputs),
            "model": self.model.name, "checkpoint": self.model.checkpoint,
            "boxes": [b.as_array().tolist() for b in self.boxes],
            "boxes3d": [b.as_array().tolist() for b in self.boxes3d],
            "points": None if self.points is None else np.column_stack(
                [self.points.coords, self.points.labels]).tolist(),
            "slice": self.slice, "frame": self.frame, "z_range": list(self.z_range) if self.z_range else None,
            "key_boxes": [{"z": k.z, "box": k.box.as_array().tolist()} for k in self.key_boxes],
            "clicks": [[c.z, c.y, c.x, c.label] for c in self.clicks],
            "window": self.window, "mode": self.mode, "labels": list(self.labels), "uri": self.uri,
        }

    @property
    def fingerprint(self) -> str:
        """Changes whenever what the job computes or writes changes (a rerun then redoes the job)."""
        text = json.dumps(self.record(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobProblem:
    """A row that could not become a job: reported as failed, never run."""

    id: str
    input: str
    message: str
    source: str = ""

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.input}|{self.message}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobDefaults:
    """What a job gets when it says nothing (the `medsam batch` options)."""

    model: ModelRef = ModelRef()
    window: str = "auto"
    mode: str = "default"


@dataclass(frozen=True)
class JobList:
    """Everything a jobs source lists: the jobs to run and the rows that were not usable."""

    source: Path
    jobs: tuple[Job, ...]
    problems: tuple[JobProblem, ...] = ()

    @property
    def ids(self) -> list[str]:
        return [j.id for j in self.jobs] + [p.id for p in self.problems]

    def __len__(self) -> int:
        return len(self.jobs) + len(self.problems)


# ----------------------------------------------------------------------------------------------- values

def _numbers(value: Any, what: str) -> list[float]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p != ""]
        try:
            return [float(p) for p in parts]
        except ValueError:
            raise PromptError(f"{what} {value!r}: expected numbers separated by ','") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise PromptError(f"{what} {value!r}: expected a list of numbers")
            out.append(float(v))
        return out
    raise PromptError(f"{what} {value!r}: expected numbers")


def _groups(value: Any, what: str) -> list[Any]:
    """A list of groups: JSON ``[[...], [...]]`` (or one flat group ``[...]``), CSV ``a,b;c,d``."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [g.strip() for g in value.split(";") if g.strip()]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [list(value)]  # one group written flat
        return list(value)
    raise PromptError(f"{what} {value!r}: expected a list")


def _int(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{what} {value!r}: expected a whole number") from None
    if number != int(number):
        raise PromptError(f"{what} {value!r}: expected a whole number")
    return int(number)


def _boxes(value: Any, what: str) -> tuple[Box, ...]:
    return tuple(Box.from_sequence(_numbers(g, what), source=f"{what} {i + 1}") for i, g in enumerate(_groups(value, what)))


def _boxes3d(value: Any, what: str) -> tuple[Box3D, ...]:
    return tuple(
        Box3D.from_sequence(_numbers(g, what), source=f"{what} {i + 1}") for i, g in enumerate(_groups(value, what))
    )


def recist_box(values: Sequence[float], *, source: str = "recist") -> Box:
    """The box of a RECIST marker's four ends (x1,y1,x2,y2 the long axis, x3,y3,x4,y4 the short one)."""
    values = list(values)
    if len(values) != 8:
        raise PromptError(
            f"{source} has {len(values)} values; a RECIST marker needs 8: x1,y1,x2,y2 (long axis) x3,y3,x4,y4 (short axis)"
        )
    xs, ys = values[0::2], values[1::2]
    return Box.from_sequence([min(xs), min(ys), max(xs), max(ys)], source=source)


def _points(value: Any, what: str) -> Points | None:
    groups = _groups(value, what)
    if not groups:
        return None
    coords, labels = [], []
    for g in groups:
        numbers = _numbers(g, what)
        if len(numbers) not in (2, 3):
            raise PromptError(f"{what} {g!r}: a point is x,y or x,y,label (1 inside, 0 outside)")
        coords.append(numbers[:2])
        labels.append(int(numbers[2]) if len(numbers) == 3 else 1)
    return Points(np.array(coords, dtype=np.float64), np.array(labels, dtype=np.int64))


def _key_boxes(value: Any, what: str) -> tuple[KeyBox, ...]:
    out = []
    for i, g in enumerate(_groups(value, what)):
        if isinstance(g, Mapping):
            z, box = g.get("z"), g.get("box")
        elif isinstance(g, str) and ":" in g:
            z, box = g.split(":", 1)
        else:
            raise PromptError(f"{what} {g!r}: a key box is z:x0,y0,x1,y1 (JSONL: {{\"z\": 40, \"box\": [x0, y0, x1, y1]}})")
        z_value = _int(z, f"{what} {i + 1} z")
        if z_value is None:
            raise PromptError(f"{what} {g!r}: the key slice z is missing")
        out.append(KeyBox(z_value, Box.from_sequence(_numbers(box, what), source=f"{what} {i + 1}")))
    return tuple(out)


def _clicks(value: Any, what: str) -> tuple[Click, ...]:
    out = []
    for g in _groups(value, what):
        numbers = _numbers(g, what)
        if len(numbers) != 4 or numbers[3] not in (0, 1) or numbers[0] != int(numbers[0]):
            raise PromptError(f"{what} {g!r}: a 3D click is z,y,x,label (z a slice index, label 1 inside or 0 outside)")
        out.append(Click(int(numbers[0]), numbers[1], numbers[2], int(numbers[3])))
    return tuple(out)


def _range(value: Any, what: str) -> tuple[int, int] | None:
    if value is None or value == "" or value == []:
        return None
    numbers = _numbers(value, what)
    if len(numbers) != 2 or any(n != int(n) for n in numbers):
        raise PromptError(f"{what} {value!r}: give two whole numbers first,last")
    lo, hi = int(numbers[0]), int(numbers[1])
    if hi < lo:
        raise PromptError(f"{what} {value!r}: the last ({hi}) is below the first ({lo})")
    return lo, hi


def _names(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(";") if p.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return (str(value),)


def _model(row: Mapping[str, Any], base: Path, default: ModelRef) -> ModelRef:
    """The job's model; the default checkpoint goes only with the default model."""
    name = str(row.get("model") or "").strip() or default.name
    text = str(row.get("checkpoint") or "").strip()
    if not text:
        return ModelRef(name, default.checkpoint if name == default.name else None)
    return ModelRef(name, str(_absolute(text, base)))


def _absolute(text: str, base: Path) -> Path:
    """A path from a jobs file: relative to the file's folder, made absolute (so a rerun from another working
    folder finds the same jobs, with the same fingerprints)."""
    path = Path(text).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def strip_suffix(name: str) -> str:
    """A file name without its image, volume or video suffix (``ct.nii.gz`` -> ``ct``; a folder's name stays)."""
    for suffix in sorted(_STRIP_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def default_id(input_path: Path, base: Path) -> str:
    """``sub/ct_001.nii.gz`` -> ``sub__ct_001``: stable across reruns, unique for distinct inputs."""
    try:
        rel = input_path.resolve().relative_to(base.resolve())
        parts = list(rel.parts)
    except ValueError:
        parts = [input_path.name]
    name = strip_suffix(parts[-1] if parts else "input")
    text = "__".join(parts[:-1] + [name])
    text = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")
    return text[:200] or "job"


def infer_kind(path: Path, has_prompts: bool) -> JobKind:
    name = path.name.lower()
    if name.endswith(RASTER_SUFFIXES):
        return "image"
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith(".npz") and not has_prompts:
        return "npz"
    return "volume"


def build_job(row: Mapping[str, Any], *, base: Path, defaults: JobDefaults = JobDefaults(), source: str = "") -> Job:
    """One job from its fields (JSON values or CSV text); a malformed field raises a MedsamError."""
    unknown = sorted(k for k in row if k not in JOB_FIELDS and k not in DETECTOR_COLUMNS + ("z0", "z1"))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(JOB_FIELDS)}")
    text = row.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InputError("no input: give the image, volume, npz or video file (or DICOM folder) in 'input'")
    text = text.strip()
    uri = text if text.lower().startswith(("dicomweb://", "dicomwebs://")) else ""
    input_path = Path(uri.rstrip("/").rsplit("/", 1)[-1]) if uri else _absolute(text, base)
    boxes = _boxes(row.get("boxes"), "box") + tuple(
        recist_box(_numbers(g, "recist"), source=f"recist {i + 1}") for i, g in enumerate(_groups(row.get("recist"), "recist"))
    )
    boxes3d = _boxes3d(row.get("boxes3d"), "3D box")
    points = _points(row.get("points"), "point")
    key_boxes = _key_boxes(row.get("key_boxes"), "key box")
    clicks = _clicks(row.get("clicks"), "click")
    has_prompts = bool(boxes or boxes3d or points is not None or key_boxes or clicks)
    kind_text = str(row.get("kind") or "").strip().lower()
    if kind_text and kind_text not in KINDS:
        raise InputError(f"kind {kind_text!r}: choose one of {', '.join(KINDS)}")
    kind: JobKind = kind_text or ("volume" if uri else infer_kind(input_path, has_prompts))  # type: ignore[assignment]
    if uri and kind != "volume":
        raise InputError(f"{uri}: a PACS series (dicomweb://) is a volume job, not {kind}")
    slice_index, frame = _int(row.get("slice"), "slice"), _int(row.get("frame"), "frame")
    z_range = _range(row.get("z_range"), "z_range")
    if points is not None and len(boxes) > 1:
        raise PromptError("points refine one object: give them with a single box (or without a box)")
    if kind == "image":
        if boxes3d or key_boxes or clicks or slice_index is not None or frame is not None:
            raise PromptError(f"{input_path.name} is a 2D image: give boxes/points/recist (3D boxes, key boxes, 3D clicks, slice and frame are for volumes and videos)")
    elif kind == "video":
        if boxes3d or key_boxes or clicks:
            raise PromptError(f"{input_path.name} is a video: give boxes/points on 'frame' (3D boxes and 3D clicks are for volumes)")
        if frame is None:
            raise PromptError(f"{input_path.name} is a video: give 'frame', the frame (from 0) the boxes/points are drawn on")
        if not (boxes or points is not None):
            raise PromptError(f"{input_path.name} is a video: give boxes or points on frame {frame}")
    elif kind == "npz":
        if has_prompts:
            raise PromptError("an npz case segments its own stored boxes; give kind 'volume' to prompt it yourself")
    elif kind == "volume":
        if (boxes or points is not None) and slice_index is None:
            raise PromptError("boxes, points and recist on a volume need 'slice': the slice (from 0) they are drawn on")
    outputs = _names(row.get("outputs"))
    kind_outputs = OUTPUTS["everything" if kind in ("image", "volume") and not has_prompts else kind]
    outputs = outputs or kind_outputs[:1]
    bad = [o for o in outputs if o not in kind_outputs]
    if bad:
        what = "segment-everything" if kind in ("image", "volume") and not has_prompts else kind
        raise InputError(f"output(s) {', '.join(bad)} do not exist for a {what} job; choose from {', '.join(kind_outputs)}")
    if len(set(outputs)) != len(outputs):
        raise InputError(f"outputs {';'.join(outputs)} names a format twice")
    primary = PRIMARY_OUTPUTS["everything" if kind in ("image", "volume") and not has_prompts else kind]
    if not any(o in primary for o in outputs):
        outputs = (primary[0],) + tuple(outputs)  # an overlay alone: the masks are still the job's result
    mode = str(row.get("mode") or defaults.mode).strip()
    if mode not in ("default", "reference"):
        raise InputError(f"mode {mode!r}: choose default or reference")
    model = _model(row, base, defaults.model)
    job_id = str(row.get("id") or "").strip() or (
        re.sub(r"[^A-Za-z0-9._-]", "_", input_path.name)[:200] if uri else default_id(input_path, base))
    if not _ID_RE.match(job_id):
        raise InputError(f"id {job_id!r}: use letters, digits, '.', '_' and '-' (it names the job's output folder)")
    return Job(
        id=job_id, kind=kind, input=input_path, outputs=tuple(outputs), model=model, boxes=boxes, boxes3d=boxes3d,
        points=points, slice=slice_index, frame=frame, z_range=z_range, key_boxes=key_boxes, clicks=clicks,
        window=str(row.get("window") or defaults.window).strip(), mode=mode, labels=_names(row.get("labels")),
        source=source, uri=uri,
    )


# ---------------------------------------------------------------------------------------------- sources

def _problem_id(row: Mapping[str, Any], base: Path, number: int) -> str:
    text = str(row.get("id") or "").strip()
    if text and _ID_RE.match(text):
        return text
    inp = str(row.get("input") or "").strip()
    return default_id(base / inp, base) if inp else f"line{number}"


def _collect(
    rows: Iterable[tuple[str, int, Mapping[str, Any] | str]], base: Path, defaults: JobDefaults, source: Path
) -> JobList:
    """Jobs from (where, line number, fields) rows; fields may be a message saying why the line is unusable."""
    jobs: list[Job] = []
    problems: list[JobProblem] = []
    seen: dict[str, str] = {}
    for where, number, row in rows:
        if isinstance(row, str):
            problems.append(JobProblem(f"line{number}", "", row, where))
            continue
        try:
            job = build_job(row, base=base, defaults=defaults, source=where)
        except MedsamError as exc:
            problems.append(JobProblem(_problem_id(row, base, number), str(row.get("input") or ""), str(exc), where))
            continue
        if job.id in seen:
            problems.append(JobProblem(
                f"{job.id}.line{number}", str(job.input),
                f"id {job.id!r} is used twice ({seen[job.id]} and {where}); give each job its own id", where,
            ))
            continue
        seen[job.id] = where
        jobs.append(job)
    taken = set(seen)
    fixed = []
    for p in problems:  # a problem must not share its id (its output folder) with a job
        pid = p.id
        while pid in taken:
            pid = f"{pid}.bad"
        taken.add(pid)
        fixed.append(p if pid == p.id else JobProblem(pid, p.input, p.message, p.source))
    if not jobs and not fixed:
        raise InputError(f"{source} lists no jobs; give one job per line/row with at least an 'input'")
    return JobList(source, tuple(jobs), tuple(fixed))


def read_jsonl(path: Path, defaults: JobDefaults = JobDefaults()) -> JobList:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"jobs file {path} cannot be read ({exc})") from exc
    rows: list[tuple[str, int, Mapping[str, Any] | str]] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            row: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            row = f"not valid JSON ({exc.msg} at column {exc.colno})"
        if not isinstance(row, (dict, str)):
            row = 'a job line must be a JSON object {"input": ...}'
        rows.append((f"{path.name} line {number}", number, row))
    return _collect(rows, path.parent, defaults, path)


def read_csv(path: Path, defaults: JobDefaults = JobDefaults(), *, base: Path | None = None) -> JobList:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            raw = [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"jobs file {path} is not a readable CSV file ({exc})") from exc
    if "input" not in header:
        alias = next((a for a in ("image", "path", "file") if a in header), None)
        if alias is None:
            raise InputError(
                f"jobs file {path} has no 'input' column (it has: {', '.join(header) or 'none'}); "
                f"the columns are {', '.join(JOB_FIELDS)} (or x0,y0,x1,y1 per box)"
            )
        for r in raw:
            r["input"] = r.pop(alias)
    base = base or path.parent
    detector = all(c in header for c in DETECTOR_COLUMNS)
    numbered = [(f"{path.name} line {n}", n, r) for n, r in enumerate(raw, start=2) if any(r.values())]
    if detector:
        numbered = _merge_detector_rows(numbered)
    return _collect(numbered, base, defaults, path)


def _merge_detector_rows(rows: list[tuple[str, int, dict[str, str]]]) -> list[tuple[str, int, dict[str, Any]]]:
    """One object per row (x0,y0,x1,y1[,z0,z1]); rows of the same id (else input) become one job."""
    merged: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for where, number, row in rows:
        key = row.get("id") or row.get("input", "")
        coords = {c: row.pop(c, "") for c in DETECTOR_COLUMNS + ("z0", "z1")}
        if key not in merged:
            merged[key] = (where, number, dict(row, boxes=[], boxes3d=[]))
        target = merged[key][2]
        for k, v in row.items():  # the first row's values stand; a later empty cell changes nothing
            if v and not target.get(k):
                target[k] = v
        if any(coords[c] for c in DETECTOR_COLUMNS):
            if coords["z0"] or coords["z1"]:
                target["boxes3d"].append(",".join(coords[c] for c in ("x0", "y0", "z0", "x1", "y1", "z1")))
            else:
                target["boxes"].append(",".join(coords[c] for c in DETECTOR_COLUMNS))
    out = []
    for where, number, row in merged.values():
        row["boxes"] = ";".join(row["boxes"])
        row["boxes3d"] = ";".join(row["boxes3d"])
        out.append((where, number, row))
    return out


def read_folder(folder: Path, defaults: JobDefaults = JobDefaults()) -> JobList:
    npz = sorted(p for p in folder.glob("*.npz") if p.is_file())
    prompts = next((folder / n for n in PROMPTS_CSV_NAMES if (folder / n).is_file()), None)
    if prompts is not None:
        return read_csv(prompts, defaults, base=folder)
    if npz:
        rows = [(p.name, i + 1, {"input": p.name}) for i, p in enumerate(npz)]
        return _collect(rows, folder, defaults, folder)
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(RASTER_SUFFIXES))
    hint = (f" (it holds {len(images)} images but no {' / '.join(PROMPTS_CSV_NAMES)} with their boxes)" if images else "")
    raise InputError(
        f"folder {folder} holds no CVPR24/25 .npz case and no prompts CSV{hint}; give a folder of npz cases, a folder "
        "of images with prompts.csv (input, x0, y0, x1, y1 per box), or a JOBS.csv / JOBS.jsonl file"
    )


def load_jobs(path: str | Path, defaults: JobDefaults = JobDefaults()) -> JobList:
    """The jobs of a ``.jsonl`` / ``.csv`` file or a folder (see the module doc)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"jobs {path} does not exist; give a JOBS.csv, a JOBS.jsonl or a folder of cases")
    if path.is_dir():
        return read_folder(path, defaults)
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return read_jsonl(path, defaults)
    if name.endswith((".csv", ".tsv")):
        return read_csv(path, defaults)
    raise InputError(f"jobs file {path}: unknown type; give a .csv, a .jsonl or a folder")


__all__ = [
    "Click", "JOB_FIELDS", "Job", "JobDefaults", "JobKind", "JobList", "JobProblem", "KINDS", "KeyBox", "ModelRef",
    "OUTPUTS", "build_job", "default_id", "infer_kind", "load_jobs", "read_csv", "read_folder", "read_jsonl", "recist_box",
]
