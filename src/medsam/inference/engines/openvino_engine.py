"""OpenVINO engines (CPU plugin) reading the exported ONNX graphs.

Configuration: ``INFERENCE_PRECISION_HINT`` bf16 or f32 (bf16 runs on AMX / AVX512-BF16; OpenVINO keeps
the numerically sensitive ops in f32), ``PERFORMANCE_HINT`` LATENCY with one stream and
``INFERENCE_NUM_THREADS`` threads, and ``CACHE_DIR`` in the medsam model cache, so the compiled blob is
made once per machine and later loads skip the compilation (OpenVINO checks the blob against the
model and the configuration itself).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from medsam.inference.engines.base import import_engine, to_numpy as _np

_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}


def compile_model(path: Path, precision: str, threads: int, cache_dir: Path | None):
    ov = import_engine("openvino")
    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": _HINT[precision],
    }
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return core.compile_model(str(path), "CPU", config)


class OpenVINOEncoder:
    """lazy: compile on the first call instead of now (a process that finds every embedding in a disk cache, such as
    a CVPR 2025 click step, then never pays for it; a compilation error then surfaces at that call)."""

    def __init__(self, path: Path, precision: str, threads: int, cache_dir: Path | None, *, lazy: bool = False) -> None:
        self._args = (path, precision, threads, cache_dir)
        self.request = None
        self.lock = threading.Lock()  # one infer request: one call at a time (e.g. a server's threads)
        self.name = f"openvino {precision}"
        self.cache_tag = f"openvino-{precision}"
        if not lazy:
            self._compile()

    def _compile(self) -> None:
        self.compiled = compile_model(*self._args)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with self.lock:
            if self.request is None:
                self._compile()
            out = self.request.infer({"images": _np(images)})
            return torch.from_numpy(np.array(out["embeddings"])).to(images.device)


class OpenVINODecoderCore:
    def __init__(self, path: Path, precision: str, threads: int, cache_dir: Path | None) -> None:
        self.compiled = compile_model(path, precision, threads, cache_dir)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, embeddings, sparse, dense):
        dev = embeddings.device
        with self.lock:
            out = self.request.infer({"embeddings": _np(embeddings), "sparse": _np(sparse), "dense": _np(dense)})
            return torch.from_numpy(np.array(out["masks"])).to(dev), torch.from_numpy(np.array(out["iou"])).to(dev)
