"""A stand-in SAM for propagation logic tests: it segments exactly the bright pixels inside the prompt box.

Its "image embedding" is the normalised input image itself (1 channel at the 64 px input of ``tiny_lite``),
and its decoder returns +8 logits where that image is above 0.5 inside the box (or within 6 px of a positive
point when there is no box) and -8 elsewhere, with a predicted IoU of 0.9 for a non-empty mask and 0.05 for
an empty one. It counts encoder images and decoder calls. A random tiny model cannot show where an object
ends; this one makes the expected answer exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsam.models.registry import get_spec


class OracleModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spec = get_spec("tiny_lite")
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the model a fingerprint
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.encoded_images = 0
        self.decode_calls = 0
        self.mask_prompts = 0

    @property
    def image_size(self) -> int:
        return self.spec.preprocess.input_size

    @property
    def low_res_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        return F.pad(images, (0, self.image_size - w, 0, self.image_size - h))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded_images += images.shape[0]
        return images[:, :1].clone()

    def decode(self, embeddings, boxes=None, points=None, point_labels=None, mask_input=None, multimask=False):
        self.decode_calls += 1
        if mask_input is not None:
            self.mask_prompts += mask_input.shape[0]
        n = next(x.shape[0] for x in (boxes, points, mask_input) if x is not None)
        size = self.image_size
        image = embeddings[:, 0].expand(n, size, size) if embeddings.shape[0] == 1 else embeddings[:, 0]
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        region = torch.zeros(n, size, size, dtype=torch.bool)
        for i in range(n):
            if boxes is not None:
                x0, y0, x1, y1 = boxes[i].tolist()
                region[i] = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
            else:
                for (px, py), lab in zip(points[i].tolist(), point_labels[i].tolist()):
                    if lab == 1:
                        region[i] |= (xx - px) ** 2 + (yy - py) ** 2 <= 36
        mask = (image > 0.5) & region
        logits = torch.where(mask, 8.0, -8.0)[:, None]
        iou = torch.where(mask.flatten(1).any(dim=1), 0.9, 0.05)[:, None]
        return logits, iou
