"""Per slice and object: the prompt steps a person made, with undo/redo.

Each step keeps the whole prompt (box, clicks), the model's answer (the best low-res logits, its predicted
IoU and the full-size mask, bit-packed) so undo and redo answer without the model.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PromptStep:
    box: tuple[float, float, float, float] | None
    points: np.ndarray  # (K, 2) x, y
    point_labels: np.ndarray  # (K,)
    used_mask_prompt: bool
    logits: np.ndarray  # (1, h, w) float32, the low-res logits of the chosen mask
    iou: float
    packed_mask: np.ndarray
    mask_hw: tuple[int, int]
    refine: Any = None  # the RefineState of a box_update refinement (medsam.inference.refine), to continue from

    @classmethod
    def make(cls, box, points, point_labels, used_mask_prompt, logits, iou, mask, refine=None) -> "PromptStep":
        return cls(
            None if box is None else tuple(float(v) for v in box),
            np.asarray(points, dtype=np.float64).reshape(-1, 2),
            np.asarray(point_labels, dtype=np.int64).reshape(-1),
            bool(used_mask_prompt),
            np.asarray(logits, dtype=np.float32),
            float(iou),
            np.packbits(np.asarray(mask, dtype=bool).reshape(-1)),
            tuple(mask.shape),
            refine,
        )

    @property
    def mask(self) -> np.ndarray:
        h, w = self.mask_hw
        return np.unpackbits(self.packed_mask, count=h * w).reshape(h, w).astype(bool)


class PromptHistory:
    """A linear history with a cursor: a new step drops the steps after the cursor (like an editor)."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = max(1, int(limit))
        self.steps: list[PromptStep] = []
        self.cursor = -1

    @property
    def current(self) -> PromptStep | None:
        return self.steps[self.cursor] if self.cursor >= 0 else None

    def push(self, step: PromptStep) -> None:
        del self.steps[self.cursor + 1 :]
        self.steps.append(step)
        if len(self.steps) > self.limit:
            del self.steps[: len(self.steps) - self.limit]
        self.cursor = len(self.steps) - 1

    @property
    def can_undo(self) -> bool:
        return self.cursor >= 0

    @property
    def can_redo(self) -> bool:
        return self.cursor < len(self.steps) - 1

    def undo(self) -> bool:
        if not self.can_undo:
            return False
        self.cursor -= 1
        return True

    def redo(self) -> bool:
        if not self.can_redo:
            return False
        self.cursor += 1
        return True


class Drafts:
    """The prompt histories of one session, keyed by (z, object_id), the least recently used dropped first."""

    def __init__(self, max_drafts: int = 128, history_limit: int = 32) -> None:
        self.max_drafts = max(1, int(max_drafts))
        self.history_limit = history_limit
        self._items: OrderedDict[tuple[int, int], PromptHistory] = OrderedDict()

    def get(self, z: int, object_id: int, *, create: bool = False) -> PromptHistory | None:
        key = (int(z), int(object_id))
        hist = self._items.get(key)
        if hist is None and create:
            hist = PromptHistory(self.history_limit)
            self._items[key] = hist
            while len(self._items) > self.max_drafts:
                self._items.popitem(last=False)
        if hist is not None:
            self._items.move_to_end(key)
        return hist

    def drop(self, z: int, object_id: int) -> None:
        self._items.pop((int(z), int(object_id)), None)

    def __len__(self) -> int:
        return len(self._items)
