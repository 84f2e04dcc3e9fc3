"""PyTorch engines: the exact eager fp32 path, and a bf16 path on the inference copy of the model.

bf16: BatchNorm folded into the convolutions, fixed attention bias, channels-last convolutions, and
``torch.autocast(bfloat16)`` (matmuls and convolutions in bf16 through oneDNN, which uses AMX or
AVX512-BF16 where the CPU has them; LayerNorm and softmax stay fp32 under autocast). Outputs are fp32.
"""

from __future__ import annotations

import torch
from torch import nn



class TorchEncoder:
    """Encoder of ``fast`` (an ``inference_copy`` of the model); ``precision`` "fp32" (not the exact path) or "bf16"."""

    def __init__(self, fast: nn.Module, precision: str = "bf16") -> None:
        self.precision = precision
        self.device = fast.device
        self.encoder = fast.image_encoder.to(memory_format=torch.channels_last)
        self.name = f"torch {precision}"
        self.cache_tag = f"torch-{precision}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.encoder(x).float().contiguous()
        return self.encoder(x).contiguous()


class TorchDecoder:
    """``SamModel.decode`` of ``fast`` (an ``inference_copy``: dense positional encoding computed once), fp32 or bf16."""

    def __init__(self, fast: nn.Module, precision: str = "fp32") -> None:
        self.precision = precision
        self.device = fast.device
        self.model = fast
        self.name = f"torch {precision}"

    @torch.inference_mode()
    def __call__(self, embeddings, boxes=None, points=None, point_labels=None, mask_input=None, multimask=False):
        kwargs = dict(boxes=boxes, points=points, point_labels=point_labels, mask_input=mask_input, multimask=multimask)
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits, iou = self.model.decode(embeddings, **kwargs)
            return logits.float(), iou.float()
        return self.model.decode(embeddings, **kwargs)
