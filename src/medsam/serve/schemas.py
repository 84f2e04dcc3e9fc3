"""Request and response bodies of the HTTP API (pydantic), shared by the server and ``medsam.client``.

Conventions as everywhere in the toolkit: points (x, y) and boxes (x0, y0, x1, y1) in pixels of the slice,
slice index z along the first axis of a (z, y, x) volume (a 2D image has one slice, z = 0).

Frame: every slice index, pixel coordinate, shape and spacing of the HTTP API is in the session's *view*
frame, the volume as the session shows it (``SessionInfo.orientation``: by default "canonical", the
radiological display orientation of the series' slice plane; "stored" = the arrays as stored). Exports map
the labels back to the source file's own grid.

Masks travel as ``MaskPayload``: ``png`` = base64 of a 1-bit PNG of the full-size mask (white = object);
``rle`` = run lengths over the pixels in row-major order, starting with a run of background (possibly 0).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MaskFormat = Literal["png", "rle", "none"]
Orientation = Literal["canonical", "lps", "stored"]
ExportFormat = Literal["png", "overlay", "nifti", "nrrd", "mha", "npz", "dicom-seg", "rtstruct", "montage"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
HEX_COLOUR = r"^#[0-9a-fA-F]{6}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is a message for people, ``error`` the kind of error."""

    detail: str
    error: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    model: str
    engine: str = Field("", description="the execution engine running the model")
    device: str
    sessions: int
    auth_required: bool
    data_root: bool = Field(description="whether images may be opened by path (the server has a --data-root)")
    max_upload_mb: float
    proposals: bool = Field(description="whether automatic proposals ('segment everything') are available")


class FileEntry(BaseModel):
    name: str
    path: str = Field(description="path relative to the data root, '/'-separated")
    is_dir: bool
    size_bytes: int | None = None


class FileList(BaseModel):
    path: str
    entries: list[FileEntry]


class OpenPathRequest(_Model):
    path: str = Field(description="a file or DICOM folder relative to the server's --data-root", min_length=1)
    window: str = Field("auto", description="intensity window of the model input: auto, a CT preset, W,L, percentile")
    name: str | None = Field(None, description="display name (default: the file name)")
    orientation: Orientation = Field(
        "canonical",
        description="how a volume is shown and segmented: canonical (radiological display orientation of its slice "
        "plane, slices kept), lps (strict LPS, may reslice), stored (as stored); every slice index and pixel of the "
        "session is then in this view",
    )


class OrientationInfo(BaseModel):
    name: str = Field(description="the orientation asked for: canonical, lps or stored")
    plane: str = Field(description="acquisition plane of the series: axial, coronal, sagittal ('' for 2D images)")
    order: list[int] = Field(description="view axis k (z, y, x) is stored axis order[k] (0 = z, 1 = y, 2 = x)")
    flip: list[bool] = Field(description="per view axis (z, y, x): runs opposite to its stored axis")
    source_shape: list[int] = Field(description="(z, y, x) shape of the array as stored")
    description: str = Field(description="for people, e.g. 'stored x flipped, y flipped'")


class LabelInfo(BaseModel):
    value: int = Field(description="value of the label in the label volume (1..255)")
    name: str
    colour: str = Field(description="#rrggbb")
    voxels: int
    slices: list[int] = Field(description="slices that hold this label")
    accepted_slices: list[int] = Field(description="slices a person accepted")
    propagated_slices: list[int] = Field(description="slices filled by propagation")
    corrected_slices: list[int] = Field(default_factory=list, description="slices a person corrected in 3D (clicks or a box)")


class SessionSummary(BaseModel):
    id: str
    name: str
    dims: Literal["2d", "3d"]
    created_utc: str
    updated_utc: str
    available: bool = Field(description="false when the source cannot be read any more (see problem)")
    problem: str | None = None
    labels: int


class SessionInfo(SessionSummary):
    shape: list[int] = Field(description="(z, y, x) of the view; a 2D image has z = 1")
    orientation: OrientationInfo = Field(description="the view the session shows; all slice indices and pixels are in it")
    channels: int = Field(description="1 for grayscale, 3 for colour images")
    spacing_mm: list[float] = Field(description="(z, y, x) voxel size in mm, of the view")
    modality: str | None
    dtype: str
    model_window: str
    window_presets: list[str] = Field(description="display windows that make sense for this data")
    default_window: str
    encoded_slices: list[int]
    label_list: list[LabelInfo]
    exports: list[str]
    revision: int


class SliceInfo(BaseModel):
    z: int
    encoded: bool
    labels: list[int]


class SliceList(BaseModel):
    depth: int
    slices: list[SliceInfo]


class EncodeResponse(BaseModel):
    z: int
    cached: bool
    encode_ms: float


class PromptRequest(_Model):
    """A new prompt set for one object on one slice (replaces the object's current prompt; undo brings it back)."""

    object_id: int = Field(0, ge=0, description="which draft object on this slice (several may be drafted at once)")
    box: list[float] | None = Field(None, description="x0, y0, x1, y1 in slice pixels")
    points: list[list[float]] = Field(default_factory=list, description="[[x, y], ...] in slice pixels")
    point_labels: list[int] = Field(default_factory=list, description="one per point: 1 inside, 0 outside")
    multimask: bool = Field(False, description="ask for 3 masks and keep the one with the best predicted IoU")
    mask_format: MaskFormat = "png"

    @field_validator("box")
    @classmethod
    def _box(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) != 4:
            raise ValueError(f"a box needs exactly 4 numbers x0, y0, x1, y1; got {len(v)}")
        return v

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[list[float]]) -> list[list[float]]:
        for i, p in enumerate(v):
            if len(p) != 2:
                raise ValueError(f"point {i + 1} has {len(p)} numbers; a point is [x, y]")
        return v


class RefineRequest(_Model):
    """More clicks on the object's current mask: they are added to its prompt. Box-trained models (LiteMedSAM,
    MedSAM) keep getting only the box: the clicks grow it and edit its mask (medsam.inference.refine); for SAM
    the clicks become point prompts and the previous low-res logits the mask prompt."""

    object_id: int = Field(0, ge=0)
    points: list[list[float]] = Field(min_length=1, description="[[x, y], ...] in slice pixels")
    point_labels: list[int] = Field(min_length=1, description="one per point: 1 inside, 0 outside")
    mask_format: MaskFormat = "png"

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[list[float]]) -> list[list[float]]:
        return PromptRequest._points(v)


class CorrectionRequest(_Model):
    """A 3D correction of a label: clicks and/or a box on slice z re-segment it and re-propagate the label both ways
    until the new masks agree with the existing ones or the object ends; accepted slices are never changed.
    Coordinates are in slice pixels of the session's view (as everywhere in this API)."""

    label: int | str = Field(description="label value or name to correct")
    z: int = Field(ge=0, description="the slice clicked on")
    points: list[list[float]] = Field(default_factory=list, description="[[x, y], ...] in slice pixels")
    point_labels: list[int] = Field(default_factory=list, description="one per point: 1 object here, 0 not object")
    box: list[float] | None = Field(None, description="a new box [x0, y0, x1, y1] for the label on this slice")

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[list[float]]) -> list[list[float]]:
        return PromptRequest._points(v) if v else v


class CorrectionResponse(BaseModel):
    label: int
    z: int = Field(description="the corrected slice (-1 for an undo)")
    changed_slices: list[int] = Field(description="slices whose mask of the label changed")
    ends: list[str] = Field(description="why the re-propagation stopped, per direction")
    revision: int
    model_ms: float
    can_undo: bool


class StepRequest(_Model):
    object_id: int = Field(0, ge=0)
    mask_format: MaskFormat = "png"


class MaskPayload(BaseModel):
    encoding: Literal["png", "rle"]
    width: int
    height: int
    data: str | None = Field(None, description="png: base64 of a 1-bit PNG of the mask")
    counts: list[int] | None = Field(None, description="rle: run lengths, row-major, background first")


class PromptEcho(BaseModel):
    box: list[float] | None
    points: list[list[float]]
    point_labels: list[int]
    used_mask_prompt: bool


class MaskResponse(BaseModel):
    session_id: str
    z: int
    object_id: int
    has_mask: bool = Field(description="false when undo went back before the first prompt")
    step: int = Field(description="position in the prompt history (0-based; -1 = before the first prompt)")
    steps: int
    can_undo: bool
    can_redo: bool
    iou: float | None = Field(description="the model's own estimate of the mask's IoU")
    area_px: int
    bbox: list[float] | None = Field(description="tight x0, y0, x1, y1 of the mask")
    prompt: PromptEcho | None
    latency_ms: float = Field(description="server time for this request")
    encode_ms: float = Field(description="time spent encoding the slice in this request (0 when it was cached)")
    decode_ms: float = Field(description="the decoder call and mask post-processing")
    wait_ms: float = Field(0.0, description="time waiting for the model (another request or a background encode held it)")
    decode_cpu_ms: float = Field(
        0.0,
        description="CPU time of the decode in the serving thread: with the torch engine and one decode thread, its "
        "time on a quiet core; OpenVINO/onnxruntime run in threads of their own, not counted here",
    )
    mask: MaskPayload | None


class AcceptRequest(_Model):
    object_id: int = Field(0, ge=0)
    label: str = Field(min_length=1, max_length=64, description="label name; an existing name adds to that label")
    colour: str | None = Field(None, pattern=HEX_COLOUR, description="#rrggbb (new labels; default: the palette)")
    mode: Literal["replace", "add"] = Field(
        "replace", description="replace: the label on this slice becomes this mask; add: union with what is there"
    )
    clear_draft: bool = Field(True, description="forget the object's prompt history once accepted")


class AcceptResponse(BaseModel):
    z: int
    label: LabelInfo
    area_px: int
    revision: int = Field(description="session revision after this change (increases with every saved change)")
    mask_sha1: str = Field(description="SHA-1 of the accepted (H, W) mask as uint8 0/1 bytes")
    saved: bool


class LabelUpdate(_Model):
    name: str | None = Field(None, min_length=1, max_length=64)
    colour: str | None = Field(None, pattern=HEX_COLOUR)


class LabelList(BaseModel):
    labels: list[LabelInfo]
    revision: int


class PropagateRequest(_Model):
    label: int | str = Field(description="label value or name to propagate")
    z: int | None = Field(None, description="key slice (default: the accepted slice with the largest area)")
    z_range: list[int] | None = Field(None, description="inclusive [z_first, z_last] the label may reach")
    mode: Literal["default", "reference"] = "default"
    keep_accepted: bool = Field(True, description="never overwrite slices a person accepted for this label")

    @field_validator("z_range")
    @classmethod
    def _range(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or v[1] < v[0]):
            raise ValueError("z_range is [z_first, z_last] with z_first <= z_last")
        return v


class JobInfo(BaseModel):
    id: str
    session_id: str
    kind: Literal["propagate"]
    state: JobState
    label: int
    key_slice: int
    slices_done: int
    slices_total: int
    progress: float = Field(description="0..1")
    slices_written: list[int]
    message: str | None
    started_utc: str
    finished_utc: str | None


class ExportRequest(_Model):
    format: ExportFormat
    filename: str | None = Field(None, description="plain file name (no folders); default from the session name")
    overwrite: bool = Field(False, description="replace an existing export of that name (else 409)")


class ExportInfo(BaseModel):
    name: str
    format: str
    size_bytes: int
    url: str
    path: str = Field(description="where the server wrote it (inside the session folder)")


class ExportList(BaseModel):
    exports: list[ExportInfo]


class ProposalRequest(_Model):
    """Ask for automatic proposals ("segment everything") on one slice; they are kept until picked or deleted."""

    mask_format: MaskFormat = "png"
    max_proposals: int = Field(32, ge=1, le=256, description="keep the largest N")
    grid: int = Field(16, ge=2, le=64, description="prompts on a grid x grid lattice (more finds smaller things)")
    pred_iou_thresh: float | None = Field(None, ge=0, le=1, description="default: the segmenter's for the model")
    stability_thresh: float | None = Field(None, ge=0, le=1)
    refresh: bool = Field(False, description="compute again even when proposals of this slice are kept")


class Proposal(BaseModel):
    id: int
    area_px: int
    bbox: list[float] = Field(description="tight x0, y0, x1, y1 (inclusive)")
    iou: float | None = Field(description="the model's predicted IoU")
    stability: float | None
    mask: MaskPayload | None


class ProposalList(BaseModel):
    z: int
    proposals: list[Proposal]
    latency_ms: float = Field(description="server time of this request (0-ish when the proposals were kept)")
    computed: bool = Field(description="true when this request ran the segmenter")


class ProposalAccept(_Model):
    label: str = Field(min_length=1, max_length=64)
    colour: str | None = Field(None, pattern=HEX_COLOUR)
    mode: Literal["replace", "add"] = "add"
