"""Execution options: which engine runs the model, at which precision, on how many threads.

    ExecutionOptions()                                   # "auto": the default fast path on this machine
    ExecutionOptions(precision="fp32", backend="torch")  # the exact path (matches the golden outputs)
    ExecutionOptions(precision="bf16", backend="openvino", threads=2)

``resolve()`` turns "auto" into a concrete choice for this machine and what is installed:

- backend auto: openvino if installed, else onnxruntime, else torch (on a CUDA device: always torch);
- precision auto: the encoder and the decoder in fp32. The default path is thus OpenVINO in fp32: embeddings
  agree with the exact path to about 1e-6 and every mask of the 150 2D development cases equals the exact
  path's (benchmarks/speed.py --per-dataset 0). A bf16 decoder (``decoder_precision="bf16"``) takes about
  0.5x of the fp32 decoder's time but moved one of those masks to DSC 0.970, so it is an option, not the default.

bf16 (``precision="bf16"``, CLI ``--precision bf16``) is the fastest path where the CPU computes bf16
natively (AVX512-BF16 / AMX; ``cpu_has_native_bf16()``): with OpenVINO its encoder is about 5x faster than
the exact path's (OpenVINO fp32: about 2.2-2.6x), but it is not the default: its embeddings differ from fp32 by about 6% (relative norm) on real
images, which leaves most masks unchanged (DSC >= 0.98 against fp32) but moves some ambiguous ones (13 of the 150
2D development masks below 0.98, the lowest at 0.71), while the mean DSC against the ground truth stays within
0.003. benchmarks/speed.py and benchmarks/precision.py measure all of this. ``precision="fp32", backend="torch"`` (CLI ``--precision fp32
--backend torch``) is the exact path: the model's own eager code, which the golden tests check.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

from medsam.errors import MedsamError

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
_BACKEND_MODULE = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


class OptionsError(MedsamError, ValueError):
    """An execution option has a value that does not exist."""


@dataclass(frozen=True)
class ExecutionOptions:
    """How to run a model. precision: auto|fp32|bf16|int8; backend: auto|torch|onnxruntime|openvino;
    threads: intra-op threads (None: the number of cores this process may use)."""

    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    decoder_precision: str | None = None  # None: as ``precision`` (int8: fp32); "auto" decides it too

    def __post_init__(self) -> None:
        if self.precision not in ("auto",) + PRECISIONS:
            raise OptionsError(f"precision {self.precision!r} does not exist; use one of auto, {', '.join(PRECISIONS)}")
        if self.decoder_precision not in (None, "fp32", "bf16"):
            raise OptionsError(f"decoder_precision {self.decoder_precision!r} does not exist; use fp32 or bf16")
        if self.backend not in ("auto",) + BACKENDS:
            raise OptionsError(f"backend {self.backend!r} does not exist; use one of auto, {', '.join(BACKENDS)}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise OptionsError(f"threads={self.threads!r}: give a positive whole number, or None for all cores")

    @classmethod
    def exact(cls, threads: int | None = None) -> "ExecutionOptions":
        """The reference path: eager PyTorch in fp32, the one the golden fidelity tests check."""
        return cls("fp32", "torch", threads)

    @property
    def is_exact(self) -> bool:
        return self.precision == "fp32" and self.backend == "torch" and self.decoder_precision in (None, "fp32")

    def resolve(self, device: str = "cpu") -> "ExecutionOptions":
        """A concrete choice (no "auto") for this machine, the installed engines and ``device`` ("cpu"/"cuda...")."""
        on_cpu = str(device).startswith("cpu")
        backend = self.backend
        if backend == "auto":
            backend = next((b for b in ("openvino", "onnxruntime") if engine_installed(b)), "torch") if on_cpu else "torch"
        precision = "fp32" if self.precision == "auto" else self.precision
        decoder = self.decoder_precision
        if decoder is None:
            if self.precision == "auto":
                decoder = "fp32"
            else:
                decoder = "fp32" if precision == "int8" else precision
        threads = self.threads if self.threads is not None else default_threads()
        return ExecutionOptions(precision, backend, threads, decoder)

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        exact = " (exact)" if self.is_exact else ""
        decoder = self.decoder_precision
        mixed = f" (decoder {decoder})" if decoder not in (None, self.precision) else ""
        return f"{self.backend} {self.precision}{mixed}{threads}{exact}"


def engine_installed(backend: str) -> bool:
    """Whether the package behind ``backend`` can be imported (without importing it)."""
    return importlib.util.find_spec(_BACKEND_MODULE[backend]) is not None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 is faster than fp32 here."""
    import torch

    try:
        if not torch.backends.mkldnn.is_available():
            return False
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_flags_have_bf16()
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags_have_bf16() -> bool:
    # oneDNN's "bf16 supported" is also true for plain AVX-512 (emulated, slower than fp32); ask for the
    # instructions that make bf16 fast. Where /proc/cpuinfo is absent (macOS, Windows) trust oneDNN.
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return True
    return True


def default_threads() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)
