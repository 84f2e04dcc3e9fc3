"""Evaluation datasets: a manifest CSV, a CVPR24 npz folder, or a pair of folders, listed as typed cases.

Three sources, each becoming a list of :class:`Case` (2D and 3D may mix in one list):

- a manifest CSV in the layout of ``shared/data/cases.csv``: columns ``dataset, case, modality, dims,
  image, mask, label, target`` with paths relative to the CSV. Only ``image`` and ``mask`` are required;
  ``dataset`` defaults to the CSV's folder name, ``case`` to the image's name, ``dims`` to the file type
  (volume suffixes are 3D), ``label`` to "any non-zero value".
- a CVPR 2024 MedSAM-on-laptop npz folder: each ``*.npz`` holds ``imgs`` and ``gts`` (and optionally
  ``boxes``); every label of ``gts`` is one case (``<file>_label<L>`` when a file has several), and when
  ``boxes`` has one row per label 1..N, row L-1 is that case's given box.
- a pair of folders ``images/`` and ``masks/`` matched by file name (suffixes ignored): every non-zero
  value of a mask is one case.

A row that cannot become a usable case (a label that is not a number, an image without a mask) is still
listed, with ``Case.problem`` saying what is wrong, so the runner reports it in the results and goes on.
Listing nothing at all is an InputError.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from medsam.errors import InputError
from medsam.io.raster import RASTER_SUFFIXES
from medsam.io.volume import VOLUME_SUFFIXES
from medsam.types import Box, Box3D

Dims = Literal["2d", "3d"]
MANIFEST_COLUMNS = ("dataset", "case", "modality", "dims", "image", "mask", "label", "target")


@dataclass(frozen=True)
class Case:
    """One object to segment in one image or volume, with its reference mask.

    dataset / case_id: the case's identity (unique together). modality: free text ("CT", "MRI", ...),
    used to group results and, for volumes, to choose the intensity window.
    dims: "2d" (an image) or "3d" (a volume). image_path / mask_path: files (they may be the same npz).
    label: the mask value that marks the object; None means every non-zero value.
    target: what the object is ("liver"), for people. box: a prompt box that came with the data
    (CVPR24 ``boxes``), used instead of the tight box. source: where the case was listed (file and row).
    problem: why the case cannot be evaluated (then the runner reports it and goes on), else None.
    """

    dataset: str
    case_id: str
    modality: str
    dims: Dims
    image_path: Path
    mask_path: Path
    label: int | None = None
    target: str = ""
    box: Box | Box3D | None = None
    source: str = ""
    problem: str | None = None

    @property
    def key(self) -> str:
        """``dataset/case``: the identity used for seeds and tables."""
        return f"{self.dataset}/{self.case_id}"


def _stem(path: Path) -> str:
    """A file name without its suffixes (``a.nii.gz`` -> ``a``)."""
    name = path.name
    lower = name.lower()
    for suffix in sorted(VOLUME_SUFFIXES + RASTER_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _dims_of(path: Path) -> Dims:
    """2D for raster files, 3D for volume files (an npz is decided when it is read)."""
    return "2d" if path.name.lower().endswith(RASTER_SUFFIXES) else "3d"


def read_manifest(path: str | Path) -> list[Case]:
    """The cases listed in a manifest CSV (see the module doc); paths are resolved against the CSV's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist (or is not a file); give a CSV like shared/data/cases.csv")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"manifest {path} is not a readable CSV file ({exc})") from exc
    missing = [c for c in ("image", "mask") if c not in header]
    if missing:
        raise InputError(
            f"manifest {path} lacks the column(s) {', '.join(missing)} (it has: {', '.join(header) or 'none'}); "
            f"expected the columns {', '.join(MANIFEST_COLUMNS)} (paths relative to the CSV)"
        )
    base = path.parent
    cases: list[Case] = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        if not any(row.values()):
            continue
        source = f"{path.name} line {number}"
        image = base / row["image"] if row["image"] else base
        mask = base / row["mask"] if row["mask"] else base
        problems = []
        if not row["image"]:
            problems.append("the image column is empty")
        if not row["mask"]:
            problems.append("the mask column is empty")
        dims_text = row.get("dims", "").lower()
        if dims_text in ("2d", "3d"):
            dims: Dims = dims_text  # type: ignore[assignment]
        else:
            dims = _dims_of(image)
            if dims_text:
                problems.append(f"dims {row['dims']!r} is neither 2d nor 3d")
        label: int | None = None
        label_text = row.get("label", "")
        if label_text:
            try:
                value = float(label_text)
                if value != int(value) or value <= 0:
                    raise ValueError
                label = int(value)
            except ValueError:
                problems.append(f"label {label_text!r} is not a positive whole number (the mask value of the object)")
        cases.append(
            Case(
                dataset=row.get("dataset") or base.name,
                case_id=row.get("case") or _stem(image),
                modality=row.get("modality", ""),
                dims=dims,
                image_path=image,
                mask_path=mask,
                label=label,
                target=row.get("target", ""),
                source=source,
                problem=("; ".join(problems) + f" ({source})") if problems else None,
            )
        )
    if not cases:
        raise InputError(f"manifest {path} lists no cases: add rows with {', '.join(MANIFEST_COLUMNS)}")
    return cases


def _npz_arrays(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Only the named arrays of an npz file (np.load reads members on access)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in keys if k in data.files}


def _labels_of(mask: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(mask) if v != 0]


def read_npz_folder(folder: str | Path) -> list[Case]:
    """One case per label per ``*.npz`` file of a CVPR24 folder (see the module doc)."""
    from medsam.io.npz import modality_from_name

    folder = Path(folder).expanduser()
    cases: list[Case] = []
    for path in sorted(folder.glob("*.npz")):
        source = path.name
        base = dict(dataset=folder.name, modality=modality_from_name(path) or "", image_path=path, mask_path=path)
        try:
            arrays = _npz_arrays(path, ("gts", "boxes"))
        except Exception as exc:  # noqa: BLE001 - any unreadable file becomes a reported row
            cases.append(Case(case_id=path.stem, dims="3d", source=source, problem=f"{path} cannot be read ({exc})", **base))
            continue
        gts = arrays.get("gts")
        if gts is None:
            cases.append(Case(case_id=path.stem, dims="3d", source=source, problem=f"{path} has no 'gts' array", **base))
            continue
        dims: Dims = "3d" if gts.ndim == 3 else "2d"
        labels = _labels_of(gts)
        if not labels:
            cases.append(Case(case_id=path.stem, dims=dims, source=source, problem=f"{path}: 'gts' is empty", **base))
            continue
        boxes = _given_boxes(arrays.get("boxes"), labels, dims)
        for label in labels:
            case_id = path.stem if len(labels) == 1 else f"{path.stem}_label{label}"
            cases.append(
                Case(case_id=case_id, dims=dims, label=label, target=f"label {label}", box=boxes.get(label),
                     source=source, **base)
            )
    return cases


def _given_boxes(raw: np.ndarray | None, labels: list[int], dims: Dims) -> dict[int, Box | Box3D]:
    """CVPR24 boxes: row i belongs to label i + 1 when there is one row per label 1..N; else none are used."""
    if raw is None:
        return {}
    width = 6 if dims == "3d" else 4
    arr = np.asarray(raw, dtype=np.float64).reshape(-1, width) if np.size(raw) % width == 0 else None
    if arr is None or labels != list(range(1, arr.shape[0] + 1)):
        return {}
    make = Box3D.from_sequence if dims == "3d" else Box.from_sequence
    return {label: make(arr[label - 1]) for label in labels}


def _read_mask_labels(path: Path) -> list[int]:
    if path.name.lower().endswith(RASTER_SUFFIXES):
        from medsam.io.raster import read_image

        mask = read_image(path)
        if mask.ndim == 3:
            mask = mask[..., 0]
    elif path.name.lower().endswith(".npz"):
        mask = _npz_arrays(path, ("gts",)).get("gts")
        if mask is None:
            raise InputError(f"{path} has no 'gts' array")
    else:
        from medsam.io.volume import read_volume

        mask = read_volume(path).array
    return _labels_of(mask)


def read_paired_folders(folder: str | Path) -> list[Case]:
    """Cases from ``folder/images`` and ``folder/masks`` matched by name; one case per non-zero mask value."""
    folder = Path(folder).expanduser()
    images = {_stem(p): p for p in sorted((folder / "images").iterdir()) if p.is_file() and not p.name.startswith(".")}
    masks = {_stem(p): p for p in sorted((folder / "masks").iterdir()) if p.is_file() and not p.name.startswith(".")}
    cases: list[Case] = []
    for name, image in images.items():
        base = dict(dataset=folder.name, modality="", dims=_dims_of(image), image_path=image)
        mask = masks.get(name)
        if mask is None:
            cases.append(Case(case_id=name, mask_path=folder / "masks" / name, source=f"images/{image.name}",
                              problem=f"image {image} has no mask named {name}.* in {folder / 'masks'}", **base))
            continue
        try:
            labels = _read_mask_labels(mask)
        except Exception as exc:  # noqa: BLE001 - reported as the case's problem
            cases.append(Case(case_id=name, mask_path=mask, source=f"masks/{mask.name}",
                              problem=f"mask {mask} cannot be read ({exc})", **base))
            continue
        if not labels:
            cases.append(Case(case_id=name, mask_path=mask, source=f"masks/{mask.name}",
                              problem=f"mask {mask} is empty (all zero)", **base))
        for label in labels:
            case_id = name if len(labels) == 1 else f"{name}_label{label}"
            cases.append(Case(case_id=case_id, mask_path=mask, label=label, source=f"masks/{mask.name}", **base))
    for name, mask in masks.items():
        if name not in images:
            cases.append(Case(dataset=folder.name, case_id=name, modality="", dims=_dims_of(mask),
                              image_path=folder / "images" / name, mask_path=mask, source=f"masks/{mask.name}",
                              problem=f"mask {mask} has no image named {name}.* in {folder / 'images'}"))
    return cases


def load_cases(
    data: str | Path | Iterable[Case],
    *,
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Case]:
    """The cases of a manifest CSV, a CVPR24 npz folder, a folder pair images/ + masks/, or a list of Cases.

    A folder holding ``cases.csv`` is read as that manifest. datasets: keep only these dataset names
    (an unknown name is an InputError listing the known ones). limit: at most this many cases of each
    dataset, in listed order. Nothing to evaluate is an InputError.
    """
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if not path.exists():
            raise InputError(f"--data {path} does not exist; give a manifest CSV, a CVPR24 npz folder or a folder with images/ and masks/")
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise InputError(f"--data {path} is a file but not a .csv manifest; give a manifest CSV or a folder")
            cases = read_manifest(path)
        elif (path / "images").is_dir() and (path / "masks").is_dir():
            cases = read_paired_folders(path)
        elif any(path.glob("*.npz")):
            cases = read_npz_folder(path)
        elif (path / "cases.csv").is_file():
            cases = read_manifest(path / "cases.csv")
        else:
            cases = []
        where = str(path)
    else:
        cases = list(data)
        bad = [c for c in cases if not isinstance(c, Case)]
        if bad:
            raise InputError(f"data: expected a path or Case objects, got {type(bad[0]).__name__}")
        where = "the given list"
    if not cases:
        raise InputError(
            f"no cases found in {where}: give a manifest CSV (columns {', '.join(MANIFEST_COLUMNS)}), a folder of "
            "CVPR24 .npz files (imgs, gts), or a folder with images/ and masks/ whose files match by name"
        )
    if datasets:
        wanted = [d.strip() for d in datasets if d.strip()]
        known = list(dict.fromkeys(c.dataset for c in cases))
        unknown = [d for d in wanted if d not in known]
        if unknown:
            raise InputError(f"dataset(s) {', '.join(unknown)} not in {where}; known datasets: {', '.join(known)}")
        cases = [c for c in cases if c.dataset in wanted]
    if limit is not None:
        if int(limit) < 1:
            raise InputError(f"limit {limit}: give a number of cases per dataset >= 1")
        counts: dict[str, int] = {}
        kept = []
        for c in cases:
            counts[c.dataset] = counts.get(c.dataset, 0) + 1
            if counts[c.dataset] <= int(limit):
                kept.append(c)
        cases = kept
    seen: dict[str, str] = {}
    for c in cases:
        if c.key in seen:
            raise InputError(
                f"case {c.key} is listed twice ({seen[c.key]} and {c.source}); give every case of a dataset its own id"
            )
        seen[c.key] = c.source
    return cases
