"""The CVPR 2025 interactive 3D protocol as a submission: one call per step, refined labels every time.

    segment_cvpr25_case(predictor, "inputs/case.npz", "outputs/case.npz", work_dir="outputs/.medsam_cache")

The challenge's harness ("Foundation Models for Interactive 3D Biomedical Image Segmentation", CVPR25_iter_eval.py)
runs the tool six times per case on the same file name: first with ``imgs``, ``spacing`` and ``boxes`` (per class a
dict: z_min, z_max, z_mid, z_mid_x_min, z_mid_y_min, z_mid_x_max, z_mid_y_max), then five times with ``clicks``
added (per class ``{'fg': [[z, y, x], ...], 'bg': [...]}``, one more click per class each step, at the centre of
the largest error), ``clicks_order`` and ``prev_pred`` (the previous output). Each call writes ``segs`` (D, H, W)
uint8 with class i (0-based in ``boxes``) as value i + 1.

How a step runs here. The box step segments every class from its box (key slice z_mid, trusted z range z_min..z_max)
by propagation (:class:`medsam.inference.interactive3d.InteractiveVolume`). A click step continues from the previous
step: the objects and their prompts are restored from a small state file the previous call left in ``work_dir``
(checked against the image and against ``prev_pred``), and only the new clicks run: each re-segments its slice and
re-propagates until the masks agree with what is there. When the state file is missing or does not match, the
whole history is replayed from the box and every click in order, which gives the same labels (every step is a
deterministic function of the prompts so far). Slice embeddings are kept on disk in ``work_dir`` between calls, so a
click step costs a few decoder calls and the start-up of the process, not the encoder.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import InputError
from medsam.inference.interactive3d import DEFAULT_AGREEMENT, Click3D, InteractiveVolume, KeyBox
from medsam.inference.predictor import Predictor
from medsam.inference.propagate import PropagationConfig
from medsam.io.atomic import atomic_path
from medsam.io.npz import Cvpr25Case, read_cvpr25_case, write_npz_segs

STATE_FORMAT = "medsam-cvpr25-state"
STATE_VERSION = 1


@dataclass(frozen=True)
class Cvpr25StepResult:
    """One call on one case: which step it was, what ran, and how long it took."""

    input_path: Path
    output_path: Path
    classes: int
    clicks_total: int
    clicks_run: int
    resumed: bool  # continued from the previous call's state (else the history was replayed)
    slices_encoded: int
    slices_decoded: int
    seconds: float

    @property
    def step(self) -> str:
        return "box" if self.clicks_total == 0 else f"{self.clicks_total} click(s)"


def image_digest(imgs: np.ndarray) -> str:
    digest = hashlib.sha1(f"{imgs.shape}|{imgs.dtype}".encode())
    digest.update(memoryview(np.ascontiguousarray(imgs)).cast("B"))
    return digest.hexdigest()


def _model_slices(case: Cvpr25Case) -> np.ndarray:
    """The uint8 slices the model sees: ``imgs`` as they are when uint8 (the challenge's are), else windowed."""
    if case.imgs.dtype == np.uint8:
        return case.imgs
    from medsam.preprocess.intensity import apply_window
    from medsam.types import Volume

    return apply_window(Volume(np.asarray(case.imgs)), "auto")


def _clicks_by_step(case: Cvpr25Case) -> list[list[Click3D]]:
    """The clicks in the order the harness added them: step k holds the k-th click of every class."""
    sequences = [c.sequence() for c in case.clicks]
    steps: list[list[Click3D]] = []
    for k in range(max((len(s) for s in sequences), default=0)):
        steps.append([
            Click3D(z, float(y), float(x), label, object_label=i + 1)
            for i, s in enumerate(sequences) if k < len(s) for (z, y, x, label) in [s[k]]
        ])
    return steps


class _Protocol:
    """One case's objects in an InteractiveVolume, driven by the challenge's prompts."""

    def __init__(self, predictor: Predictor, case: Cvpr25Case, config: PropagationConfig, agreement: float) -> None:
        self.case = case
        self.iv = InteractiveVolume(predictor, _model_slices(case), config=config, agreement=agreement,
                                    source=str(case.path))
        self.applied: list[list[int]] = [[] for _ in range(case.n_classes)]  # per class: clicks run, as flat indices

    def box_step(self) -> None:
        for i, box in enumerate(self.case.boxes):
            if box is None:
                continue
            self.iv.add_object(key_boxes=[KeyBox(box.z_mid, box.box)], label=i + 1, z_limits=box.z_limits)

    def click(self, click: Click3D) -> None:
        label = int(click.object_label)  # type: ignore[arg-type]
        if label not in self.iv.object_labels:
            if click.label == 1:  # a class without a box starts from its first foreground click
                self.iv.add_object(key_boxes=[KeyBox(click.z, self._click_box(click))], label=label)
            return
        self.iv.click(click)

    def _click_box(self, click: Click3D):
        from medsam.types import Box

        h, w = self.iv.image_hw
        r = max(8.0, 0.04 * max(h, w))
        return Box(max(0.0, click.x - r), max(0.0, click.y - r), min(w - 1.0, click.x + r), min(h - 1.0, click.y + r))

    def replay(self) -> int:
        self.box_step()
        count = 0
        for step in _clicks_by_step(self.case):
            for c in step:
                self.click(c)
                count += 1
        return count

    def labels(self) -> np.ndarray:
        labels = self.iv.labels()
        return labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels


def _state_path(work_dir: Path, output_path: Path) -> Path:
    return work_dir / "cvpr25_state" / output_path.name


def _read_state(path: Path) -> tuple[dict[str, Any], dict[int, list[np.ndarray]]] | None:
    """The state a previous call left (its prompts as JSON and every part's mask, bit-packed), or None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(str(data["state"]))
            shape = tuple(int(v) for v in data["shape"])
            masks: dict[int, list[np.ndarray]] = {}
            for obj in state.get("objects", []):
                label = int(obj["label"])
                masks[label] = [
                    np.unpackbits(data[f"object{label}_part{k}"], count=int(np.prod(shape))).reshape(shape).astype(bool)
                    for k in range(len(obj["parts"]))
                ]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        return None
    return state, masks


def segment_cvpr25_case(
    predictor: Predictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    work_dir: str | Path | None = None,
    config: PropagationConfig = PropagationConfig(),
    agreement: float = DEFAULT_AGREEMENT,
) -> Cvpr25StepResult:
    """Run one protocol step on ``input_path`` and write ``segs`` to ``output_path`` (replacing the previous step's
    output, as the protocol expects). ``work_dir`` keeps the state between calls (None: always replay)."""
    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    case = read_cvpr25_case(input_path)
    _check_replaceable(output_path)
    config = replace(config, require_key_mask=False)  # one class found empty must not stop the case
    steps = _clicks_by_step(case)
    total = sum(len(s) for s in steps)
    run = _Protocol(predictor, case, config, agreement)
    digest = image_digest(case.imgs)
    state_file = _state_path(Path(work_dir), output_path) if work_dir is not None else None
    saved = _read_state(state_file) if state_file is not None else None
    resumed, clicks_run = False, 0
    if saved is not None and total > 0 and _continues(saved[0], case, digest, steps):
        state, masks = saved
        done = int(state["clicks_total"])
        for obj in state["objects"]:
            label = int(obj["label"])
            run.iv.restore_object(masks[label], obj, fixed={})
        for step in _remaining(steps, done):
            for c in step:
                run.click(c)
                clicks_run += 1
        resumed = True
    else:
        clicks_run = run.replay()
    segs = run.labels()
    write_npz_segs(segs, output_path, overwrite=True)
    if state_file is not None:
        _write_state(state_file, run, digest, total, segs)
    iv = run.iv
    return Cvpr25StepResult(input_path, output_path, case.n_classes, total, clicks_run, resumed, iv.encoder.encoded,
                            iv.slices_decoded, time.perf_counter() - start)


def _check_replaceable(output_path: Path) -> None:
    """The protocol rewrites the same output every step; anything there must be an earlier step's ``segs``."""
    if not output_path.exists():
        return
    try:
        with np.load(output_path, allow_pickle=False) as data:
            if "segs" in data.files:
                return
    except (OSError, ValueError, EOFError):
        pass
    raise InputError(f"output {output_path} exists and is not an earlier step's segs npz; it is left as it is "
                     "(give another output folder)")


def _continues(state: dict[str, Any], case: Cvpr25Case, digest: str, steps: list[list[Click3D]]) -> bool:
    """The saved state belongs to this image, ``prev_pred`` is the output it wrote, and its clicks are a prefix of
    this call's."""
    if state.get("image") != digest or case.prev_pred is None:
        return False
    if state.get("segs") != image_digest(np.asarray(case.prev_pred, dtype=np.uint8)):
        return False
    done = int(state.get("clicks_total", -1))
    flat = [[c.z, int(c.y), int(c.x), c.label, c.object_label] for step in steps for c in step]
    return 0 <= done <= len(flat) and state.get("clicks") == flat[:done]


def _remaining(steps: list[list[Click3D]], done: int) -> list[list[Click3D]]:
    out, seen = [], 0
    for step in steps:
        if seen >= done:
            out.append(step)
        elif seen + len(step) > done:
            out.append(step[done - seen:])
        seen += len(step)
    return out


def _write_state(path: Path, run: _Protocol, digest: str, total: int, segs: np.ndarray) -> None:
    steps = _clicks_by_step(run.case)
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "image": digest,
        "segs": image_digest(np.asarray(segs, dtype=np.uint8)),
        "clicks_total": total,
        "clicks": [[c.z, int(c.y), int(c.x), c.label, c.object_label] for step in steps for c in step],
        "objects": [run.iv.object_state(label) for label in run.iv.object_labels],
    }
    arrays = {"state": np.array(json.dumps(state)), "shape": np.array(segs.shape, dtype=np.int64)}
    for label in run.iv.object_labels:
        for k, m in enumerate(run.iv.part_masks(label)):
            arrays[f"object{label}_part{k}"] = np.packbits(m.reshape(-1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
