"""CVPR 2024 "MedSAM on laptop" npz cases in, ``segs`` out, as the challenge expects.

    segment_npz_path(predictor, "imgs/", "segs/")        # a file or a folder of *.npz

Each input ``<name>.npz`` holds ``imgs`` ((H, W, 3) or (H, W) for 2D, (D, H, W) uint8 for 3D) and ``boxes``
((N, 4) x0,y0,x1,y1 or (N, 6) x0,y0,z0,x1,y1,z1, inclusive); the output ``<out>/<name>.npz`` holds ``segs``
on the image grid with object i (file order, 1-based) as value i, a later box overwriting an earlier one, as
the official inference does. 2D cases are one image encoding and one batched decoder call; 3D cases go
through :mod:`medsam.inference.propagate` (``mode="reference"`` is the official procedure).

A MedSAM2-layout file carries a ``direction``: its volume is segmented in the view of ``orientation``
(:mod:`medsam.preprocess.orientation`; default "canonical", "stored" in the reference mode) and ``segs`` is
written on the stored grid; the file's ``boxes`` are stored-array indices and are mapped to the view. Files
without a direction (the CVPR24 layout) are taken as stored (identity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from medsam.errors import InputError, OutputError
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import ObjectPrompt, PropagationConfig, prompt_to_view, segment_stack
from medsam.io.atomic import check_writable
from medsam.types import Box, Box3D


@dataclass(frozen=True)
class NpzCaseResult:
    input_path: Path
    output_path: Path
    is_3d: bool
    objects: int
    seconds: float
    orientation: str = "stored: as stored"


def npz_inputs(path: str | Path) -> list[Path]:
    """The npz files to segment: the file itself, or every ``*.npz`` in a folder (sorted)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npz") if p.is_file())
        if not files:
            raise InputError(f"folder {path} holds no .npz file; give CVPR24 npz cases (imgs, boxes)")
        return files
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if path.suffix.lower() != ".npz":
        raise InputError(f"{path} is not an .npz file")
    return [path]


def segment_npz_case(
    predictor: Predictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    config: PropagationConfig = PropagationConfig(),
    orientation: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> NpzCaseResult:
    """Segment one CVPR24 npz case from its stored boxes and write ``segs`` to ``output_path`` (atomic).
    ``orientation``: what the model sees of a 3D case (see the module doc); ``segs`` is on the stored grid."""
    from medsam.inference.segment3d import default_orientation
    from medsam.io.npz import read_npz_case, write_npz_segs
    from medsam.preprocess.orientation import check_orientation, orient_volume

    start = time.perf_counter()
    name = check_orientation(orientation or default_orientation(config.mode))
    check_writable(output_path, overwrite=overwrite)
    case = read_npz_case(input_path)
    described = "stored: as stored"
    if not case.boxes:
        raise InputError(f"{input_path} has no 'boxes'; a CVPR24 case needs one box per object to segment")
    if case.is_3d:
        volume = case.image
        if volume.dtype != np.uint8:
            from medsam.preprocess.intensity import apply_window

            volume = apply_window(case.volume, "auto")
        oriented = orient_volume(case.volume, name)
        reo = oriented.reorientation
        described = reo.summary()
        boxes3d = [b for b in case.boxes if isinstance(b, Box3D)]
        prompts = [prompt_to_view(ObjectPrompt.from_box3d(b), reo, index=i, source=str(input_path), mode=config.mode)
                   for i, b in enumerate(boxes3d)]
        # A batch run must not stop on one object whose key slice comes out empty.
        seg = segment_stack(predictor, oriented.array_to_view(volume), prompts, replace(config, require_key_mask=False),
                            progress=progress, source=str(input_path))
        segs = oriented.labels_to_source(seg.labels)
    else:
        predictor.set_image(case.image, source=str(input_path))
        boxes = [b for b in case.boxes if isinstance(b, Box)]
        segs = predictor.predict(boxes=boxes).label_map()
    write_npz_segs(segs, output_path, overwrite=overwrite)
    return NpzCaseResult(
        Path(input_path), Path(output_path), case.is_3d, len(case.boxes), time.perf_counter() - start, described
    )


def segment_npz_path(
    predictor: Predictor,
    input_path: str | Path | list[Path],
    output_dir: str | Path,
    *,
    config: PropagationConfig = PropagationConfig(),
    orientation: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Iterator[NpzCaseResult]:
    """Segment one npz file or every npz in a folder into ``output_dir/<same name>.npz``; yields each result.

    Every output name is checked before the first case runs, so an existing file stops the run at once.
    """
    from medsam.inference.segment3d import default_orientation
    from medsam.preprocess.orientation import check_orientation

    check_orientation(orientation or default_orientation(config.mode))
    files = list(input_path) if isinstance(input_path, list) else npz_inputs(input_path)
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output {output_dir} is a file; for npz input give a folder (segs keep the input names)")
    if output_dir.resolve() == Path(files[0]).parent.resolve():
        raise OutputError(f"output folder {output_dir} is the input folder; give another folder for the segs")
    targets = [output_dir / f.name for f in files]
    for target in targets:
        check_writable(target, overwrite=overwrite)
    from tqdm.auto import tqdm

    for source, target in tqdm(list(zip(files, targets)), desc="cases", unit="case", disable=not progress or len(files) < 2):
        yield segment_npz_case(predictor, source, target, config=config, orientation=orientation, overwrite=overwrite,
                               progress=progress and len(files) == 1)


def is_npz_input(path: str | Path) -> bool:
    """True for an .npz file or a folder (the `medsam segment` dispatch to this module)."""
    path = Path(path).expanduser()
    return path.is_dir() or path.name.lower().endswith(".npz")
