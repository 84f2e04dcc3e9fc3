"""Export of a SAM-family model to ONNX for the fast engines (onnxruntime, OpenVINO).

Two graphs, both with a dynamic batch:

- encoder: ``images`` (B, 3, S, S) normalised and padded -> ``embeddings`` (B, C, h, w); traced from the
  inference copy (BatchNorm folded, attention bias fixed, see ``medsam.models.optimize``);
- decoder core (the token-layout ``FastMaskDecoder``): ``embeddings`` (B or 1, C, h, w), ``sparse`` (B, T, C) prompt tokens, ``dense`` (B, C, h, w)
  dense prompt embeddings (B, or 1 when no prompt has a mask: it then broadcasts, and the image-side work of
  the first layer is done once for all B prompts) -> ``masks`` (B, M+1, 4h, 4w) low-res logits of every mask token and ``iou``
  (B, M+1). The dense positional encoding is a constant of the graph; the prompt encoder (a few sines of
  the box corners) stays in PyTorch. One embedding (1, C, h, w) broadcasts over B prompts.

The TorchScript-based exporter (``dynamo=False``) at opset 17 is used: it needs no extra package and gives
graphs that onnxruntime and OpenVINO run well.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17
GRAPH_VERSION = 3  # bump when the exported graphs change, so cached exports are rebuilt


class DecoderCore(nn.Module):
    """The mask decoder with the image positional encoding baked in (what the decoder graph computes)."""

    def __init__(self, model: nn.Module) -> None:
        from medsam.models.mask_decoder import MaskDecoder
        from medsam.models.optimize import FastMaskDecoder

        super().__init__()
        dec = model.mask_decoder
        self.mask_decoder = FastMaskDecoder(dec) if isinstance(dec, MaskDecoder) else dec
        with torch.no_grad():
            self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
        return self.mask_decoder.predict_masks(embeddings, self.image_pe, sparse, dense)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and constant-folding chatter
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


@torch.no_grad()
def export_encoder(model: nn.Module, path: str | Path, *, opset: int = OPSET) -> Path:
    """Write the image encoder of ``model`` (a SamModel) as ONNX with a dynamic batch axis."""
    from medsam.models.optimize import optimize_encoder

    encoder = optimize_encoder(model.image_encoder).cpu().float()
    size = model.image_size
    example = torch.zeros(2, 3, size, size)
    path = Path(path)
    _export(encoder, (example,), path, ["images"], ["embeddings"],
            {"images": {0: "batch"}, "embeddings": {0: "batch"}}, opset)
    return path


@torch.no_grad()
def export_decoder(model: nn.Module, path: str | Path, *, opset: int = OPSET) -> Path:
    """Write the mask decoder core of ``model`` as ONNX with dynamic batch and token axes."""
    core = DecoderCore(model).eval()
    c = model.prompt_encoder.embed_dim
    h, w = model.prompt_encoder.image_embedding_size
    dev = model.device
    example = (torch.zeros(2, c, h, w, device=dev), torch.zeros(2, 2, c, device=dev), torch.zeros(2, c, h, w, device=dev))
    path = Path(path)
    _export(core, example, path, ["embeddings", "sparse", "dense"], ["masks", "iou"],
            {"embeddings": {0: "embedding_batch"}, "sparse": {0: "batch", 1: "tokens"}, "dense": {0: "dense_batch"},
             "masks": {0: "batch"}, "iou": {0: "batch"}}, opset)
    return path
