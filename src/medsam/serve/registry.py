"""The sessions a server knows: created from an upload or a data-root path, reopened from sessions_dir."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import BinaryIO

from medsam.errors import InputError
from medsam.io.raster import RASTER_SUFFIXES
from medsam.io.volume import VOLUME_SUFFIXES
from medsam.preprocess.orientation import check_orientation
from medsam.serve.errors import NotFound
from medsam.serve.session import SESSION_ID, Session, SourceRecord, utc_now
from medsam.serve.settings import ServeSettings
from medsam.serve.source import load_stack, resolve_in_root, safe_filename, save_upload, unpack_zip

log = logging.getLogger("medsam.serve")
UPLOAD_SUFFIXES = RASTER_SUFFIXES + tuple(VOLUME_SUFFIXES) + (".zip",)


class SessionRegistry:
    """Sessions by id. The registry lock guards the dict only; each session has its own lock."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.root = Path(settings.sessions_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.reopen()

    def _kwargs(self) -> dict:
        return {"history_limit": self.settings.history_limit, "max_drafts": self.settings.max_drafts}

    def reopen(self) -> int:
        """Load every session record found in sessions_dir (sources are read on first use)."""
        found = 0
        for folder in sorted(self.root.iterdir()):
            if not (folder.is_dir() and SESSION_ID.match(folder.name) and (folder / "session.json").is_file()):
                continue
            try:
                session = Session.read(folder, **self._kwargs())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("session folder %s is not readable and is skipped: %s", folder, exc)
                continue
            with self._lock:
                if session.id not in self._sessions:
                    self._sessions[session.id] = session
                    found += 1
        return found

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id!r} does not exist; list sessions with GET /api/sessions or open a new one")
        return session

    def list(self) -> list[Session]:
        with self._lock:
            return sorted(self._sessions.values(), key=lambda s: s.created_utc)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    # --- creating -------------------------------------------------------------------------------------

    def _new_folder(self) -> tuple[str, Path]:
        sid = uuid.uuid4().hex[:16]
        folder = self.root / sid
        folder.mkdir()
        return sid, folder

    def _register(
        self, sid: str, folder: Path, source: SourceRecord, window: str, name: str | None, source_path: Path,
        orientation: str = "canonical",
    ) -> Session:
        orientation = check_orientation(orientation)
        stack = load_stack(source_path, window, orientation)
        record = {
            "id": sid,
            "name": name or source.filename,
            "created_utc": utc_now(),
            "source": source.__dict__,
            "dims": stack.dims,
            "model_window": window,
            "orientation": orientation,
            "reorientation": stack.orientation.to_dict() if stack.dims == "3d" else None,
            "shape": list(stack.shape),
            "revision": 0,
            "labels": [],
        }
        session = Session(folder, record, **self._kwargs())
        session.ensure_loaded(self.settings.data_root, stack)
        session.write_record()
        with self._lock:
            self._sessions[sid] = session
        return session

    def open_path(
        self, relative: str, *, window: str = "auto", name: str | None = None, orientation: str = "canonical"
    ) -> Session:
        """A session on a file or DICOM folder inside the data root (the file is read, not copied); a volume is
        shown and segmented in the view of ``orientation``."""
        root = self.settings.data_root
        path = resolve_in_root(root, relative)
        rel = path.relative_to(root).as_posix() if root is not None else str(path)
        sid, folder = self._new_folder()
        try:
            return self._register(sid, folder, SourceRecord("data_root", rel, path.name), window, name, path, orientation)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def open_upload(
        self, filename: str, stream: BinaryIO, *, window: str = "auto", name: str | None = None,
        orientation: str = "canonical",
    ) -> Session:
        """A session on an uploaded file (an image, a volume file, or a .zip of a DICOM series)."""
        clean = safe_filename(filename)
        if not clean.lower().endswith(UPLOAD_SUFFIXES):
            raise InputError(
                f"upload {filename!r}: unknown file type; send an image (PNG, JPEG, TIFF, BMP), a volume "
                "(.nii.gz, .nii, .nrrd, .mha, .npz, .dcm) or a .zip of a DICOM series"
            )
        sid, folder = self._new_folder()
        try:
            source_dir = folder / "source"
            source_dir.mkdir()
            target = source_dir / clean
            save_upload(stream, target, self.settings.max_upload_bytes)
            read_path = target
            if clean.lower().endswith(".zip"):
                read_path = unpack_zip(target, source_dir / "unpacked", self.settings.max_upload_bytes)
                target.unlink()
            rel = read_path.relative_to(folder).as_posix()
            return self._register(sid, folder, SourceRecord("upload", rel, clean), window, name, read_path, orientation)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def open_fetched(self, filename: str, fetch, *, window: str = "auto", name: str | None = None) -> Session:
        """A session on a source that ``fetch(source_dir) -> path to read`` puts into the new session's folder (e.g. a
        series from a PACS); it is kept like an upload, so the session reopens without the remote server."""
        sid, folder = self._new_folder()
        try:
            source_dir = folder / "source"
            source_dir.mkdir()
            read_path = Path(fetch(source_dir))
            rel = read_path.relative_to(folder).as_posix()
            return self._register(sid, folder, SourceRecord("upload", rel, safe_filename(filename)), window, name, read_path)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def delete(self, session_id: str) -> None:
        session = self.get(session_id)
        jobs = list(session.jobs.values())
        for job in jobs:
            job.cancel()
        for job in jobs:  # outside the session lock: a job needs it to finish its last slice
            job.wait(30)
        with session.lock:
            with self._lock:
                self._sessions.pop(session_id, None)
            trash = Path(tempfile.mkdtemp(prefix=f".deleted-{session_id}-", dir=self.root))
            session.folder.rename(trash / session_id)
            shutil.rmtree(trash, ignore_errors=True)
