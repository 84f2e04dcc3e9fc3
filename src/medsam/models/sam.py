"""The composite SAM-family model: image encoder + prompt encoder + mask decoder, with its normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.mask_decoder import MaskDecoder
from medsam.models.prompt_encoder import PromptEncoder


class SamModel(nn.Module):
    """A SAM-family model.

    Attribute names (image_encoder, prompt_encoder, mask_decoder) match the official checkpoints.
    The normalisation constants are non-persistent buffers, so ``.to(device)`` carries them and the
    official state dicts (which do not hold them) load strictly.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)

    @property
    def image_size(self) -> int:
        """Side of the square encoder input."""
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def low_res_size(self) -> tuple[int, int]:
        """(h, w) of the decoder's mask logits and of mask prompts."""
        return tuple(self.prompt_encoder.mask_input_size)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) resized images -> (B, 3, S, S): normalise with the model's mean/std, zero-pad bottom/right."""
        x = (images - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_size
        if h > size or w > size:
            raise ValueError(f"resized image {h}x{w} is larger than the model input {size}x{size}")
        return F.pad(x, (0, size - w, 0, size - h))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, h, w) image embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode N prompts against one shared embedding (1, C, h, w) or one embedding per prompt (N, C, h, w).

        boxes (N, 4) and points (N, K, 2) are in the input frame; point_labels (N, K) with 1/0 (-1 pads);
        mask_input (N, 1, 4h, 4w) logits. Returns logits (N, M, 4h, 4w) and IoU predictions (N, M).
        """
        pts = (points, point_labels) if points is not None else None
        sparse, dense = self.prompt_encoder(points=pts, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-style call: (B, 3, S, S) preprocessed images and one box (B, 4) each -> logits, IoU."""
        return self.decode(self.encode(images), boxes=boxes)
