"""Synthetic masks with hand-computable metrics."""

from __future__ import annotations

import numpy as np


def square(top: int, left: int, size: int = 10, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask
