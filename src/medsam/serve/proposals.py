"""Automatic proposals ("segment everything") for a person to pick, name or delete.

    POST   /api/sessions/{sid}/slices/{z}/proposals              run the segmenter (or return the kept list)
    GET    /api/sessions/{sid}/slices/{z}/proposals              the kept list
    POST   /api/sessions/{sid}/slices/{z}/proposals/{id}/accept  save one under a label name (it leaves the list)
    DELETE /api/sessions/{sid}/slices/{z}/proposals/{id}         drop one

The segmenter is :class:`medsam.inference.everything.AutomaticSegmenter` on the server's model (its embedding
cache is shared with prompting); each of its encoder/decoder calls takes the model lock at job priority, so
prompts get in between. Without that module the endpoints answer 501. Proposals are kept in memory per session and slice; they are suggestions, not saved work.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from medsam.errors import BackendUnavailableError
from medsam.serve import schemas as S
from medsam.serve.engine import JOB, threads
from medsam.serve.errors import NotFound
from medsam.serve.masks import encode_payload


@dataclass(frozen=True)
class KeptProposal:
    id: int
    mask: np.ndarray
    box: tuple[float, float, float, float]
    iou: float | None
    stability: float | None


class _Locked:
    """One of the engine's model calls (encoder or decoder), taken under the model lock at job priority:
    a long "segment everything" run lets people's prompts in between its batches."""

    def __init__(self, call: Any, engine: Any, torch_threads: int | None) -> None:
        self._call = call
        self._engine = engine
        self._threads = torch_threads
        self.cache_tag = getattr(call, "cache_tag", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._engine.lock.hold(JOB), threads(self._threads):
            return self._call(*args, **kwargs)


def locked_predictor(engine: Any) -> Any:
    """A Predictor running the engine's own encoder and decoder under the model lock, sharing its embedding
    cache and signatures (so slices encoded for prompting are reused)."""
    from medsam.inference.predictor import Predictor

    base = engine.predictor
    encoder = _Locked(getattr(base, "_encoder", engine.model.encode), engine, engine.encode_threads)
    decoder = _Locked(getattr(base, "_decoder", engine.model.decode), engine, engine.decode_threads)
    predictor = Predictor(engine.model, encoder=encoder, decoder=decoder)
    predictor.model_id = base.model_id
    predictor.cache = base.cache
    return predictor


def _segmenter_class() -> Any:
    try:
        from medsam.inference.everything import AutomaticSegmenter
    except ImportError as exc:
        raise BackendUnavailableError(
            f"automatic proposals need medsam.inference.everything, which this installation lacks ({exc})"
        ) from None
    return AutomaticSegmenter


def _payload(p: KeptProposal, fmt: str) -> S.Proposal:
    payload = encode_payload(p.mask, fmt)
    return S.Proposal(
        id=p.id,
        area_px=int(p.mask.sum()),
        bbox=[float(v) for v in p.box],
        iou=p.iou,
        stability=p.stability,
        mask=None if payload is None else S.MaskPayload(**payload),
    )


def add_proposal_routes(app: Any, state: Any, accept_mask: Callable[..., Any]) -> None:
    kept: dict[tuple[str, int], list[KeptProposal]] = state.proposals

    def _kept(sid: str, z: int) -> list[KeptProposal]:
        found = kept.get((sid, z))
        if found is None:
            raise NotFound(f"no proposals kept for slice {z} of session {sid}; ask for them with POST first")
        return found

    def _find(sid: str, z: int, pid: int) -> KeptProposal:
        for p in _kept(sid, z):
            if p.id == pid:
                return p
        raise NotFound(f"proposal {pid} does not exist on slice {z} (it may have been accepted or deleted)")

    @app.post("/api/sessions/{sid}/slices/{z}/proposals", response_model=S.ProposalList, tags=["proposals"])
    def proposals(sid: str, z: int, req: S.ProposalRequest) -> S.ProposalList:
        started = time.perf_counter()
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            found = None if req.refresh else kept.get((sid, z))
        computed = found is None
        if found is None:
            segmenter_class = _segmenter_class()
            engine = state.engine
            options = {"grid": req.grid}
            if req.pred_iou_thresh is not None:
                options["pred_iou_thresh"] = req.pred_iou_thresh
            if req.stability_thresh is not None:
                options["stability_thresh"] = req.stability_thresh
            if "shared_decoder" in inspect.signature(segmenter_class).parameters:
                options["shared_decoder"] = False  # it calls the model's modules directly, outside the lock
            segmenter = segmenter_class(locked_predictor(engine), **options)
            image = stack.raw[0] if stack.dims == "2d" else stack.model_slices[z]
            instances = segmenter.generate(image, source=f"session {sid} slice {z}")
            found = [
                KeptProposal(
                    i + 1,
                    np.asarray(m.mask, dtype=bool),
                    tuple(float(v) for v in m.box),
                    float(m.predicted_iou),
                    float(m.stability_score),
                )
                for i, m in enumerate(instances[: req.max_proposals])
            ]
            with session.lock:
                kept[(sid, z)] = found
        return S.ProposalList(
            z=z,
            proposals=[_payload(p, req.mask_format) for p in found],
            latency_ms=(time.perf_counter() - started) * 1000.0,
            computed=computed,
        )

    @app.get("/api/sessions/{sid}/slices/{z}/proposals", response_model=S.ProposalList, tags=["proposals"])
    def kept_proposals(sid: str, z: int, mask_format: S.MaskFormat = "png") -> S.ProposalList:
        started = time.perf_counter()
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            found = list(_kept(sid, z))
        return S.ProposalList(
            z=z, proposals=[_payload(p, mask_format) for p in found], latency_ms=(time.perf_counter() - started) * 1000.0, computed=False
        )

    @app.post("/api/sessions/{sid}/slices/{z}/proposals/{pid}/accept", response_model=S.AcceptResponse, tags=["proposals"])
    def accept_proposal(sid: str, z: int, pid: int, req: S.ProposalAccept) -> S.AcceptResponse:
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            p = _find(sid, z, pid)
            response = accept_mask(session, z, p.mask, req.label.strip(), req.colour, req.mode)
            kept[(sid, z)] = [q for q in kept[(sid, z)] if q.id != pid]
            return response

    @app.delete("/api/sessions/{sid}/slices/{z}/proposals/{pid}", response_model=S.ProposalList, tags=["proposals"])
    def delete_proposal(sid: str, z: int, pid: int, mask_format: S.MaskFormat = "none") -> S.ProposalList:
        started = time.perf_counter()
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            _find(sid, z, pid)
            kept[(sid, z)] = [q for q in kept[(sid, z)] if q.id != pid]
            found = list(kept[(sid, z)])
        return S.ProposalList(
            z=z, proposals=[_payload(p, mask_format) for p in found], latency_ms=(time.perf_counter() - started) * 1000.0, computed=False
        )
