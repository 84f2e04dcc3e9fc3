"""A cache on disk of exported and compiled models, so an export happens once per machine.

Where: ``$MEDSAM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/medsam``, else ``~/.cache/medsam``.
Each artefact (e.g. ``lite_medsam-encoder-fp32.onnx``) has a stamp beside it (``.json``) saying what it was
built from: the model's name and weight fingerprint, the precision, the ONNX opset, the versions of medsam,
torch and the engine libraries. An artefact whose stamp differs from the current one is stale and is rebuilt.
Artefacts and stamps are written atomically (temporary name, then rename), so a crash or two processes
building at once never leave a half-written file behind; the stamp is written after its artefact.
OpenVINO's own compiled-blob cache lives in the ``openvino/`` subfolder (OpenVINO checks those blobs itself).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from medsam.errors import OutputError
from medsam.io.atomic import atomic_path

CACHE_ENV = "MEDSAM_CACHE_DIR"


def cache_root() -> Path:
    """The folder of the model cache (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medsam"


def package_versions(*names: str) -> tuple[tuple[str, str], ...]:
    """(name, version) of installed distributions, "absent" for missing ones (read from metadata, no import)."""
    out = []
    for name in names:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "absent"))
    return tuple(out)


@dataclass(frozen=True)
class BuildStamp:
    """What an artefact was built from; two equal stamps mean the artefact can be reused."""

    model: str
    fingerprint: str
    part: str  # "encoder" or "decoder"
    precision: str
    opset: int
    graph_version: int = 0
    versions: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    extra: str = ""

    @property
    def filename(self) -> str:
        tail = f"-{self.extra}" if self.extra else ""
        return f"{self.model}-{self.part}-{self.precision}{tail}.onnx"

    def to_json(self) -> str:
        data = asdict(self)
        data["versions"] = dict(self.versions)
        return json.dumps(data, indent=1, sort_keys=True)


class ModelCache:
    """Artefacts under ``root`` (default: ``cache_root()``), rebuilt when their stamp is stale."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.builds = 0  # artefacts built by this object (tests and benchmarks read it)

    def path_for(self, stamp: BuildStamp) -> Path:
        return self.root / stamp.filename

    def is_fresh(self, stamp: BuildStamp) -> bool:
        path = self.path_for(stamp)
        stamp_path = path.with_suffix(".json")
        try:
            return path.is_file() and stamp_path.read_text() == stamp.to_json()
        except OSError:
            return False

    def get_or_build(self, stamp: BuildStamp, build: Callable[[Path], None]) -> Path:
        """The artefact for ``stamp``: reused when fresh, else ``build(tmp_path)`` writes it and it is stamped."""
        path = self.path_for(stamp)
        if self.is_fresh(stamp):
            return path
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"the model cache folder {self.root} cannot be created ({exc}); set {CACHE_ENV} to a writable folder"
            ) from exc
        with atomic_path(path, overwrite=True) as tmp:
            build(tmp)
        with atomic_path(path.with_suffix(".json"), overwrite=True) as tmp:
            tmp.write_text(stamp.to_json())
        self.builds += 1
        return path

    def subdir(self, name: str) -> Path:
        """A folder inside the cache for an engine's own cache (created)."""
        folder = self.root / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"the model cache folder {folder} cannot be created ({exc}); set {CACHE_ENV} to a writable folder"
            ) from exc
        return folder
