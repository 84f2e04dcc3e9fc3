"""The annotation server as a PACS client (``medsam serve --dicomweb URL``): browse, open, store back.

    GET  /api/pacs                                 is a PACS configured? its address
    GET  /api/pacs/studies?patient=&limit=&offset=  studies (QIDO-RS)
    GET  /api/pacs/studies/{study}/series           the study's series, non-image ones (SEG, SR, ...) flagged
    POST /api/pacs/open                             fetch a series (WADO-RS, verified) into a new session (201)
    GET  /api/sessions/{sid}/pacs                   where the session's series came from (404: not from the PACS)
    POST /api/sessions/{sid}/pacs/store             write the accepted labels as DICOM-SEG or RT-STRUCT (an export
                                                    of the session), STOW-RS it into the PACS, read it back, check it

A series opened from the PACS is kept in the session folder like an upload (so the session reopens without
the PACS); ``pacs.json`` beside it records its address. The server's PACS credentials come from the
``MEDSAM_DICOMWEB_*`` environment of ``medsam serve`` (``medsam.io.dicomweb``); people using the page never see
them. An unreachable PACS, refused credentials or a failed store answer 502 with the reason.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from medsam.errors import InputError
from medsam.serve.errors import NotFound

ORIGIN_FILE = "pacs.json"


class PacsInfo(BaseModel):
    enabled: bool
    url: str | None = None


class PacsStudy(BaseModel):
    study_instance_uid: str
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    description: str = ""
    accession_number: str = ""
    modalities: list[str] = []
    series: int | None = None
    instances: int | None = None


class PacsSeries(BaseModel):
    series_instance_uid: str
    study_instance_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    instances: int | None = None
    image: bool = Field(True, description="false for SEG, SR, RT-STRUCT and other objects that cannot be opened")


class PacsOpenRequest(BaseModel):
    study_instance_uid: str
    series_instance_uid: str
    window: str = "auto"
    name: str | None = None


class PacsOrigin(BaseModel):
    uri: str
    study_instance_uid: str
    series_instance_uid: str


class PacsStoreRequest(BaseModel):
    format: Literal["dicom-seg", "rtstruct"] = "dicom-seg"
    filename: str | None = Field(None, description="name of the export written first (default: a new timestamped name)")
    overwrite: bool = False


class PacsStored(BaseModel):
    kind: str
    export: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_series_instance_uid: str
    referenced_instances: int
    retrieve_url: str
    verified: bool = True


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def read_origin(folder: Path) -> PacsOrigin | None:
    try:
        return PacsOrigin(**json.loads((folder / ORIGIN_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def add_pacs_routes(app: Any, state: Any, session_info: Callable[..., Any]) -> None:
    from medsam.io import dicomweb
    from medsam.serve import schemas as S

    settings = state.settings

    def _server() -> Any:
        if not settings.dicomweb_url:
            raise NotFound("this server has no PACS; start it with `medsam serve --dicomweb http://HOST:PORT/dicom-web`")
        return dicomweb.DicomwebServer.from_url(settings.dicomweb_url)

    def _uid(value: str, what: str) -> str:
        if not dicomweb._UID.match(value) or len(value) > 64:
            raise InputError(f"{what} {value!r} is not a DICOM UID (digits and dots, at most 64 characters)")
        return value

    @app.get("/api/pacs", response_model=PacsInfo, tags=["pacs"])
    def pacs_info() -> PacsInfo:
        return PacsInfo(enabled=bool(settings.dicomweb_url), url=settings.dicomweb_url)

    @app.get("/api/pacs/studies", response_model=list[PacsStudy], tags=["pacs"])
    def pacs_studies(patient: str = "", limit: int = 100, offset: int = 0) -> list[PacsStudy]:
        filters = {"PatientName": f"*{patient.strip()}*"} if patient.strip() else None
        with _server() as server:
            found = server.search_studies(limit=max(1, min(limit, 1000)), offset=max(0, offset), filters=filters)
        studies = [
            PacsStudy(
                study_instance_uid=_text(s.get("StudyInstanceUID")),
                patient_name=_text(s.get("PatientName")),
                patient_id=_text(s.get("PatientID")),
                study_date=_text(s.get("StudyDate")),
                description=_text(s.get("StudyDescription")),
                accession_number=_text(s.get("AccessionNumber")),
                modalities=[m for m in _text(s.get("ModalitiesInStudy")).split("\\") if m],
                series=_int(s.get("NumberOfStudyRelatedSeries")),
                instances=_int(s.get("NumberOfStudyRelatedInstances")),
            )
            for s in found
        ]
        return sorted(studies, key=lambda s: (s.study_date, s.patient_name), reverse=True)

    @app.get("/api/pacs/studies/{study}/series", response_model=list[PacsSeries], tags=["pacs"])
    def pacs_series(study: str) -> list[PacsSeries]:
        _uid(study, "study")
        with _server() as server:
            found = server.search_series(study)
        series = [
            PacsSeries(
                series_instance_uid=_text(s.get("SeriesInstanceUID")),
                study_instance_uid=study,
                modality=_text(s.get("Modality")),
                description=_text(s.get("SeriesDescription")),
                number=_int(s.get("SeriesNumber")),
                instances=_int(s.get("NumberOfSeriesRelatedInstances")),
                image=dicomweb._describe_kind(_text(s.get("Modality")), None) is None,
            )
            for s in found
        ]
        return sorted(series, key=lambda s: (not s.image, s.number if s.number is not None else 1 << 30))

    @app.post("/api/pacs/open", response_model=S.SessionInfo, status_code=201, tags=["pacs"])
    def pacs_open(req: PacsOpenRequest) -> S.SessionInfo:
        study = _uid(req.study_instance_uid.strip(), "study")
        series_uid = _uid(req.series_instance_uid.strip(), "series")
        ref = dicomweb.DicomwebSeriesRef(settings.dicomweb_url or "", study, series_uid)
        with _server() as server:

            def fetch(source_dir: Path) -> Path:
                folder = dicomweb.fetch_series(ref, cache_dir=source_dir, server=server, progress=False)
                origin = PacsOrigin(uri=ref.uri, study_instance_uid=study, series_instance_uid=series_uid)
                (source_dir.parent / ORIGIN_FILE).write_text(origin.model_dump_json(indent=1), encoding="utf-8")
                return folder

            label = req.name
            if not label:
                found = server.search_series(study, series_uid)
                first = found[0] if found else {}
                label = " ".join(p for p in (_text(first.get("Modality")), _text(first.get("SeriesDescription"))) if p)
                label = label or f"series {series_uid[-12:]}"
            session = state.registry.open_fetched(f"pacs_{series_uid[-16:]}", fetch, window=req.window, name=label)
        return session_info(state, session, session.stack)

    def _origin(sid: str) -> tuple[Any, PacsOrigin]:
        session = state.registry.get(sid)
        origin = read_origin(session.folder)
        if origin is None:
            raise NotFound(f"session {sid} was not opened from the PACS; open the series with POST /api/pacs/open to store back")
        return session, origin

    @app.get("/api/sessions/{sid}/pacs", response_model=PacsOrigin, tags=["pacs"])
    def session_origin(sid: str) -> PacsOrigin:
        return _origin(sid)[1]

    @app.post("/api/sessions/{sid}/pacs/store", response_model=PacsStored, status_code=201, tags=["pacs"])
    def pacs_store(sid: str, req: PacsStoreRequest) -> PacsStored:
        from medsam.serve.exports import SUFFIXES, write_export

        session, origin = _origin(sid)
        session, _ = state.session(sid)
        with _server() as server:
            ref = dicomweb.DicomwebSeriesRef(server.config.base_url, origin.study_instance_uid, origin.series_instance_uid)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
            filename = req.filename or f"pacs_{stamp}_{'seg' if req.format == 'dicom-seg' else 'rtstruct'}{SUFFIXES[req.format]}"
            with session.lock:  # the labels must not change while written
                path = write_export(session, req.format, filename, req.overwrite)
            stored = dicomweb.store_result(path, ref.uri, server=server)
        return PacsStored(
            kind=stored.kind,
            export=path.name,
            sop_instance_uid=stored.sop_instance_uid,
            series_instance_uid=stored.series_instance_uid,
            study_instance_uid=stored.study_instance_uid,
            source_series_instance_uid=stored.source_series_instance_uid,
            referenced_instances=stored.referenced_instances,
            retrieve_url=stored.retrieve_url,
        )
