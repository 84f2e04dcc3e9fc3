"""One annotation session: a source image or volume, its accepted labels, drafts and exports.

On disk (``sessions_dir/<id>/``), written atomically on every accepted change:

- ``session.json``: the record (source, model window, orientation, label table, revision) people and tools
  can read; ``orientation`` is the name asked for and ``reorientation`` the map it gave (permutation and
  flips of the stored axes), so a restarted server shows the session in the same view (a record without
  them predates orientations: its labels are in the stored frame, and it reopens "stored");
- ``labels.npz``: the label volume (only slices holding labels: ``z``, ``slices``, ``shape``) with the label
  table and revision inside, so this one file is always self-consistent;
- ``source/``: an uploaded image or volume (sessions opened by path keep the path inside the data root);
- ``exports/``: what ``export`` wrote (never overwritten unless asked).

A session is reopened from its folder by a restarted server; its source is read again on first use.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import InputError, MedsamError, OutputError
from medsam.io.atomic import atomic_path
from medsam.preprocess.orientation import AxisReorientation, check_orientation
from medsam.serve.errors import Conflict, NotFound
from medsam.serve.history import Drafts
from medsam.serve.source import ImageStack, load_stack

SESSION_ID = re.compile(r"^[0-9a-f]{8,32}$")
FORMAT = "medsam-session"
VERSION = 1
MAX_LABELS = 255


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass
class LabelEntry:
    value: int
    name: str
    colour: str
    accepted_slices: list[int] = field(default_factory=list)
    propagated_slices: list[int] = field(default_factory=list)
    corrected_slices: list[int] = field(default_factory=list)  # 3D corrections' clicked slices
    interaction: dict[str, Any] | None = None  # the prompts of 3D corrections (InteractiveVolume.object_state)


@dataclass
class SourceRecord:
    kind: str  # "upload" | "data_root"
    path: str  # relative to the session folder (upload) or to the data root
    filename: str


class Session:
    """State of one session. Hold ``lock`` while reading or changing labels/drafts; the stack is immutable."""

    def __init__(self, folder: Path, record: dict[str, Any], *, history_limit: int = 32, max_drafts: int = 128) -> None:
        self.folder = folder
        self.id: str = record["id"]
        self.name: str = record.get("name") or self.id
        self.created_utc: str = record.get("created_utc") or utc_now()
        self.updated_utc: str = record.get("updated_utc") or self.created_utc
        self.source = SourceRecord(**record["source"])
        self.dims: str = record.get("dims", "3d")
        self.model_window: str = record.get("model_window", "auto")
        # Labels live in the view frame of this orientation; records from before orientations were stored.
        self.orientation: str = check_orientation(record.get("orientation", "stored"))
        saved = record.get("reorientation")
        self.reorientation: AxisReorientation | None = AxisReorientation.from_dict(saved) if saved else None
        self.shape: tuple[int, int, int] | None = tuple(record["shape"]) if record.get("shape") else None
        self.revision: int = int(record.get("revision", 0))
        self.labels_table: dict[int, LabelEntry] = {
            int(e["value"]): LabelEntry(**e) for e in record.get("labels", [])
        }
        self.lock = threading.RLock()
        self.drafts = Drafts(max_drafts, history_limit)
        self.stack: ImageStack | None = None
        self.labels: np.ndarray | None = None  # (z, y, x) uint8
        self._slice_counts: dict[int, np.ndarray] = {}
        self.problem: str | None = None
        self.jobs: dict[str, Any] = {}

    # --- loading --------------------------------------------------------------------------------------

    def source_path(self, data_root: Path | None) -> Path:
        if self.source.kind == "upload":
            return self.folder / self.source.path
        if data_root is None:
            raise InputError(
                f"session {self.id} was opened from {self.source.path!r} in a data root, but this server has no "
                "--data-root; restart it with the same --data-root to reopen the session"
            )
        from medsam.serve.source import resolve_in_root

        return resolve_in_root(data_root, self.source.path)

    def ensure_loaded(self, data_root: Path | None, stack: ImageStack | None = None) -> ImageStack:
        """Read the source (first use after a restart) and the saved labels; errors say what to do.
        ``stack``: the source already read (a new session)."""
        with self.lock:
            if self.stack is not None:
                return self.stack
            if stack is None:
                try:
                    stack = load_stack(
                        self.source_path(data_root), self.model_window, self.orientation, expected=self.reorientation
                    )
                except MedsamError as exc:
                    self.problem = str(exc)
                    raise
            if self.shape is not None and tuple(stack.shape) != tuple(self.shape):
                self.problem = (
                    f"the source {self.source.path!r} now has shape {stack.shape}, but the session's labels were made "
                    f"on {tuple(self.shape)}; the file changed. The labels are kept in {self.folder / 'labels.npz'}"
                )
                raise Conflict(self.problem)
            self.shape = stack.shape
            if stack.dims == "3d":
                self.reorientation = stack.orientation
            self.labels = self._read_labels(stack.shape)
            self._slice_counts = {}
            for z in np.flatnonzero(self.labels.reshape(stack.depth, -1).any(axis=1)):
                self._count(int(z))
            self.stack = stack
            self.problem = None
            return stack

    def _read_labels(self, shape: tuple[int, int, int]) -> np.ndarray:
        labels = np.zeros(shape, dtype=np.uint8)
        path = self.folder / "labels.npz"
        if not path.is_file():
            return labels
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_shape = tuple(int(v) for v in data["shape"])
                if stored_shape != tuple(shape):
                    raise Conflict(
                        f"session {self.id}: saved labels have shape {stored_shape} but the source has {tuple(shape)}"
                    )
                zs = data["z"]
                if zs.size:
                    labels[zs] = data["slices"]
                table = json.loads(str(data["table"]))
                revision = int(data["revision"])
        except (OSError, KeyError, ValueError) as exc:
            raise Conflict(f"session {self.id}: {path} cannot be read ({exc}); it is left as it is") from exc
        if revision >= self.revision:  # labels.npz is written first: it is the newest truth
            self.labels_table = {int(e["value"]): LabelEntry(**e) for e in table}
            self.revision = revision
        return labels

    # --- labels ---------------------------------------------------------------------------------------

    def _count(self, z: int) -> None:
        counts = np.bincount(self.labels[z].reshape(-1), minlength=256)
        if counts[1:].any():
            self._slice_counts[z] = counts
        else:
            self._slice_counts.pop(z, None)

    def label_by(self, key: int | str) -> LabelEntry:
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit() and int(key) in self.labels_table):
            entry = self.labels_table.get(int(key))
            if entry is not None:
                return entry
        for entry in self.labels_table.values():
            if entry.name == key:
                return entry
        names = ", ".join(f"{e.value}={e.name!r}" for e in self.labels_table.values()) or "none yet"
        raise NotFound(f"label {key!r} does not exist in session {self.id} (labels: {names})")

    def find_or_create_label(self, name: str, colour: str | None) -> LabelEntry:
        for entry in self.labels_table.values():
            if entry.name == name:
                if colour is not None:
                    entry.colour = colour.lower()
                return entry
        free = [v for v in range(1, MAX_LABELS + 1) if v not in self.labels_table]
        if not free:
            raise Conflict(f"session {self.id} already has {MAX_LABELS} labels; delete or reuse one")
        value = free[0]
        from medsam.io.labels import palette_colour

        entry = LabelEntry(value, name, (colour or hex_colour(palette_colour(value))).lower())
        self.labels_table[value] = entry
        return entry

    def set_slice_label(self, z: int, entry: LabelEntry, mask: np.ndarray, *, mode: str, source: str) -> int:
        """Write ``mask`` as ``entry`` on slice z (replace: the label's other pixels there are cleared)."""
        plane = self.labels[z]
        if mode == "replace":
            plane[plane == entry.value] = 0
        plane[mask] = entry.value
        self._count(z)
        accepted, propagated = set(entry.accepted_slices), set(entry.propagated_slices)
        if source == "accepted":
            accepted.add(z)
            propagated.discard(z)
        else:
            propagated.add(z)
        entry.accepted_slices, entry.propagated_slices = sorted(accepted), sorted(propagated)
        return int(mask.sum())

    def clear_slice_label(self, z: int, entry: LabelEntry) -> None:
        plane = self.labels[z]
        plane[plane == entry.value] = 0
        self._count(z)
        entry.accepted_slices = [s for s in entry.accepted_slices if s != z]
        entry.propagated_slices = [s for s in entry.propagated_slices if s != z]
        entry.corrected_slices = [s for s in entry.corrected_slices if s != z]

    def delete_label(self, entry: LabelEntry) -> None:
        for z in list(self._slice_counts):
            if self._slice_counts[z][entry.value]:
                plane = self.labels[z]
                plane[plane == entry.value] = 0
                self._count(z)
        del self.labels_table[entry.value]

    def label_stats(self, value: int) -> tuple[int, list[int]]:
        slices = sorted(z for z, c in self._slice_counts.items() if c[value])
        return int(sum(int(self._slice_counts[z][value]) for z in slices)), slices

    def slice_label_values(self, z: int) -> list[int]:
        counts = self._slice_counts.get(z)
        return [] if counts is None else [int(v) for v in np.flatnonzero(counts[1:]) + 1]

    # --- persistence ----------------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "name": self.name,
            "created_utc": self.created_utc,
            "updated_utc": self.updated_utc,
            "source": asdict(self.source),
            "dims": self.dims,
            "model_window": self.model_window,
            "orientation": self.orientation,
            "reorientation": self.reorientation.to_dict() if self.reorientation is not None else None,
            "shape": list(self.shape) if self.shape else None,
            "revision": self.revision,
            "labels": [asdict(e) for e in sorted(self.labels_table.values(), key=lambda e: e.value)],
        }

    def save(self) -> None:
        """Bump the revision and write labels.npz then session.json, each atomically (call under the lock)."""
        self.revision += 1
        self.updated_utc = utc_now()
        record = self.record()
        if self.labels is not None:
            zs = np.array(sorted(self._slice_counts), dtype=np.int64)
            slices = self.labels[zs] if zs.size else np.zeros((0, *self.labels.shape[1:]), np.uint8)
            with atomic_path(self.folder / "labels.npz", overwrite=True) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(
                        fh,
                        shape=np.array(self.labels.shape, dtype=np.int64),
                        z=zs,
                        slices=slices,
                        table=np.array(json.dumps(record["labels"])),
                        revision=np.array(self.revision, dtype=np.int64),
                    )
        self.write_record(record)

    def write_record(self, record: dict[str, Any] | None = None) -> None:
        record = record or self.record()
        try:
            with atomic_path(self.folder / "session.json", overwrite=True) as tmp:
                tmp.write_text(json.dumps(record, indent=1))
        except OSError as exc:
            raise OutputError(f"session {self.id}: cannot write {self.folder / 'session.json'}: {exc}") from exc

    @classmethod
    def read(cls, folder: Path, **kwargs: Any) -> "Session":
        path = folder / "session.json"
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT or record.get("id") != folder.name:
            raise InputError(f"{path} is not a medsam session record of folder {folder.name}")
        return cls(folder, record, **kwargs)
