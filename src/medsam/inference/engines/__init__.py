"""Execution engines: run a model's encoder and decoder on PyTorch, onnxruntime or OpenVINO, in fp32/bf16/int8.

    from medsam.inference.engines import ExecutionOptions, make_predictor
    predictor = make_predictor(build_model("lite_medsam"))                       # default fast path
    predictor = make_predictor(model, ExecutionOptions("fp32", "torch"))         # exact (golden) path
    predictor = make_predictor(model, ExecutionOptions("bf16", "openvino", threads=2))

The default (``ExecutionOptions()``, "auto") is OpenVINO when installed (else onnxruntime, else PyTorch) with
the encoder and the decoder in fp32: the masks of the exact path. bf16 (where the CPU computes it natively) is
faster but can move ambiguous masks; see ``options.py``. ``--precision fp32 --backend torch`` is the exact path: the model's own eager
``encode``/``decode``, which the golden tests check.

Exported graphs are kept in the model cache (``model_cache.py``: ``$MEDSAM_CACHE_DIR`` or ``~/.cache/medsam``),
stamped with what they were built from and rebuilt when stale. An engine that is not installed or cannot
run gives a ``BackendUnavailableError`` message as a warning and the same job runs on PyTorch instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from medsam.errors import BackendUnavailableError
from medsam.inference.engines.model_cache import BuildStamp, ModelCache, cache_root, package_versions
from medsam.inference.engines.options import (
    BACKENDS, PRECISIONS, ExecutionOptions, OptionsError, cpu_has_native_bf16, engine_installed,
)

__all__ = [
    "BACKENDS", "PRECISIONS", "BackendUnavailableError", "Engines", "ExecutionOptions", "ModelCache", "OptionsError",
    "cache_root", "cpu_has_native_bf16", "engine_installed", "make_engines", "make_predictor",
]


@dataclass(frozen=True)
class Engines:
    """The encoder and decoder callables chosen for a model, and the options actually in force."""

    encoder: Callable[..., Any]
    decoder: Callable[..., Any]
    options: ExecutionOptions  # resolved: what runs (after any fallback)
    requested: ExecutionOptions
    fallback: str = ""  # why the request could not be met, when it could not

    @property
    def is_exact(self) -> bool:
        return self.options.is_exact


def make_engines(
    model, options: ExecutionOptions | None = None, *, cache: ModelCache | None = None, lazy_encoder: bool = False
) -> Engines:
    """Engines for ``model`` (a SamModel from build_model) under ``options`` (default: the fast path here).

    A missing or failing optional engine warns (its BackendUnavailableError message) and falls back to
    PyTorch at the same precision; never raises for that reason. ``lazy_encoder``: OpenVINO compiles the encoder at
    its first call (for processes that mostly read embeddings from a disk cache).
    """
    requested = options or ExecutionOptions()
    resolved = requested.resolve(str(model.device))
    fallback = ""
    if resolved.backend != "torch" and model.device.type != "cpu":
        fallback = f"{resolved.backend} runs on the CPU only; the model is on {model.device}"
        resolved = ExecutionOptions(resolved.precision, "torch", resolved.threads, "fp32")
    engines = None
    if resolved.backend != "torch":
        run, note = resolved, fallback
        if resolved.backend == "onnxruntime" and "bf16" in (resolved.precision, resolved.decoder_precision):
            if resolved.precision == "bf16" or requested.decoder_precision == "bf16":
                note = "onnxruntime has no bf16 kernels for the CPU; it runs fp32"
            precision = "fp32" if resolved.precision == "bf16" else resolved.precision
            run = ExecutionOptions(precision, "onnxruntime", resolved.threads, "fp32")
        try:
            engines = _onnx_engines(model, run, requested, cache or ModelCache(), note, lazy_encoder)
        except BackendUnavailableError as exc:
            fallback = str(exc)
            resolved = ExecutionOptions(resolved.precision, "torch", resolved.threads, "fp32")
    if engines is None:
        engines = _torch_engines(model, resolved, requested, fallback)
    if engines.fallback:
        warnings.warn(
            f"{engines.fallback}; running on {engines.options.describe()} instead", RuntimeWarning, stacklevel=2
        )
    return engines


def make_predictor(
    model, options: ExecutionOptions | None = None, *, cache: ModelCache | None = None, lazy_encoder: bool = False,
    **kwargs,
):
    """A Predictor whose encoder and decoder run under ``options``; kwargs go to Predictor (e.g. cache_bytes)."""
    from medsam.inference.predictor import Predictor

    engines = make_engines(model, options, cache=cache, lazy_encoder=lazy_encoder)
    if engines.is_exact:
        return Predictor(model, **kwargs)
    return Predictor(model, encoder=engines.encoder, decoder=engines.decoder, **kwargs)


def _torch_engines(model, resolved: ExecutionOptions, requested: ExecutionOptions, fallback: str) -> Engines:
    import torch

    if requested.threads is not None:
        torch.set_num_threads(requested.threads)
    precision = resolved.precision
    if precision == "int8":
        precision = "bf16" if model.device.type != "cpu" or cpu_has_native_bf16() else "fp32"
        note = f"int8 runs on onnxruntime or openvino only; PyTorch runs {precision}"
        fallback = f"{fallback}; {note}" if fallback else note
    if precision == "bf16" and model.device.type == "cpu" and not cpu_has_native_bf16() and requested.precision == "bf16":
        note = "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated and slower than fp32"
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    actual = ExecutionOptions(precision, "torch", resolved.threads, "fp32")
    if actual.is_exact:
        return Engines(model.encode, model.decode, actual, requested, fallback)
    from medsam.inference.engines.torch_engine import TorchDecoder, TorchEncoder
    from medsam.models.optimize import inference_copy

    fast = inference_copy(model)
    return Engines(TorchEncoder(fast, precision), TorchDecoder(fast, "fp32"), actual, requested, fallback)


def _onnx_engines(
    model, resolved: ExecutionOptions, requested: ExecutionOptions, cache: ModelCache, fallback: str,
    lazy_encoder: bool = False,
) -> Engines:
    from medsam.inference.engines.base import CoreDecoder, import_engine
    from medsam.inference.engines.exports import exported_decoder, exported_encoder

    import_engine(resolved.backend)  # fail early, before any export, when the engine is missing
    threads = int(resolved.threads or 1)
    enc_path = exported_encoder(model, resolved.precision, resolved.backend, cache)
    dec_precision = resolved.decoder_precision or "fp32"
    dec_path = exported_decoder(model, cache)
    try:
        if resolved.backend == "onnxruntime":
            from medsam.inference.engines.onnxruntime_engine import OnnxRuntimeDecoderCore, OnnxRuntimeEncoder

            encoder = OnnxRuntimeEncoder(enc_path, threads, resolved.precision)
            core = OnnxRuntimeDecoderCore(dec_path, threads)
        else:
            from medsam.inference.engines.openvino_engine import OpenVINODecoderCore, OpenVINOEncoder

            # One blob folder per precision: OpenVINO 2026.4's blob key ignores INFERENCE_PRECISION_HINT, and an
            # f32 blob loaded under the bf16 hint computes NaNs.
            encoder = OpenVINOEncoder(enc_path, resolved.precision, threads, cache.subdir(f"openvino-{resolved.precision}"),
                                      lazy=lazy_encoder)
            core = OpenVINODecoderCore(dec_path, dec_precision, threads, cache.subdir(f"openvino-{dec_precision}"))
    except BackendUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - an engine failing to load a graph must not crash the job
        raise BackendUnavailableError(f"{resolved.backend} could not load the exported model ({type(exc).__name__}: {exc})") from exc
    decoder = CoreDecoder(model, core, f"{resolved.backend} {dec_precision}")
    return Engines(encoder, decoder, resolved, requested, fallback)
