"""A thin Python client of the annotation server (``medsam serve``): one method per endpoint.

    from medsam.client import MedsamClient, mask_array

    with MedsamClient("http://127.0.0.1:8000", token=None) as c:
        s = c.open_path("ct/case01.nii.gz", window="soft_tissue")     # or c.upload("scan.png")
        r = c.prompt(s.id, z=40, box=[120, 80, 190, 150])              # MaskResponse; mask_array(r) -> bool (H, W)
        r = c.refine(s.id, z=40, points=[[150, 120]], point_labels=[0])
        c.accept(s.id, z=40, label="liver", colour="#ff4040")
        job = c.wait_job(s.id, c.propagate(s.id, label="liver").id)
        info = c.export(s.id, "nifti")                                 # written in the session folder
        c.download(s.id, info.name, "liver.nii.gz")

Answers are the server's own pydantic models (``medsam.serve.schemas``). An error answer raises
:class:`ApiError` with the HTTP status and the server's message. Needs the ``serve`` extra (httpx).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsam.errors import MedsamError
from medsam.serve import schemas as S
from medsam.serve.masks import decode_payload


class ApiError(MedsamError):
    """An error answer of the server: ``status`` (HTTP), ``kind`` (e.g. "PromptError") and the message."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.kind = kind
        self.message = message


def mask_array(response: S.MaskResponse | S.Proposal) -> np.ndarray | None:
    """The boolean (H, W) mask of a MaskResponse or Proposal (None when it carries none)."""
    return None if response.mask is None else decode_payload(response.mask)


class MedsamClient:
    """Mirror of the HTTP API. ``base_url`` like ``http://127.0.0.1:8000``; ``token`` as given to the server."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 120.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "MedsamClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                message, kind = body.get("detail", response.text), body.get("error", "")
            except ValueError:
                message, kind = response.text, ""
            raise ApiError(response.status_code, message, kind)
        return response

    def _json(self, method: str, path: str, model: Any = None, **kwargs: Any) -> Any:
        data = self._request(method, path, **kwargs).json()
        if model is None:
            return data
        if isinstance(model, list):
            return [model[0].model_validate(item) for item in data]
        return model.model_validate(data)

    @staticmethod
    def _body(**fields: Any) -> dict:
        return {k: v for k, v in fields.items() if v is not None}

    # --- server and sessions ----------------------------------------------------------------------------

    def health(self) -> S.Health:
        return self._json("GET", "/api/health", S.Health)

    def files(self, path: str = "") -> S.FileList:
        return self._json("GET", "/api/files", S.FileList, params={"path": path})

    def open_path(
        self, path: str, *, window: str = "auto", name: str | None = None, orientation: str = "canonical"
    ) -> S.SessionInfo:
        """Open a file of the data root; ``orientation`` (canonical, lps, stored) is the frame of every slice
        index and pixel of the session."""
        body = self._body(path=path, window=window, name=name, orientation=orientation)
        return self._json("POST", "/api/sessions", S.SessionInfo, json=body)

    def upload(
        self, file: str | Path, *, window: str = "auto", name: str | None = None, orientation: str = "canonical"
    ) -> S.SessionInfo:
        file = Path(file)
        data = self._body(window=window, name=name, orientation=orientation)
        with open(file, "rb") as fh:
            return self._json("POST", "/api/sessions/upload", S.SessionInfo, files={"file": (file.name, fh)}, data=data)

    def sessions(self) -> list[S.SessionSummary]:
        return self._json("GET", "/api/sessions", [S.SessionSummary])

    def session(self, sid: str) -> S.SessionInfo:
        return self._json("GET", f"/api/sessions/{sid}", S.SessionInfo)

    def delete_session(self, sid: str) -> None:
        self._request("DELETE", f"/api/sessions/{sid}", params={"confirm": "true"})

    # --- slices -----------------------------------------------------------------------------------------

    def slices(self, sid: str) -> S.SliceList:
        return self._json("GET", f"/api/sessions/{sid}/slices", S.SliceList)

    def slice_png(self, sid: str, z: int = 0, window: str = "auto", *, prefetch: bool = True) -> bytes:
        params = {"window": window, "prefetch": str(prefetch).lower()}
        return self._request("GET", f"/api/sessions/{sid}/slices/{z}/image", params=params).content

    def slice_image(self, sid: str, z: int = 0, window: str = "auto") -> np.ndarray:
        """The slice as displayed: uint8 (H, W) or (H, W, 3)."""
        import io

        from PIL import Image

        with Image.open(io.BytesIO(self.slice_png(sid, z, window))) as img:
            return np.asarray(img)

    def encode(self, sid: str, z: int = 0) -> S.EncodeResponse:
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/encode", S.EncodeResponse)

    # --- prompts ----------------------------------------------------------------------------------------

    def prompt(
        self,
        sid: str,
        z: int = 0,
        *,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] = (),
        point_labels: Sequence[int] = (),
        object_id: int = 0,
        multimask: bool = False,
        mask_format: str = "png",
    ) -> S.MaskResponse:
        body = {
            "object_id": object_id,
            "box": None if box is None else [float(v) for v in box],
            "points": [[float(x), float(y)] for x, y in points],
            "point_labels": [int(v) for v in point_labels],
            "multimask": multimask,
            "mask_format": mask_format,
        }
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/prompts", S.MaskResponse, json=body)

    def refine(
        self,
        sid: str,
        z: int = 0,
        *,
        points: Sequence[Sequence[float]],
        point_labels: Sequence[int],
        object_id: int = 0,
        mask_format: str = "png",
    ) -> S.MaskResponse:
        body = {
            "object_id": object_id,
            "points": [[float(x), float(y)] for x, y in points],
            "point_labels": [int(v) for v in point_labels],
            "mask_format": mask_format,
        }
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/refine", S.MaskResponse, json=body)

    def undo(self, sid: str, z: int = 0, *, object_id: int = 0, mask_format: str = "png") -> S.MaskResponse:
        body = {"object_id": object_id, "mask_format": mask_format}
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/undo", S.MaskResponse, json=body)

    def redo(self, sid: str, z: int = 0, *, object_id: int = 0, mask_format: str = "png") -> S.MaskResponse:
        body = {"object_id": object_id, "mask_format": mask_format}
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/redo", S.MaskResponse, json=body)

    def draft(self, sid: str, z: int = 0, *, object_id: int = 0, mask_format: str = "png") -> S.MaskResponse:
        params = {"object_id": object_id, "mask_format": mask_format}
        return self._json("GET", f"/api/sessions/{sid}/slices/{z}/draft", S.MaskResponse, params=params)

    def accept(
        self,
        sid: str,
        z: int = 0,
        *,
        label: str,
        colour: str | None = None,
        object_id: int = 0,
        mode: str = "replace",
        clear_draft: bool = True,
    ) -> S.AcceptResponse:
        body = self._body(object_id=object_id, label=label, colour=colour, mode=mode, clear_draft=clear_draft)
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/accept", S.AcceptResponse, json=body)

    # --- labels -----------------------------------------------------------------------------------------

    def labels(self, sid: str) -> S.LabelList:
        return self._json("GET", f"/api/sessions/{sid}/labels", S.LabelList)

    def slice_labels(self, sid: str, z: int = 0) -> np.ndarray:
        """The slice's label map (H, W) uint8, values = label values."""
        import io

        from PIL import Image

        data = self._request("GET", f"/api/sessions/{sid}/slices/{z}/labels").content
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img)

    def update_label(self, sid: str, value: int, *, name: str | None = None, colour: str | None = None) -> S.LabelInfo:
        return self._json("PATCH", f"/api/sessions/{sid}/labels/{value}", S.LabelInfo, json=self._body(name=name, colour=colour))

    def rename_label(self, sid: str, value: int, name: str) -> S.LabelInfo:
        return self.update_label(sid, value, name=name)

    def delete_label(self, sid: str, value: int) -> S.LabelList:
        return self._json("DELETE", f"/api/sessions/{sid}/labels/{value}", S.LabelList)

    # --- propagation ------------------------------------------------------------------------------------

    def propagate(
        self,
        sid: str,
        *,
        label: int | str,
        z: int | None = None,
        z_range: Sequence[int] | None = None,
        mode: str = "default",
        keep_accepted: bool = True,
    ) -> S.JobInfo:
        body = self._body(label=label, z=z, z_range=None if z_range is None else list(z_range), mode=mode, keep_accepted=keep_accepted)
        return self._json("POST", f"/api/sessions/{sid}/propagate", S.JobInfo, json=body)

    def jobs(self, sid: str) -> list[S.JobInfo]:
        return self._json("GET", f"/api/sessions/{sid}/jobs", [S.JobInfo])

    def job(self, sid: str, job_id: str) -> S.JobInfo:
        return self._json("GET", f"/api/sessions/{sid}/jobs/{job_id}", S.JobInfo)

    def cancel_job(self, sid: str, job_id: str) -> S.JobInfo:
        return self._json("DELETE", f"/api/sessions/{sid}/jobs/{job_id}", S.JobInfo)

    def wait_job(self, sid: str, job_id: str, *, timeout: float = 600.0, poll_s: float = 0.2) -> S.JobInfo:
        """Poll until the job is done, failed or cancelled (TimeoutError after ``timeout`` seconds)."""
        end = time.monotonic() + timeout
        while True:
            job = self.job(sid, job_id)
            if job.state not in ("queued", "running"):
                return job
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:g} s ({job.slices_done}/{job.slices_total} slices)")
            time.sleep(poll_s)

    # --- exports ----------------------------------------------------------------------------------------

    def export(self, sid: str, format: str, *, filename: str | None = None, overwrite: bool = False) -> S.ExportInfo:
        body = self._body(format=format, filename=filename, overwrite=overwrite)
        return self._json("POST", f"/api/sessions/{sid}/export", S.ExportInfo, json=body)

    def exports(self, sid: str) -> S.ExportList:
        return self._json("GET", f"/api/sessions/{sid}/exports", S.ExportList)

    def download(self, sid: str, name: str, target: str | Path | None = None, *, overwrite: bool = False) -> bytes:
        """The exported file's bytes; with ``target`` also written there (atomic, never overwritten unasked)."""
        data = self._request("GET", f"/api/sessions/{sid}/exports/{name}").content
        if target is not None:
            from medsam.io.atomic import atomic_path

            with atomic_path(target, overwrite=overwrite) as tmp:
                tmp.write_bytes(data)
        return data

    # --- proposals --------------------------------------------------------------------------------------

    def proposals(
        self,
        sid: str,
        z: int = 0,
        *,
        max_proposals: int = 32,
        grid: int = 16,
        pred_iou_thresh: float | None = None,
        stability_thresh: float | None = None,
        refresh: bool = False,
        mask_format: str = "png",
    ) -> S.ProposalList:
        """Automatic proposals of slice z (computed once, then kept until picked, deleted or refreshed)."""
        body = self._body(
            max_proposals=max_proposals,
            grid=grid,
            pred_iou_thresh=pred_iou_thresh,
            stability_thresh=stability_thresh,
            refresh=refresh,
            mask_format=mask_format,
        )
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/proposals", S.ProposalList, json=body)

    def kept_proposals(self, sid: str, z: int = 0, *, mask_format: str = "png") -> S.ProposalList:
        return self._json("GET", f"/api/sessions/{sid}/slices/{z}/proposals", S.ProposalList, params={"mask_format": mask_format})

    def accept_proposal(
        self, sid: str, z: int, proposal_id: int, *, label: str, colour: str | None = None, mode: str = "add"
    ) -> S.AcceptResponse:
        body = self._body(label=label, colour=colour, mode=mode)
        return self._json("POST", f"/api/sessions/{sid}/slices/{z}/proposals/{proposal_id}/accept", S.AcceptResponse, json=body)

    def delete_proposal(self, sid: str, z: int, proposal_id: int) -> S.ProposalList:
        return self._json("DELETE", f"/api/sessions/{sid}/slices/{z}/proposals/{proposal_id}", S.ProposalList)
