"""What a server is started with: one frozen value passed to ``create_app`` (no globals)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from medsam.errors import InputError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def default_sessions_dir() -> Path:
    """``$XDG_DATA_HOME/medsam/sessions`` (``~/.local/share/medsam/sessions``): work kept across restarts."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "medsam" / "sessions"


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Options of ``medsam serve``.

    data_root: the only folder whose files ``open by path`` may read (None: opening by path is refused).
    token: when set, every API request must carry it (``Authorization: Bearer TOKEN`` or ``X-Medsam-Token``).
    sessions_dir: where each session keeps its source copy, accepted labels and exports.
    max_upload_mb: the largest request body (uploads included) in MiB; larger ones get 413.
    cache_mb: bound of the embedding cache (LiteMedSAM: 4 MiB per slice).
    prefetch_slices: neighbours on each side of the viewed slice encoded ahead in the background (0 = off).
    prefetch_idle_s: the background encoder starts a slice only when the person has sent nothing for this long
        (an encode cannot be interrupted: a prompt that arrives during one waits for it, see wait_ms).
    history_limit: prompt steps kept per slice and object for undo/redo.
    max_drafts: drafts (slice, object prompt histories) kept per session; the oldest are dropped.
    allowed_hosts: Host header values accepted (guards a loopback server against DNS rebinding); None = the
        loopback names when bound to loopback, anything otherwise; ("*",) = anything.
    propagation_batch: slices encoded per model-lock turn while propagating (1 keeps prompts responsive).
    warm_up: run each kind of decode once at start so the first prompt is as fast as the next ones.
    decode_threads / encode_threads: torch threads for prompts / for encoding and propagation (None = torch's
        default, all cores). One decode thread keeps prompts fast when other programs share the cores.
    precision / backend / threads: the execution engine (``medsam.inference.engines``): "auto" is the team's
        fast path (OpenVINO fp32 when installed: the same masks); precision "fp32" with backend "torch" is the
        exact eager path. ``threads`` is the engine's own thread count (OpenVINO/onnxruntime).
    refinement: how /refine turns clicks into prompts (``medsam.inference.refine``): None = the model's own
        (box_update for LiteMedSAM/MedSAM, sam for SAM), or "box_update" / "sam".
    dicomweb_url: a PACS's DICOMweb service root (http(s)://HOST:PORT/dicom-web, or dicomweb(s)://...): the page lists
        its studies and series, opens one, and stores accepted labels back (``medsam.serve.pacs``). Credentials come
        from the ``MEDSAM_DICOMWEB_*`` environment (``medsam.io.dicomweb``), never from the command line.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    data_root: Path | None = None
    token: str | None = None
    sessions_dir: Path = field(default_factory=default_sessions_dir)
    model: str = "lite_medsam"
    checkpoint: str | None = None
    device: str | None = None
    max_upload_mb: float = 512.0
    cache_mb: float = 512.0
    prefetch_slices: int = 2
    prefetch_idle_s: float = 1.5
    history_limit: int = 32
    max_drafts: int = 128
    allowed_hosts: tuple[str, ...] | None = None
    propagation_batch: int = 1
    warm_up: bool = True
    decode_threads: int | None = 1
    encode_threads: int | None = None
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    refinement: str | None = None
    dicomweb_url: str | None = None

    def __post_init__(self) -> None:
        if self.dicomweb_url:
            from medsam.io.dicomweb import service_url

            object.__setattr__(self, "dicomweb_url", service_url(self.dicomweb_url))
        else:
            object.__setattr__(self, "dicomweb_url", None)
        if self.data_root is not None:
            root = Path(self.data_root).expanduser()
            if not root.is_dir():
                raise InputError(f"--data-root {root} is not a folder; give an existing folder of images/volumes")
            object.__setattr__(self, "data_root", root.resolve())
        object.__setattr__(self, "sessions_dir", Path(self.sessions_dir).expanduser())
        if self.token is not None and len(self.token) == 0:
            object.__setattr__(self, "token", None)
        if self.max_upload_mb <= 0:
            raise InputError(f"--max-upload-mb {self.max_upload_mb}: give a positive size in MiB")
        if self.prefetch_slices < 0:
            raise InputError("prefetch_slices cannot be negative")
        if self.refinement not in (None, "model", "box_update", "sam"):
            raise InputError(f"refinement {self.refinement!r}: use box_update or sam (or leave it unset for the model's own)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def host_allowlist(self) -> tuple[str, ...] | None:
        """The Host header values to accept, or None for any."""
        if self.allowed_hosts is not None:
            return None if "*" in self.allowed_hosts else tuple(h.lower() for h in self.allowed_hosts)
        if is_loopback(self.host):
            return LOOPBACK_NAMES
        return None
