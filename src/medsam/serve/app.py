"""The HTTP API and the annotation page: ``create_app(settings, model=None)`` builds a FastAPI app.

Everything the app needs lives on ``app.state.medsam`` (a :class:`ServerState`): settings, the model engine
(predictor, model lock, background encoder) and the session registry. Create as many apps as you like
(tests do); nothing is global. The OpenAPI schema is at ``/openapi.json`` (interactive docs at ``/docs``).

Endpoints (all under ``/api``; z is the slice index, 0 for a 2D image). Every slice index and pixel coordinate
is in the session's view frame (``orientation`` of the open request, "canonical" by default: the volume in the
radiological display orientation of its slice plane; see ``SessionInfo.orientation``); exports land on the
source file's own grid:

    GET    /health                                   server, model, limits
    GET    /files?path=DIR                           browse the data root
    POST   /sessions                                 open a file/DICOM folder inside the data root
    POST   /sessions/upload                          open an uploaded image/volume/.zip (multipart "file")
    GET    /sessions                                 list sessions (reopened ones included)
    GET    /sessions/{sid}                           shape, spacing, modality, windows, labels, exports
    DELETE /sessions/{sid}?confirm=true              delete a session and its folder
    GET    /sessions/{sid}/slices                    per slice: encoded?, labels present
    GET    /sessions/{sid}/slices/{z}/image?window=  the slice as PNG (CT preset name, "W,L", percentile)
    POST   /sessions/{sid}/slices/{z}/encode         encode now (the page calls it on arrival)
    POST   /sessions/{sid}/slices/{z}/prompts        box and/or clicks -> mask (+ IoU, latency)
    POST   /sessions/{sid}/slices/{z}/refine         more clicks (box-trained models: the clicks edit the box and its
                                                      logits, medsam.inference.refine; SAM: the previous logits are the mask prompt)
    POST   /sessions/{sid}/slices/{z}/undo | redo    step through the object's prompt history
    GET    /sessions/{sid}/slices/{z}/draft          the object's current mask
    POST   /sessions/{sid}/slices/{z}/accept         save the mask under a label name (and colour)
    GET    /sessions/{sid}/slices/{z}/labels         the slice's label map as 8-bit PNG (values = labels)
    GET    /sessions/{sid}/labels                    list labels
    PATCH  /sessions/{sid}/labels/{value}            rename / recolour
    DELETE /sessions/{sid}/labels/{value}            delete a label (its voxels become 0)
    POST   /sessions/{sid}/propagate                 propagate a label through the volume (job, 202); it stops where
                                                      the object ends unless z_range is given
    POST   /sessions/{sid}/corrections               3D correction: clicks / a box on any slice re-segment it and
                                                      re-propagate the label (accepted slices never change)
    POST   /sessions/{sid}/corrections/undo          undo the last 3D correction
    GET    /sessions/{sid}/jobs[/{job}]              job progress; DELETE cancels
    POST   /sessions/{sid}/export                    png/overlay (2D), nifti/nrrd/mha/npz/dicom-seg/rtstruct/montage
    GET    /sessions/{sid}/exports[/{name}]          list / download exports
    POST   /sessions/{sid}/slices/{z}/proposals      automatic mask proposals ("segment everything"); GET: kept ones
    POST   /sessions/{sid}/slices/{z}/proposals/{id}/accept   name one (save it under a label); DELETE drops it
    GET    /pacs, /pacs/studies, /pacs/studies/{study}/series  the PACS of --dicomweb (medsam.serve.pacs)
    POST   /pacs/open                                open a PACS series as a session
    POST   /sessions/{sid}/pacs/store                store the labels back into the PACS as DICOM-SEG / RT-STRUCT

Coordinates: z is a slice index and x, y are pixels (column, row) of the session's view of the image, the slices
as the page shows them (for volumes the radiological orientation of the series' plane unless the session was
opened with another orientation; exports land on the source grid).

Errors are JSON ``{"detail": message, "error": kind}``: 400 bad input or prompt, 401 token, 403 path outside
the data root, 404 unknown session/slice/label/job/export, 409 conflicts (export exists, nothing to
accept), 413 too large, 422 malformed request body, 502 the PACS is unreachable or refused.

This module imports FastAPI; ``medsam.serve.create_app`` imports it only when called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from medsam import __version__
from medsam.errors import (
    BackendUnavailableError,
    CheckpointError,
    InputError,
    MedsamError,
    ModelNotFoundError,
    OutputError,
    PromptError,
    RemoteServiceError,
)
from medsam.serve import schemas as S
from medsam.serve.corrections import CorrectionHistory, correct_label, undo_correction
from medsam.serve.engine import ModelEngine
from medsam.serve.exports import export_path, list_exports, write_export
from medsam.serve.history import PromptStep
from medsam.serve.jobs import PropagationJob, default_key_slice
from medsam.serve.masks import encode_payload, image_png_bytes, label_png_bytes, mask_sha1
from medsam.serve.registry import SessionRegistry
from medsam.serve.security import GuardMiddleware
from medsam.serve.errors import Conflict, ForbiddenPath, NotFound, UploadTooLarge
from medsam.serve.session import LabelEntry, Session
from medsam.serve.settings import ServeSettings
from medsam.serve.source import ImageStack

log = logging.getLogger("medsam.serve")
STATIC = Path(__file__).resolve().parent / "static"

ERROR_STATUS: list[tuple[type, int]] = [
    (ForbiddenPath, 403),
    (UploadTooLarge, 413),
    (NotFound, 404),
    (Conflict, 409),
    (PromptError, 400),
    (InputError, 400),
    (ModelNotFoundError, 400),
    (OutputError, 409),
    (CheckpointError, 500),
    (BackendUnavailableError, 501),
    (RemoteServiceError, 502),
    (MedsamError, 400),
]


def error_status(exc: BaseException) -> int:
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


@dataclass
class ServerState:
    settings: ServeSettings
    engine: ModelEngine
    registry: SessionRegistry
    proposals: dict[tuple[str, int], list[Any]] = dataclasses.field(default_factory=dict)

    def session(self, sid: str) -> tuple[Session, ImageStack]:
        session = self.registry.get(sid)
        return session, session.ensure_loaded(self.settings.data_root)

    def close(self) -> None:
        for session in self.registry.list():
            for job in list(session.jobs.values()):
                job.cancel()
        self.engine.close()
        for session in self.registry.list():
            for job in list(session.jobs.values()):
                job.wait(10)


def build_predictor(model: Any, settings: ServeSettings) -> Any:
    """The server's Predictor on the execution engine of ``settings`` (precision/backend/threads); an engine
    that is missing or fails falls back to PyTorch with a logged note, as in the other commands."""
    import warnings

    from medsam.inference.predictor import Predictor

    cache_bytes = int(settings.cache_mb * 2**20)
    try:
        from medsam.inference.engines import ExecutionOptions, make_predictor
    except ImportError:
        return Predictor(model, cache_bytes=cache_bytes)
    options = ExecutionOptions(settings.precision, settings.backend, settings.threads)
    if options.is_exact:
        return Predictor(model, cache_bytes=cache_bytes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        predictor = make_predictor(model, options, cache_bytes=cache_bytes)
    for warning in caught:
        log.warning("medsam serve: note: %s", warning.message)
    return predictor


def everything_available() -> bool:
    try:
        from medsam.inference import everything  # noqa: F401
    except ImportError:
        return False
    return True


# --- response builders ---------------------------------------------------------------------------------


def label_info(session: Session, entry: LabelEntry) -> S.LabelInfo:
    voxels, slices = session.label_stats(entry.value)
    return S.LabelInfo(
        value=entry.value,
        name=entry.name,
        colour=entry.colour,
        voxels=voxels,
        slices=slices,
        accepted_slices=list(entry.accepted_slices),
        propagated_slices=list(entry.propagated_slices),
        corrected_slices=list(entry.corrected_slices),
    )


def label_list(session: Session) -> list[S.LabelInfo]:
    return [label_info(session, e) for e in sorted(session.labels_table.values(), key=lambda e: e.value)]


def summary(session: Session) -> S.SessionSummary:
    return S.SessionSummary(
        id=session.id,
        name=session.name,
        dims=session.dims,  # type: ignore[arg-type]
        created_utc=session.created_utc,
        updated_utc=session.updated_utc,
        available=session.problem is None,
        problem=session.problem,
        labels=len(session.labels_table),
    )


def orientation_info(stack: ImageStack) -> S.OrientationInfo:
    reo = stack.orientation
    return S.OrientationInfo(
        name=reo.name, plane=reo.plane if stack.dims == "3d" else "", order=list(reo.order), flip=list(reo.flip),
        source_shape=list(reo.source_shape), description=reo.describe(),
    )


def session_info(state: ServerState, session: Session, stack: ImageStack) -> S.SessionInfo:
    with session.lock:
        base = summary(session).model_dump()
        labels = label_list(session)
        revision = session.revision
    encoded = [z for z in range(stack.depth) if state.engine.is_encoded(stack, z)] if stack.depth <= 2048 else []
    return S.SessionInfo(
        **base,
        shape=list(stack.shape),
        channels=stack.channels,
        spacing_mm=[float(v) for v in stack.volume.spacing_mm],
        modality=stack.modality,
        dtype=str(stack.raw.dtype),
        orientation=orientation_info(stack),
        model_window=session.model_window,
        window_presets=stack.window_presets(),
        default_window="auto",
        encoded_slices=encoded,
        label_list=labels,
        exports=[p.name for p in list_exports(session)],
        revision=revision,
    )


def mask_response(
    session: Session,
    z: int,
    object_id: int,
    fmt: str,
    started: float,
    encode_ms: float = 0.0,
    decode_ms: float = 0.0,
    wait_ms: float = 0.0,
    decode_cpu_ms: float = 0.0,
) -> S.MaskResponse:
    hist = session.drafts.get(z, object_id)
    step = hist.current if hist is not None else None
    payload = None
    area, bbox = 0, None
    if step is not None:
        mask = step.mask
        ys, xs = np.nonzero(mask)
        area = int(ys.size)
        if area:
            bbox = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
        payload = encode_payload(mask, fmt)
    return S.MaskResponse(
        session_id=session.id,
        z=z,
        object_id=object_id,
        has_mask=step is not None,
        step=hist.cursor if hist is not None else -1,
        steps=len(hist.steps) if hist is not None else 0,
        can_undo=bool(hist and hist.can_undo),
        can_redo=bool(hist and hist.can_redo),
        iou=step.iou if step is not None else None,
        area_px=area,
        bbox=bbox,
        prompt=None
        if step is None
        else S.PromptEcho(
            box=list(step.box) if step.box is not None else None,
            points=step.points.tolist(),
            point_labels=step.point_labels.tolist(),
            used_mask_prompt=step.used_mask_prompt,
        ),
        latency_ms=(time.perf_counter() - started) * 1000.0,
        encode_ms=encode_ms,
        decode_ms=decode_ms,
        wait_ms=wait_ms,
        decode_cpu_ms=decode_cpu_ms,
        mask=None if payload is None else S.MaskPayload(**payload),
    )


def job_info(job: PropagationJob) -> S.JobInfo:
    return S.JobInfo(
        id=job.id,
        session_id=job.session.id,
        kind="propagate",
        state=job.state,  # type: ignore[arg-type]
        label=job.label,
        key_slice=job.key_slice,
        slices_done=job.slices_done,
        slices_total=job.slices_total,
        progress=job.progress,
        slices_written=sorted(job.slices_written),
        message=job.message,
        started_utc=job.started_utc,
        finished_utc=job.finished_utc,
    )


def _points(points: list[list[float]], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if len(points) != len(labels):
        raise PromptError(
            f"{len(points)} points but {len(labels)} point_labels; give one label per point (1 inside, 0 outside)"
        )
    from medsam.types import Points

    p = Points(np.asarray(points, dtype=np.float64).reshape(-1, 2), np.asarray(labels, dtype=np.int64))
    return p.coords, p.labels


# --- the app -------------------------------------------------------------------------------------------


def create_app(settings: ServeSettings | None = None, model: Any = None):
    """Build the FastAPI app. ``model``: a SamModel (tests pass ``tiny_lite``); None builds ``settings.model``."""
    settings = settings or ServeSettings()
    if model is None:
        from medsam.models.registry import build_model

        model = build_model(settings.model, checkpoint=settings.checkpoint, device=settings.device)
    if getattr(getattr(model, "spec", None), "family", "sam") == "sam2":
        raise InputError(
            f"the annotation server runs the slice-by-slice models (lite_medsam, medsam_vit_b, sam_vit_*); "
            f"{model.spec.name} (SAM 2 memory tracking) is not served yet: use it with segment-volume, segment-video "
            "or evaluate (--model medsam2 --checkpoint FILE)"
        )
    engine = ModelEngine(
        model,
        cache_mb=settings.cache_mb,
        prefetch_idle_s=settings.prefetch_idle_s,
        decode_threads=settings.decode_threads,
        encode_threads=settings.encode_threads,
        predictor=build_predictor(model, settings),
    )
    state = ServerState(settings, engine, SessionRegistry(settings))
    from medsam.inference.refine import strategy_of

    refinement = strategy_of(model, settings.refinement)  # how /refine turns clicks into prompts
    if settings.warm_up:
        engine.warm_up()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    app = FastAPI(
        title="medsam annotation server",
        version=__version__,
        description="Prompted segmentation of 2D images and 3D volumes with SAM-family models, for people "
        "annotating: prompts, refinement, undo/redo, labels saved as they are accepted, propagation, exports.",
        lifespan=lifespan,
        responses={
            400: {"model": S.ErrorResponse, "description": "bad input or prompt"},
            401: {"model": S.ErrorResponse, "description": "missing or wrong token"},
            404: {"model": S.ErrorResponse, "description": "unknown session, slice, label, job or export"},
        },
    )
    app.state.medsam = state
    app.add_middleware(
        GuardMiddleware,
        token=settings.token,
        max_body_bytes=settings.max_upload_bytes,
        allowed_hosts=settings.host_allowlist(),
    )

    @app.exception_handler(MedsamError)
    async def _medsam_error(request: Request, exc: MedsamError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=error_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts), "error": "ValidationError"}, status_code=422)

    # --- page -----------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # --- server ---------------------------------------------------------------------------------------

    @app.get("/api/health", response_model=S.Health, tags=["server"])
    def health() -> S.Health:
        return S.Health(
            version=__version__,
            model=engine.name,
            engine=engine_description(engine.predictor),
            device=str(engine.predictor.device),
            sessions=len(state.registry),
            auth_required=settings.token is not None,
            data_root=settings.data_root is not None,
            max_upload_mb=settings.max_upload_mb,
            proposals=everything_available(),
        )

    @app.get("/api/files", response_model=S.FileList, tags=["server"])
    def files(path: str = Query("", description="folder relative to the data root")) -> S.FileList:
        from medsam.serve.source import resolve_in_root

        root = settings.data_root
        folder = resolve_in_root(root, path or ".")
        if not folder.is_dir():
            raise InputError(f"{path!r} is a file, not a folder")
        entries = []
        for child in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
            if child.name.startswith("."):
                continue
            try:
                real = child.resolve()
            except OSError:
                continue
            if real != root and root not in real.parents:
                continue  # symlinks out of the root are not shown
            rel = real.relative_to(root).as_posix() if child.is_symlink() else child.relative_to(root).as_posix()
            entries.append(S.FileEntry(name=child.name, path=rel, is_dir=child.is_dir(), size_bytes=None if child.is_dir() else child.stat().st_size))
        return S.FileList(path=folder.relative_to(root).as_posix() if folder != root else "", entries=entries)

    # --- sessions -------------------------------------------------------------------------------------

    @app.post("/api/sessions", response_model=S.SessionInfo, status_code=201, tags=["sessions"])
    def open_path(req: S.OpenPathRequest) -> S.SessionInfo:
        session = state.registry.open_path(req.path, window=req.window, name=req.name, orientation=req.orientation)
        return session_info(state, session, session.stack)

    @app.post("/api/sessions/upload", response_model=S.SessionInfo, status_code=201, tags=["sessions"])
    def upload(
        file: UploadFile = File(description="an image, a volume file, or a .zip of a DICOM series"),
        window: str = Form("auto"),
        name: str | None = Form(None),
        orientation: S.Orientation = Form("canonical", description="canonical, lps or stored (see OpenPathRequest)"),
    ) -> S.SessionInfo:
        session = state.registry.open_upload(
            file.filename or "upload", file.file, window=window, name=name, orientation=orientation
        )
        return session_info(state, session, session.stack)

    @app.get("/api/sessions", response_model=list[S.SessionSummary], tags=["sessions"])
    def sessions() -> list[S.SessionSummary]:
        return [summary(s) for s in state.registry.list()]

    @app.get("/api/sessions/{sid}", response_model=S.SessionInfo, tags=["sessions"])
    def get_session(sid: str) -> S.SessionInfo:
        session, stack = state.session(sid)
        return session_info(state, session, stack)

    @app.delete("/api/sessions/{sid}", status_code=204, response_class=Response, response_model=None, tags=["sessions"])
    def delete_session(sid: str, confirm: bool = Query(False)) -> Response:
        state.registry.get(sid)
        if not confirm:
            raise Conflict(f"deleting session {sid} removes its accepted labels and exports; pass confirm=true to do it")
        engine.prefetch.cancel(sid)
        state.registry.delete(sid)
        for key in [k for k in state.proposals if k[0] == sid]:
            state.proposals.pop(key, None)
        return Response(status_code=204)

    # --- slices ---------------------------------------------------------------------------------------

    @app.get("/api/sessions/{sid}/slices", response_model=S.SliceList, tags=["slices"])
    def slices(sid: str) -> S.SliceList:
        session, stack = state.session(sid)
        with session.lock:
            present = {z: session.slice_label_values(z) for z in range(stack.depth)}
        return S.SliceList(
            depth=stack.depth,
            slices=[S.SliceInfo(z=z, encoded=engine.is_encoded(stack, z), labels=present[z]) for z in range(stack.depth)],
        )

    def _prefetch(session: Session, stack: ImageStack, z: int) -> None:
        if settings.prefetch_slices <= 0:
            return
        around = [z]
        for d in range(1, settings.prefetch_slices + 1):
            around += [z + d, z - d]
        engine.prefetch.schedule(session.id, stack, [a for a in around if 0 <= a < stack.depth])

    @app.get(
        "/api/sessions/{sid}/slices/{z}/image",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the slice as PNG"}},
        tags=["slices"],
    )
    def slice_image(
        sid: str,
        z: int,
        window: str = Query("auto", description="auto, a CT preset (soft_tissue, lung, bone, brain, liver, mediastinum), 'W,L' or percentile"),
        prefetch: bool = Query(True, description="encode this slice and its neighbours in the background"),
    ) -> Response:
        engine.touch()
        session, stack = state.session(sid)
        stack.check_z(z)
        png = image_png_bytes(stack.display(z, window))
        if prefetch:
            _prefetch(session, stack, z)
        return Response(png, media_type="image/png", headers={"X-Medsam-Encoded": str(engine.is_encoded(stack, z)).lower()})

    @app.post("/api/sessions/{sid}/slices/{z}/encode", response_model=S.EncodeResponse, tags=["slices"])
    def encode(sid: str, z: int) -> S.EncodeResponse:
        engine.touch()
        session, stack = state.session(sid)
        stack.check_z(z)
        cached = engine.is_encoded(stack, z)
        _, ms = engine.encoding(stack, z)
        _prefetch(session, stack, z)
        return S.EncodeResponse(z=z, cached=cached, encode_ms=ms)

    @app.get(
        "/api/sessions/{sid}/slices/{z}/labels",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "8-bit PNG whose values are label values"}},
        tags=["labels"],
    )
    def slice_labels(sid: str, z: int) -> Response:
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            plane = session.labels[z].copy()
            revision = session.revision
        return Response(label_png_bytes(plane), media_type="image/png", headers={"X-Medsam-Revision": str(revision)})

    # --- prompts --------------------------------------------------------------------------------------

    def _decode_step(
        session: Session, stack: ImageStack, z: int, object_id: int, box, points, labels, use_mask: bool, multimask: bool
    ) -> tuple[float, float, float, float]:
        """Encode if needed (outside the session lock), then decode under it and push the step.
        Returns encode, decode, model-wait and decode CPU milliseconds."""
        enc, encode_ms = engine.encoding(stack, z)
        with session.lock:
            hist = session.drafts.get(z, object_id, create=True)
            mask_input = hist.current.logits if use_mask and hist.current is not None else None
            decoded = engine.decode(enc, box=box, points=points, point_labels=labels, mask_input=mask_input, multimask=multimask)
            hist.push(PromptStep.make(box, points, labels, mask_input is not None, decoded.logits, decoded.iou, decoded.mask))
        return encode_ms, decoded.decode_ms, decoded.wait_ms, decoded.decode_cpu_ms

    @app.post("/api/sessions/{sid}/slices/{z}/prompts", response_model=S.MaskResponse, tags=["prompts"])
    def prompts(sid: str, z: int, req: S.PromptRequest) -> S.MaskResponse:
        started = time.perf_counter()
        engine.touch()
        session, stack = state.session(sid)
        stack.check_z(z)
        from medsam.types import Box

        box = None
        if req.box is not None:
            box = Box.from_sequence(req.box, source="box").validate(stack.hw, source="box").as_array()
        points, labels = _points(req.points, req.point_labels)
        if len(points):
            from medsam.types import Points

            Points(points, labels).validate(stack.hw, source="points")
        if box is None and len(points) == 0:
            raise PromptError("no prompt: give a box [x0, y0, x1, y1] and/or points with point_labels")
        timings = _decode_step(session, stack, z, req.object_id, box, points, labels, False, req.multimask)
        with session.lock:
            return mask_response(session, z, req.object_id, req.mask_format, started, *timings)

    def _refine_step(session: Session, stack: ImageStack, z: int, object_id: int, new_points, new_labels) -> tuple[float, float, float, float]:
        """/refine for box-trained models: continue the object's refinement (medsam.inference.refine) with the
        clicks; the step echoes the person's box and all clicks, and keeps the refiner's state for the next one."""
        enc, encode_ms = engine.encoding(stack, z)
        with session.lock:
            hist = session.drafts.get(z, object_id, create=True)
            current = hist.current
            box = None if current is None or current.box is None else np.asarray(current.box)
            old_points = np.zeros((0, 2)) if current is None else current.points
            old_labels = np.zeros(0, np.int64) if current is None else current.point_labels
            decoded, refined = engine.refine(
                enc, refinement, state=None if current is None else current.refine, box=box, points=old_points,
                point_labels=old_labels, clicks=new_points, click_labels=new_labels,
            )
            points = np.concatenate([old_points, new_points])
            labels = np.concatenate([old_labels, new_labels])
            hist.push(PromptStep.make(box, points, labels, False, decoded.logits, decoded.iou, decoded.mask, refine=refined))
        return encode_ms, decoded.decode_ms, decoded.wait_ms, decoded.decode_cpu_ms

    @app.post("/api/sessions/{sid}/slices/{z}/refine", response_model=S.MaskResponse, tags=["prompts"])
    def refine(sid: str, z: int, req: S.RefineRequest) -> S.MaskResponse:
        started = time.perf_counter()
        engine.touch()
        session, stack = state.session(sid)
        stack.check_z(z)
        new_points, new_labels = _points(req.points, req.point_labels)
        from medsam.types import Points

        Points(new_points, new_labels).validate(stack.hw, source="points")
        if refinement == "box_update":
            timings = _refine_step(session, stack, z, req.object_id, new_points, new_labels)
            with session.lock:
                return mask_response(session, z, req.object_id, req.mask_format, started, *timings)
        with session.lock:
            hist = session.drafts.get(z, req.object_id)
            current = hist.current if hist is not None else None
            box = None if current is None or current.box is None else np.asarray(current.box)
            points = new_points if current is None else np.concatenate([current.points, new_points])
            labels = new_labels if current is None else np.concatenate([current.point_labels, new_labels])
        timings = _decode_step(session, stack, z, req.object_id, box, points, labels, True, False)
        with session.lock:
            return mask_response(session, z, req.object_id, req.mask_format, started, *timings)

    def _step(sid: str, z: int, req: S.StepRequest, forward: bool) -> S.MaskResponse:
        started = time.perf_counter()
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            hist = session.drafts.get(z, req.object_id)
            moved = hist is not None and (hist.redo() if forward else hist.undo())
            if not moved:
                what = "redo" if forward else "undo"
                raise Conflict(f"nothing to {what} for object {req.object_id} on slice {z}")
            return mask_response(session, z, req.object_id, req.mask_format, started)

    @app.post("/api/sessions/{sid}/slices/{z}/undo", response_model=S.MaskResponse, tags=["prompts"])
    def undo(sid: str, z: int, req: S.StepRequest = Body(default_factory=S.StepRequest)) -> S.MaskResponse:
        return _step(sid, z, req, False)

    @app.post("/api/sessions/{sid}/slices/{z}/redo", response_model=S.MaskResponse, tags=["prompts"])
    def redo(sid: str, z: int, req: S.StepRequest = Body(default_factory=S.StepRequest)) -> S.MaskResponse:
        return _step(sid, z, req, True)

    @app.get("/api/sessions/{sid}/slices/{z}/draft", response_model=S.MaskResponse, tags=["prompts"])
    def draft(sid: str, z: int, object_id: int = Query(0, ge=0), mask_format: S.MaskFormat = Query("png")) -> S.MaskResponse:
        started = time.perf_counter()
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            return mask_response(session, z, object_id, mask_format, started)

    @app.post("/api/sessions/{sid}/slices/{z}/accept", response_model=S.AcceptResponse, tags=["labels"])
    def accept(sid: str, z: int, req: S.AcceptRequest) -> S.AcceptResponse:
        session, stack = state.session(sid)
        stack.check_z(z)
        with session.lock:
            hist = session.drafts.get(z, req.object_id)
            step = hist.current if hist is not None else None
            if step is None:
                raise Conflict(f"no mask to accept for object {req.object_id} on slice {z}; draw a box or click first")
            mask = step.mask
            if not mask.any():
                raise Conflict(f"the mask of object {req.object_id} on slice {z} is empty; prompt again before accepting")
            return _accept_mask(session, z, mask, req.label.strip(), req.colour, req.mode, lambda: req.clear_draft and session.drafts.drop(z, req.object_id))

    def _accept_mask(session: Session, z: int, mask: np.ndarray, name: str, colour: str | None, mode: str, after=None) -> S.AcceptResponse:
        if not name:
            raise InputError("the label name is empty; give a name such as 'liver'")
        entry = session.find_or_create_label(name, colour)
        area = session.set_slice_label(z, entry, mask, mode=mode, source="accepted")
        session.save()
        if after is not None:
            after()
        return S.AcceptResponse(
            z=z, label=label_info(session, entry), area_px=area, revision=session.revision, mask_sha1=mask_sha1(mask), saved=True
        )

    # --- labels ---------------------------------------------------------------------------------------

    @app.get("/api/sessions/{sid}/labels", response_model=S.LabelList, tags=["labels"])
    def labels(sid: str) -> S.LabelList:
        session, _ = state.session(sid)
        with session.lock:
            return S.LabelList(labels=label_list(session), revision=session.revision)

    @app.patch("/api/sessions/{sid}/labels/{value}", response_model=S.LabelInfo, tags=["labels"])
    def update_label(sid: str, value: int, req: S.LabelUpdate) -> S.LabelInfo:
        session, _ = state.session(sid)
        with session.lock:
            entry = session.label_by(value)
            if req.name is not None:
                name = req.name.strip()
                if any(e.name == name and e.value != value for e in session.labels_table.values()):
                    raise Conflict(f"another label is already called {name!r}; choose another name")
                entry.name = name
            if req.colour is not None:
                entry.colour = req.colour.lower()
            session.save()
            return label_info(session, entry)

    @app.delete("/api/sessions/{sid}/labels/{value}", response_model=S.LabelList, tags=["labels"])
    def delete_label(sid: str, value: int) -> S.LabelList:
        session, _ = state.session(sid)
        with session.lock:
            entry = session.label_by(value)
            if any(j.active and j.label == value for j in session.jobs.values()):
                raise Conflict(f"label {entry.name!r} is being propagated; cancel the job first")
            session.delete_label(entry)
            session.save()
            return S.LabelList(labels=label_list(session), revision=session.revision)

    # --- propagation ----------------------------------------------------------------------------------

    @app.post("/api/sessions/{sid}/propagate", response_model=S.JobInfo, status_code=202, tags=["propagation"])
    def propagate(sid: str, req: S.PropagateRequest) -> S.JobInfo:
        session, stack = state.session(sid)
        if stack.dims != "3d" or stack.depth < 2:
            raise InputError("propagation needs a volume with more than one slice; this session is a 2D image")
        with session.lock:
            entry = session.label_by(req.label)
            if any(j.active and j.label == entry.value for j in session.jobs.values()):
                raise Conflict(f"label {entry.name!r} is already being propagated; poll or cancel that job")
            key = req.z if req.z is not None else default_key_slice(session, entry)
            stack.check_z(key)
            if not (session.labels[key] == entry.value).any():
                raise Conflict(f"label {entry.name!r} has no pixels on slice {key}; accept a mask there or choose another key slice")
            z_range = (0, stack.depth - 1)  # without a z_range the label stops where the object ends
            if req.z_range is not None:
                z_range = (max(0, req.z_range[0]), min(stack.depth - 1, req.z_range[1]))
                if not z_range[0] <= key <= z_range[1]:
                    raise PromptError(f"the key slice {key} is outside z_range {list(req.z_range)}")
            job = PropagationJob(
                session, engine, entry.value, key, z_range, req.mode, req.keep_accepted, settings.propagation_batch,
                limited=req.z_range is not None,
            )
            session.jobs[job.id] = job
        engine.prefetch.cancel(sid)
        job.start()
        return job_info(job)

    corrections: dict[str, CorrectionHistory] = {}

    def _correction_response(session: Session, result) -> S.CorrectionResponse:
        history = corrections.get(session.id)
        return S.CorrectionResponse(
            label=result.label, z=result.z, changed_slices=list(result.changed_slices), ends=list(result.ends),
            revision=result.revision, model_ms=result.model_ms, can_undo=bool(history and history.records),
        )

    @app.post("/api/sessions/{sid}/corrections", response_model=S.CorrectionResponse, tags=["propagation"])
    def correct(sid: str, req: S.CorrectionRequest) -> S.CorrectionResponse:
        session, stack = state.session(sid)
        points, labels = _points(req.points, req.point_labels)
        history = corrections.setdefault(session.id, CorrectionHistory())
        result = correct_label(
            session, stack, engine, history, req.label, req.z, points=points, point_labels=labels, box=req.box,
            strategy=refinement,
        )
        return _correction_response(session, result)

    @app.post("/api/sessions/{sid}/corrections/undo", response_model=S.CorrectionResponse, tags=["propagation"])
    def undo_correct(sid: str) -> S.CorrectionResponse:
        session, _ = state.session(sid)
        result = undo_correction(session, corrections.setdefault(session.id, CorrectionHistory()))
        return _correction_response(session, result)

    @app.get("/api/sessions/{sid}/jobs", response_model=list[S.JobInfo], tags=["propagation"])
    def jobs(sid: str) -> list[S.JobInfo]:
        session = state.registry.get(sid)
        return [job_info(j) for j in session.jobs.values()]

    def _job(sid: str, job_id: str) -> PropagationJob:
        session = state.registry.get(sid)
        job = session.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} does not exist in session {sid}")
        return job

    @app.get("/api/sessions/{sid}/jobs/{job_id}", response_model=S.JobInfo, tags=["propagation"])
    def get_job(sid: str, job_id: str) -> S.JobInfo:
        return job_info(_job(sid, job_id))

    @app.delete("/api/sessions/{sid}/jobs/{job_id}", response_model=S.JobInfo, tags=["propagation"])
    def cancel_job(sid: str, job_id: str) -> S.JobInfo:
        job = _job(sid, job_id)
        job.cancel()
        job.wait(30)
        return job_info(job)

    # --- exports --------------------------------------------------------------------------------------

    def _export_info(session: Session, path: Path, fmt: str) -> S.ExportInfo:
        return S.ExportInfo(
            name=path.name,
            format=fmt,
            size_bytes=path.stat().st_size,
            url=f"/api/sessions/{session.id}/exports/{path.name}",
            path=str(path),
        )

    @app.post("/api/sessions/{sid}/export", response_model=S.ExportInfo, status_code=201, tags=["exports"])
    def export(sid: str, req: S.ExportRequest) -> S.ExportInfo:
        session, _ = state.session(sid)
        with session.lock:
            path = write_export(session, req.format, req.filename, req.overwrite)
        return _export_info(session, path, req.format)

    @app.get("/api/sessions/{sid}/exports", response_model=S.ExportList, tags=["exports"])
    def exports(sid: str) -> S.ExportList:
        session = state.registry.get(sid)
        return S.ExportList(exports=[_export_info(session, p, _format_of(p.name)) for p in list_exports(session)])

    @app.get(
        "/api/sessions/{sid}/exports/{name}",
        response_class=FileResponse,
        responses={200: {"content": {"application/octet-stream": {}}, "description": "the exported file"}},
        tags=["exports"],
    )
    def download(sid: str, name: str) -> FileResponse:
        session = state.registry.get(sid)
        return FileResponse(export_path(session, name), filename=name)

    # --- proposals ("segment everything") -------------------------------------------------------------
    from medsam.serve.proposals import add_proposal_routes

    add_proposal_routes(app, state, _accept_mask)

    # --- PACS over DICOMweb (medsam serve --dicomweb URL) ---------------------------------------------
    from medsam.serve.pacs import add_pacs_routes

    add_pacs_routes(app, state, session_info)

    return app


def engine_description(predictor: Any) -> str:
    encoder = getattr(predictor, "_encoder", None)
    tag = getattr(encoder, "cache_tag", None) or getattr(encoder, "name", None)
    return str(tag) if tag else "torch fp32 (exact)"


def _format_of(name: str) -> str:
    lower = name.lower()
    for suffix, fmt in ((".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"), (".mha", "mha"), (".npz", "npz"), (".dcm", "dicom"), (".png", "png")):
        if lower.endswith(suffix):
            return fmt
    return "file"
