"""The official sam2==1.1.0 video predictor as a test-only reference (see scripts/setup.sh).

``build_reference(name)`` builds it from its own SAM 2.1 tiny config (with the overrides that give MedSAM2's
512 px configuration, or our tiny random variant), with seeded random weights; ``run_reference`` drives it the
way a user does (boxes on a frame, propagate forwards, then backwards) on frames we give it ready-normalised,
and records what it yields. Nothing here is imported by the toolkit.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch

# Overrides of configs/sam2.1/sam2.1_hiera_t.yaml. MedSAM2's sam2.1_hiera_t512.yaml differs from it only by the
# image size and the RoPE grids (which SAM 2 recomputes for the actual feature size anyway).
_MEDSAM2 = [
    "++model.image_size=512",
    "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
]
_TINY = [
    "++model.image_size=128",
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.trunk.window_spec=[8,4,6,4]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.memory_attention.d_model=32",
    "++model.memory_attention.num_layers=2",
    "++model.memory_attention.layer.d_model=32",
    "++model.memory_attention.layer.dim_feedforward=64",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.in_dim=32",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "++model.memory_encoder.fuser.layer.dim=32",
]
OVERRIDES = {"sam2.1_hiera_t": [], "medsam2": _MEDSAM2, "tiny_sam2": _TINY}


def reference_or_skip():
    """The sam2 package's video predictor module, or a skip that says why it is missing."""
    try:
        return importlib.import_module("sam2.sam2_video_predictor"), importlib.import_module("sam2.build_sam")
    except Exception as exc:  # ImportError, or hydra failing to initialise
        pytest.skip(f"the sam2==1.1.0 reference is not installed here ({type(exc).__name__}: {exc}); "
                    "scripts/setup.sh installs it with SAM2_BUILD_CUDA=0 pip install --no-deps sam2==1.1.0")


def build_reference(name: str, seed: int = 0):
    _, build = reference_or_skip()
    torch.manual_seed(seed)
    model = build.build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                                             hydra_overrides_extra=OVERRIDES[name])
    # The reference's hole filling needs its CUDA extension (absent here: it would warn and leave the masks as
    # they are), so it is off on both sides; ours is tested on its own.
    model.fill_hole_area = 0
    return model.eval()


@dataclass
class Recorded:
    frames: list[int]
    logits: dict[int, np.ndarray]  # frame -> (K, H, W) video-res logits
    scores: dict[int, np.ndarray]  # frame -> (K,) object-score logits
    prompt_logits: np.ndarray


def run_reference(model, images: torch.Tensor, hw: tuple[int, int], frame: int, boxes, monkeypatch) -> Recorded:
    """Boxes (one object each, ids 1..K) on ``frame``, propagate forwards, then backwards (same state)."""
    module, _ = reference_or_skip()
    monkeypatch.setattr(module, "load_video_frames", lambda **kw: (images, hw[0], hw[1]))
    with torch.inference_mode():
        state = model.init_state("frames-given-directly")
        prompt = None
        for obj_id, box in enumerate(boxes, start=1):
            _, _, prompt = model.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, box=list(box))
        rec = Recorded([], {}, {}, prompt[:, 0].numpy().copy())
        for reverse in (False, True):
            for f, ids, masks in model.propagate_in_video(state, reverse=reverse):
                rec.frames.append(f)
                rec.logits[f] = masks[:, 0].numpy().copy()
                scores = []
                for idx in range(len(ids)):
                    out = state["output_dict_per_obj"][idx]
                    o = out["cond_frame_outputs"].get(f) or out["non_cond_frame_outputs"][f]
                    scores.append(float(o["object_score_logits"].reshape(-1)[0]))
                rec.scores[f] = np.array(scores)
    return rec
