"""Fixtures for the fine-tuning tests: a small synthetic dataset of discs, one thread per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def make_disc_folder(root: Path, n: int, *, seed: int = 0) -> Path:
    """``root/images`` and ``root/masks`` with n grey images (three sizes) of one bright disc each."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 48 + 8 * (i % 3), 64
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.integers(15, h - 15), rng.integers(15, w - 15), rng.integers(6, 12)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = (rng.normal(60, 15, (h, w)) + 120 * mask).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"c{i:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"c{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def disc_data(tmp_path_factory) -> Path:
    return make_disc_folder(tmp_path_factory.mktemp("discs"), 8)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    """One embedding cache for every tiny run of the session (same images, same base weights)."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
