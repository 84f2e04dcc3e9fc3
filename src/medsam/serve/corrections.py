"""3D corrections of a label in a session: a click or a box on any slice re-segments it and re-propagates.

The label's voxels, its accepted slices (fixed: never changed) and the prompts of earlier corrections (kept in the
label's ``interaction`` record) are loaded into a :class:`medsam.inference.interactive3d.InteractiveVolume`; the
click (or box) runs there under the model lock; the slices whose mask changed are written back into the session's
label volume (the clicked slice recorded in ``corrected_slices``, the re-propagated ones in ``propagated_slices``)
and saved. Every correction can be undone (in the order they were made, while the server runs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsam.errors import PromptError
from medsam.serve.engine import INTERACTIVE, ModelEngine, threads
from medsam.serve.errors import Conflict
from medsam.serve.session import LabelEntry, Session
from medsam.serve.source import ImageStack

MAX_UNDO = 32


@dataclass
class CorrectionRecord:
    """What one correction changed: the label's previous mask on each changed slice and its previous record."""

    label: int
    planes: dict[int, np.ndarray]
    accepted: list[int]
    propagated: list[int]
    corrected: list[int]
    interaction: dict[str, Any] | None


@dataclass(frozen=True)
class CorrectionResult:
    label: int
    z: int
    changed_slices: tuple[int, ...]
    ends: tuple[str, ...]
    revision: int
    model_ms: float


@dataclass
class CorrectionHistory:
    records: list[CorrectionRecord] = field(default_factory=list)

    def push(self, record: CorrectionRecord) -> None:
        self.records.append(record)
        del self.records[:-MAX_UNDO]


def _state_of(entry: LabelEntry) -> dict[str, Any]:
    """The interaction record of a label; a label that was only accepted and propagated has one part, no anchors."""
    state = dict(entry.interaction) if entry.interaction else {"label": entry.value, "parts": [{"anchors": {}}]}
    state["label"] = entry.value
    state["fixed_slices"] = sorted(set(entry.accepted_slices))
    return state


def correct_label(
    session: Session,
    stack: ImageStack,
    engine: ModelEngine,
    history: CorrectionHistory,
    label: int | str,
    z: int,
    *,
    points: np.ndarray,
    point_labels: np.ndarray,
    box: Any = None,
    strategy: str | None = None,
    agreement: float | None = None,
) -> CorrectionResult:
    """Clicks (K, 2) in slice pixels (labels 1/0) and/or a box on slice z for ``label``, re-propagated."""
    from medsam.inference.interactive3d import DEFAULT_AGREEMENT, Click3D, InteractiveVolume
    from medsam.inference.propagate import PropagationConfig
    from medsam.types import Box

    if stack.dims != "3d":
        raise PromptError("3D corrections need a volume; on a 2D image use the slice's prompts and refine")
    z = stack.check_z(z)
    if box is None and len(points) == 0:
        raise PromptError("a correction needs a click (points with point_labels) or a box on the slice")
    with session.lock:
        entry = session.label_by(label)
        if any(j.active and j.label == entry.value for j in session.jobs.values()):
            raise Conflict(f"label {entry.name!r} is being propagated; wait for the job or cancel it")
        value = entry.value
        mask = session.labels == value
        if not mask.any():
            raise Conflict(f"label {entry.name!r} has no voxels yet; accept a mask on a slice first")
        state = _state_of(entry)
        revision = session.revision
    iv = InteractiveVolume(engine.predictor, stack.model_slices, config=PropagationConfig(),
                           agreement=agreement or DEFAULT_AGREEMENT, strategy=strategy, source=f"session {session.id}")
    start = time.perf_counter()
    ends: list[str] = []
    engine.touch()
    with engine.lock.hold(INTERACTIVE), threads(engine.encode_threads):
        iv.restore_object(mask, state)
        if box is not None:
            b = Box.from_sequence(box, source="box").validate(stack.hw, source="box")
            ends += iv.set_box(value, z, b).ends
        for (x, y), lab in zip(np.asarray(points, dtype=np.float64).reshape(-1, 2), np.asarray(point_labels).reshape(-1)):
            ends += iv.click(Click3D(z, float(y), float(x), int(lab), object_label=value)).ends
    model_ms = (time.perf_counter() - start) * 1000.0
    new = iv.object_mask(value)
    with session.lock:
        if session.revision != revision:
            raise Conflict(f"label {label!r} changed while the correction ran; try the click again")
        entry = session.label_by(value)
        changed = [int(k) for k in np.flatnonzero((new != mask).reshape(new.shape[0], -1).any(axis=1))]
        history.push(CorrectionRecord(
            value, {k: mask[k].copy() for k in changed}, list(entry.accepted_slices), list(entry.propagated_slices),
            list(entry.corrected_slices), entry.interaction,
        ))
        for k in changed:
            if new[k].any():
                session.set_slice_label(k, entry, new[k], mode="replace", source="propagated")
            else:
                session.clear_slice_label(k, entry)
        corrected = set(entry.corrected_slices) | {z}
        entry.corrected_slices = sorted(corrected)
        entry.propagated_slices = [k for k in entry.propagated_slices if k not in corrected]
        entry.interaction = iv.object_state(value)
        session.save()
        return CorrectionResult(value, z, tuple(changed), tuple(ends), session.revision, model_ms)


def undo_correction(session: Session, history: CorrectionHistory) -> CorrectionResult:
    """Put back what the last correction changed."""
    with session.lock:
        if not history.records:
            raise Conflict("no 3D correction to undo in this session")
        record = history.records.pop()
        entry = session.labels_table.get(record.label)
        if entry is None:
            raise Conflict(f"label {record.label} was deleted since; nothing to undo")
        for k, plane in record.planes.items():
            if plane.any():
                session.set_slice_label(k, entry, plane, mode="replace", source="propagated")
            else:
                session.clear_slice_label(k, entry)
        entry.accepted_slices = record.accepted
        entry.propagated_slices = record.propagated
        entry.corrected_slices = record.corrected
        entry.interaction = record.interaction
        session.save()
        return CorrectionResult(record.label, -1, tuple(sorted(record.planes)), (), session.revision, 0.0)
