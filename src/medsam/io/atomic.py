"""Atomic output: write to a temporary name beside the target, then rename; never overwrite unasked."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from medsam.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = _read_umask()


def _current_umask() -> int:
    return _UMASK


def check_writable(path: str | Path, *, overwrite: bool = False) -> Path:
    """Validate an output path before any work is done: it is new unless overwrite; its folder is created."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} already exists; choose another name or pass --overwrite")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output folder {path.parent} cannot be created: {exc}") from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``, else delete it.

    The temporary name keeps the target's suffixes (e.g. ``.nii.gz``) so libraries that choose the
    format from the extension write the right one.
    """
    target = check_writable(path, overwrite=overwrite)
    suffix = "".join(target.suffixes) or ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        if target.exists() and not overwrite:
            raise OutputError(f"output {target} appeared while writing; not overwritten")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Like atomic_path for a folder of outputs (e.g. a DICOM series): built under a temporary name, then renamed."""
    import shutil

    target = check_writable(path, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_current_umask())
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise OutputError(f"output {target} appeared while writing; not overwritten")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
