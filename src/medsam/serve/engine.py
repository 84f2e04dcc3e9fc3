"""The model side of the server: one Predictor, one lock with priorities, and a background encoder.

All model work (encoding, decoding, propagation steps) happens under ``ModelLock``. Prompts (interactive)
go first; propagation jobs next; encoding ahead of the person (prefetch) last, and only once no prompt has
come for ``prefetch_idle_s``. A lower-priority waiter that has waited ``max_wait_s`` gets its turn anyway,
so a propagation is never starved by a stream of prompts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from medsam.inference.predictor import ImageEncoding, Predictor
from medsam.serve.source import ImageStack

log = logging.getLogger("medsam.serve")

INTERACTIVE, JOB, BACKGROUND = 0, 1, 2


class ModelLock:
    """A mutex whose waiters are served by priority (0 first), with ageing for the lower ones."""

    def __init__(self, max_wait_s: float = 2.0) -> None:
        self.max_wait_s = float(max_wait_s)
        self._cond = threading.Condition()
        self._held = False
        self._waiting = [0, 0, 0]

    @contextlib.contextmanager
    def hold(self, priority: int = INTERACTIVE) -> Iterator[None]:
        start = time.monotonic()
        with self._cond:
            self._waiting[priority] += 1
            try:
                while self._held or (
                    any(self._waiting[:priority]) and time.monotonic() - start < self.max_wait_s
                ):
                    self._cond.wait(timeout=None if priority == INTERACTIVE else 0.05)
                self._held = True
            finally:
                self._waiting[priority] -= 1
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run torch ops of this thread with ``count`` intra-op threads (None: leave as is)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    if before != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if before != count:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class Decoded:
    """One object's answer: full-size mask, its low-res logits (1, h, w), predicted IoU and timings."""

    mask: np.ndarray
    logits: np.ndarray
    iou: float
    decode_ms: float
    wait_ms: float = 0.0
    decode_cpu_ms: float = 0.0


class ModelEngine:
    """Owns the predictor (and its bounded LRU embedding cache), the model lock and the prefetch worker."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        cache_mb: float = 512,
        prefetch_idle_s: float = 1.5,
        decode_threads: int | None = 1,
        encode_threads: int | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        """decode_threads / encode_threads: torch intra-op threads for prompts and for encoding (None: torch's
        default). The setting is per calling thread and taken under the model lock. One thread for the
        small decoder ops is robust when the cores are shared: with two, OpenMP's barriers make each op wait
        for a busy core and a 20 ms decode can take 500 ms. ``predictor``: one built on ``model`` with a fast
        engine (``medsam.inference.engines.make_predictor``); default: the eager model."""
        self.model = model
        self.predictor = predictor if predictor is not None else Predictor(model, cache_bytes=int(cache_mb * 2**20))
        self.lock = ModelLock()
        self.decode_threads = decode_threads
        self.encode_threads = encode_threads if encode_threads is not None else torch.get_num_threads()
        self.last_prompt = 0.0
        self.prefetch = EncodeAhead(self, idle_s=prefetch_idle_s)

    @property
    def name(self) -> str:
        return self.model.spec.name

    def touch(self) -> None:
        """Note that a person is interacting (the prefetch worker steps aside)."""
        self.last_prompt = time.monotonic()

    def is_encoded(self, stack: ImageStack, z: int) -> bool:
        return stack.signature(self.predictor, z) in self.predictor.cache

    def encoding(self, stack: ImageStack, z: int, *, priority: int = INTERACTIVE) -> tuple[ImageEncoding, float]:
        """Slice z's embedding (from the cache, else encoded now) and the ms spent encoding."""
        found = self.predictor.cache.get(stack.signature(self.predictor, z))
        if found is not None:
            return found, 0.0
        prepared = stack.prepare(self.predictor, z)
        start = time.perf_counter()
        with self.lock.hold(priority), threads(self.encode_threads):
            enc = self.predictor.encode_prepared([prepared], batch_size=1)[0]
        return enc, (time.perf_counter() - start) * 1000.0

    def decode(
        self,
        enc: ImageEncoding,
        *,
        box: np.ndarray | None,
        points: np.ndarray | None,
        point_labels: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool = False,
    ) -> Decoded:
        """One decoder call for one object on a cached embedding; prompts in slice pixels."""

        def work():
            pred = self.predictor.predict(
                boxes=None if box is None else np.asarray(box, dtype=np.float64)[None],
                points=None if points is None or len(points) == 0 else np.asarray(points, dtype=np.float64),
                point_labels=None if points is None or len(points) == 0 else np.asarray(point_labels, dtype=np.int64),
                mask_input=None if mask_input is None else mask_input[None],
                multimask=multimask,
            )
            return pred.best() if multimask else pred

        return self._interactive(enc, work)[0]

    def _interactive(self, enc: ImageEncoding, work: Callable[[], Any]) -> tuple[Decoded, Any]:
        """Run ``work()`` (-> a Prediction, or (Prediction, extra)) on ``enc`` under the model lock at
        interactive priority with the decode threads; the Decoded answer with its timings, and the extra."""
        self.touch()
        start = time.perf_counter()
        with self.lock.hold(INTERACTIVE), threads(self.decode_threads):
            got_lock = time.perf_counter()
            cpu = time.thread_time()
            self.predictor.set_encoding(enc)
            out = work()
            cpu_ms = (time.thread_time() - cpu) * 1000.0
        pred, extra = out if isinstance(out, tuple) else (out, None)
        done = time.perf_counter()
        decoded = Decoded(
            pred.masks[0, 0], pred.low_res_logits[0, :1], float(pred.iou_scores[0, 0]),
            (done - got_lock) * 1000.0, (got_lock - start) * 1000.0, cpu_ms,
        )
        return decoded, extra

    def refine(
        self,
        enc: ImageEncoding,
        strategy: str,
        *,
        state: Any,
        box: np.ndarray | None,
        points: np.ndarray,
        point_labels: np.ndarray,
        clicks: np.ndarray,
        click_labels: np.ndarray,
    ) -> tuple[Decoded, Any]:
        """Corrective clicks through ``medsam.inference.refine.Refiner`` (box-trained models): continue from
        ``state`` (a RefineState) or, without one, start from the step's box and points; then add the clicks
        (K, 2) in slice pixels. Returns the answer and the new RefineState."""
        from medsam.inference.refine import Refiner
        from medsam.types import Points

        def work():
            refiner = Refiner(self.predictor, strategy)
            pred = None
            if state is not None:
                pred = refiner.resume(state)
            elif box is not None or len(points):
                pred = refiner.start(box=box, points=Points(points, point_labels) if len(points) else None)
            for (x, y), label in zip(np.asarray(clicks).reshape(-1, 2), np.asarray(click_labels).reshape(-1)):
                if pred is None:  # no prompt yet: the first click starts one
                    pred = refiner.start(points=Points(np.array([[x, y]]), np.array([label])))
                else:
                    pred = refiner.click(float(x), float(y), int(label))
            return pred, refiner.state

        return self._interactive(enc, work)

    def warm_up(self) -> float:
        """One decode of each prompt kind on a blank embedding, so the first person's prompt does not pay
        for the kernels' first-call set-up. Returns the seconds spent."""
        start = time.perf_counter()
        model = self.model
        size = model.image_size
        with torch.inference_mode(), self.lock.hold(BACKGROUND), threads(self.decode_threads):
            emb = torch.zeros((1, *self._embedding_shape()), device=self.predictor.device)
            box = torch.tensor([[size * 0.25, size * 0.25, size * 0.75, size * 0.75]], device=self.predictor.device)
            pts = torch.tensor([[[size * 0.5, size * 0.5]]], device=self.predictor.device)
            lab = torch.ones((1, 1), dtype=torch.int64, device=self.predictor.device)
            mask = torch.zeros((1, 1, *model.low_res_size), device=self.predictor.device)
            self.predictor.predict_torch(emb, box)
            self.predictor.predict_torch(emb, box, pts, lab, mask)
            self.predictor.predict_torch(emb, None, pts, lab)
        return time.perf_counter() - start

    def _embedding_shape(self) -> tuple[int, int, int]:
        pe = self.model.prompt_encoder.get_dense_pe()
        return tuple(pe.shape[1:])  # type: ignore[return-value]

    def close(self) -> None:
        self.prefetch.stop()


class EncodeAhead:
    """A small background worker that encodes the neighbours of the slice a person looks at.

    ``schedule(key, stack, zs)`` replaces whatever was pending for ``key`` (a session): moving through a
    volume cancels the old neighbours. Each slice is encoded under the model lock at the lowest priority,
    and only after no prompt has come for ``idle_s``.
    """

    def __init__(self, engine: ModelEngine, *, idle_s: float = 0.3) -> None:
        self.engine = engine
        self.idle_s = float(idle_s)
        self._cond = threading.Condition()
        self._pending: list[tuple[str, ImageStack, int]] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self.encoded = 0

    def schedule(self, key: str, stack: ImageStack, zs: list[int]) -> None:
        with self._cond:
            self._pending = [p for p in self._pending if p[0] != key]
            self._pending.extend((key, stack, int(z)) for z in zs if 0 <= z < stack.depth)
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="medsam-encode-ahead", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self, key: str) -> None:
        with self._cond:
            self._pending = [p for p in self._pending if p[0] != key]

    def pending(self, key: str | None = None) -> int:
        with self._cond:
            return sum(1 for p in self._pending if key is None or p[0] == key)

    def stop(self, wait_s: float = 1.0) -> None:
        """Stop taking work; an encode in flight is not waited for longer than ``wait_s`` (the thread is a
        daemon and writes nothing, so a server can exit without waiting for it)."""
        with self._cond:
            self._stop = True
            self._pending.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=wait_s)

    def _next(self) -> tuple[str, ImageStack, int] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            return self._pending[0]

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            idle = time.monotonic() - self.engine.last_prompt
            if idle < self.idle_s:
                with self._cond:
                    self._cond.wait(timeout=self.idle_s - idle)
                continue
            with self._cond:
                if not self._pending or self._pending[0] is not item:
                    continue  # cancelled or replaced while waiting
                self._pending.pop(0)
            key, stack, z = item
            if self.engine.is_encoded(stack, z):
                continue
            try:
                self.engine.encoding(stack, z, priority=BACKGROUND)
                self.encoded += 1
            except Exception:  # a slice that cannot be encoded is reported when someone prompts on it
                log.exception("encoding slice %d of session %s ahead failed", z, key)
