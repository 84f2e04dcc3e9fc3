"""SAM 2.1 and MedSAM2 in our own PyTorch code: Hiera encoder with FPN neck, memory encoder, memory attention
(rotary attention), SAM 2 heads with high-resolution features, object pointers and occlusion scores.

Build them through the registry (``build_model("medsam2", checkpoint=...)``); track with
``medsam.inference.memory_video``.
"""

from medsam.models.sam2.config import CONFIGS, HieraConfig, Sam2Config
from medsam.models.sam2.model import FrameFeatures, HeadOutput, Sam2Model, SpatialMemory

__all__ = ["CONFIGS", "FrameFeatures", "HeadOutput", "HieraConfig", "Sam2Config", "Sam2Model", "SpatialMemory"]
