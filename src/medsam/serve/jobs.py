"""Background jobs of a session: propagating an accepted label through the volume, with progress to poll.

A job runs in its own thread. Each step of ``medsam.inference.propagate`` (encode a slice, decode the
objects on it) runs under the model lock at job priority, so prompts from people get in between slices.
Results are written into the session's label volume slice by slice as they come (the page shows them
growing) and saved every few slices and at the end; cancelling keeps what was written.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from medsam.errors import MedsamError
from medsam.serve.engine import JOB, ModelEngine, threads
from medsam.serve.errors import Conflict
from medsam.serve.session import LabelEntry, Session, utc_now
from medsam.types import Box

log = logging.getLogger("medsam.serve")
SAVE_EVERY = 8


@dataclass
class PropagationJob:
    session: Session
    engine: ModelEngine
    label: int
    key_slice: int
    z_range: tuple[int, int]
    mode: str = "default"
    keep_accepted: bool = True
    batch_size: int = 1
    limited: bool = False  # z_range was given: the label may not leave it (else it stops where the object ends)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"
    slices_done: int = 0
    slices_written: list[int] = field(default_factory=list)
    message: str | None = None
    started_utc: str = field(default_factory=utc_now)
    finished_utc: str | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def slices_total(self) -> int:
        return self.z_range[1] - self.z_range[0] + 1

    @property
    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        return min(1.0, self.slices_done / max(1, self.slices_total))

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"medsam-propagate-{self.id}", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from medsam.inference.propagate import ObjectPrompt, PropagationConfig, Propagator

        session, engine = self.session, self.engine
        self.state = "running"
        try:
            with session.lock:
                entry = session.label_by(self.label)
                key_mask = session.labels[self.key_slice] == entry.value
                protected = set(entry.accepted_slices) | set(entry.corrected_slices) if self.keep_accepted else set()
                previously = set(entry.propagated_slices)
            box = Box.from_mask(key_mask)
            if box is None:
                raise Conflict(f"label {entry.name!r} has no pixels on key slice {self.key_slice}; accept a mask there first")
            config = PropagationConfig(mode=self.mode, batch_size=max(1, self.batch_size))  # type: ignore[arg-type]
            prompt = ObjectPrompt(z=self.key_slice, box=box, z_limits=self.z_range if self.limited else None)
            stack = session.stack
            run = Propagator(engine.predictor, stack.model_slices, [prompt], config, source=f"session {session.id}")
            steps = run.run()
            reached: set[int] = set()
            unsaved = 0
            while not self._cancel.is_set():
                with engine.lock.hold(JOB), threads(engine.encode_threads):
                    result = next(steps, None)
                if result is None:
                    break
                self.slices_done += 1
                z = result.z
                if not result.object_ids:
                    continue
                reached.add(z)
                if z in protected:
                    continue
                mask = result.masks[0]
                with session.lock:
                    entry = self._entry()
                    session.set_slice_label(z, entry, mask, mode="replace", source="propagated")
                    self.slices_written.append(z)
                    unsaved += 1
                    if unsaved >= SAVE_EVERY:
                        session.save()
                        unsaved = 0
            steps.close()
            with session.lock:
                entry = self._entry()
                if not self._cancel.is_set():  # slices an earlier propagation filled that this one did not reach
                    for z in sorted(previously - reached - protected):
                        if self.z_range[0] <= z <= self.z_range[1]:
                            session.clear_slice_label(z, entry)
                if entry.interaction:  # the boxes of slices it rewrote are stale; the corrections' prompts stay
                    entry.interaction = {**entry.interaction,
                                         "parts": [{**p, "boxes": {}} for p in entry.interaction.get("parts", [])]}
                session.save()
            ends = "; ".join(f"{'up' if e.direction > 0 else 'down'}: {e.reason} at slice {e.last_z}" for e in run.ends)
            self.message = f"wrote {len(self.slices_written)} slices" + (f" ({ends})" if ends else "")
            self.state = "cancelled" if self._cancel.is_set() else "done"
        except MedsamError as exc:
            self.state, self.message = "failed", str(exc)
        except Exception as exc:  # reported to the person polling, and logged with its traceback
            log.exception("propagation job %s failed", self.id)
            self.state, self.message = "failed", f"internal error: {exc.__class__.__name__}: {exc}"
        finally:
            self.finished_utc = utc_now()

    def _entry(self) -> LabelEntry:
        entry = self.session.labels_table.get(self.label)
        if entry is None:
            self._cancel.set()
            raise Conflict(f"label {self.label} was deleted while propagating; stopped")
        return entry


def default_key_slice(session: Session, entry: LabelEntry) -> int:
    """The accepted slice where the label is largest (else any slice holding it)."""
    candidates = entry.accepted_slices or session.label_stats(entry.value)[1]
    if not candidates:
        raise Conflict(f"label {entry.name!r} has no pixels yet; accept a mask on a slice before propagating it")
    areas = [(int(np.count_nonzero(session.labels[z] == entry.value)), z) for z in candidates]
    return max(areas)[1]


def wait_all(jobs: list[PropagationJob], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    for job in jobs:
        job.wait(max(0.0, end - time.monotonic()))
