"""What an engine is: an encoder callable and a decoder callable with the model's own signatures.

- encoder: (B, 3, S, S) float32 preprocessed images -> (B, C, h, w) float32 embeddings (``SamModel.encode``);
- decoder: ``(embeddings, boxes=None, points=None, point_labels=None, mask_input=None, multimask=False)
  -> (logits (N, M, 4h, 4w), iou (N, M))`` in the input frame (``SamModel.decode``).

Engines that run only the decoder core (ONNX graphs) share ``CoreDecoder``: the prompt encoder runs in
PyTorch (a few sines per prompt; the dense positional encoding is a constant of the graph) and the core
gets the image embedding, the sparse tokens and the dense prompt embedding.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from medsam.errors import BackendUnavailableError

CoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class CoreDecoder:
    """``SamModel.decode`` with the mask decoder replaced by ``core(embeddings, sparse, dense) -> (masks, iou)``
    returning every mask token (B, M+1, 4h, 4w)."""

    def __init__(self, model: nn.Module, core: CoreFn, name: str) -> None:
        self.prompt_encoder = model.prompt_encoder
        self.core = core
        self.name = name

    @torch.inference_mode()
    def __call__(self, embeddings, boxes=None, points=None, point_labels=None, mask_input=None, multimask=False):
        pts = (points, point_labels) if points is not None else None
        sparse, dense = self.prompt_encoder(points=pts, boxes=boxes, masks=mask_input)
        if mask_input is None:
            # the same no-mask embedding for every prompt: one copy broadcasts (and layer 0's image side runs once)
            dense = dense[:1]
        masks, iou = self.core(embeddings.float(), sparse.float(), dense.float().contiguous())
        keep = slice(1, None) if multimask else slice(0, 1)
        return masks[:, keep], iou[:, keep]


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy view (or copy) of a tensor, for the ONNX engines' inputs."""
    return np.ascontiguousarray(x.detach().cpu().float().numpy())


def import_engine(module: str, extra: str = "speed"):
    """Import an optional engine library or raise a BackendUnavailableError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {module} engine is not installed ({exc}); install it with: pip install 'medsam-toolkit[{extra}]' "
            f"(or pip install {module})"
        ) from exc
