"""onnxruntime engines (CPU execution provider, all graph optimisations, a fixed number of intra-op threads)."""

from __future__ import annotations

from pathlib import Path

import torch

from medsam.inference.engines.base import import_engine, to_numpy as _np


def make_session(path: Path, threads: int):
    ort = import_engine("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEncoder:
    def __init__(self, path: Path, threads: int, precision: str = "fp32") -> None:
        self.session = make_session(path, threads)
        self.name = f"onnxruntime {precision}"
        self.cache_tag = f"onnxruntime-{precision}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(["embeddings"], {"images": _np(images)})
        return torch.from_numpy(out).to(images.device)


class OnnxRuntimeDecoderCore:
    def __init__(self, path: Path, threads: int) -> None:
        self.session = make_session(path, threads)

    def __call__(self, embeddings, sparse, dense):
        masks, iou = self.session.run(["masks", "iou"], {"embeddings": _np(embeddings), "sparse": _np(sparse), "dense": _np(dense)})
        return torch.from_numpy(masks).to(embeddings.device), torch.from_numpy(iou).to(embeddings.device)
