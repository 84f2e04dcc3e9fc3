"""Which way up a volume reaches the model: axis permutations and flips only, never resampling.

A stored (z, y, x) array can lie in the file in any orientation: a CT written RAS (as dcm2niix often does)
shows the spine at the top of every slice, a MedSAM2 npz may have rows and columns transposed. LiteMedSAM
was trained on slices in the radiological display orientation, so the toolkit shows and segments the
*view*: the same voxels permuted/flipped into that orientation, and maps the results back to the stored
grid exactly (a permutation and flips are their own exact inverse).

    from medsam.preprocess.orientation import orient_volume

    oriented = orient_volume(volume, "canonical")         # OrientedVolume(source, view, reorientation)
    oriented.view.array                                    # what the model and people see
    labels_src = oriented.labels_to_source(labels_view)    # back on the stored grid, voxel for voxel
    oriented.reorientation.box3d_to_view(box)              # prompts given in stored indices -> view

Orientations (``ORIENTATIONS``):

- ``"canonical"`` (default): the radiological display orientation of the series' own slice plane; the slice
  axis is kept (no reslicing). Axial (slice normal mostly along S): columns -> patient Left, rows ->
  Posterior (anterior up, patient right on the image's left), slices -> Superior; this equals LPS.
  Coronal: columns -> L, rows -> Inferior (head up), slices -> P. Sagittal: columns -> P (anterior on the
  left), rows -> Inferior, slices -> Right (the right-handed cross product of P and I).
- ``"lps"``: strict LPS (columns -> L, rows -> P, slices -> S) whatever the acquisition plane; a sagittal or
  coronal series is then resliced (a 2D prompt drawn on a stored slice has no meaning on a view slice).
- ``"stored"``: the identity (the arrays as stored).

Directions follow :class:`medsam.types.Volume`: a 3x3 matrix whose columns are the physical (LPS) directions
of the x, y and z index axes (ITK). Oblique directions take the nearest axes by |dot product| (a
permutation), the signs from the dot products.

Frames: *stored* (source) indices are those of ``volume.array``; *view* indices those of
``reorientation.to_view(volume.array)``. Boxes are :class:`medsam.types.Box` (x0, y0, x1, y1) and
:class:`medsam.types.Box3D` (x0, y0, z0, x1, y1, z1), inclusive voxel indices; points (x, y); index arrays
(N, 3) are (z, y, x).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from medsam.errors import InputError, PromptError
from medsam.types import Box, Box3D, Volume

OrientationName = Literal["canonical", "lps", "stored"]
ORIENTATIONS: tuple[str, ...] = ("canonical", "lps", "stored")
AXIS_NAMES = ("z", "y", "x")  # array axes of a (z, y, x) volume

_L, _P, _S = np.eye(3)
# Target physical direction of view array axes (z, y, x) per acquisition plane, in LPS.
_CANONICAL_TARGETS = {
    "axial": (_S, _P, _L),
    "coronal": (_P, -_S, _L),
    "sagittal": (np.cross(_P, -_S), -_S, _P),  # slices: P x I = R
}
_LPS_TARGETS = (_S, _P, _L)
_TIE = 1e-9


@dataclass(frozen=True)
class AxisReorientation:
    """How a stored (z, y, x) array maps to the view by an axis permutation and flips.

    source_shape: the stored (z, y, x) shape.
    order: view array axis k is stored array axis ``order[k]`` (0 = z, 1 = y, 2 = x).
    flip: per view axis, whether it runs opposite to its stored axis.
    name: the orientation asked for ("canonical", "lps", "stored"); plane: the acquisition plane it was
    chosen for ("axial", "coronal", "sagittal", or "" when not known).
    """

    source_shape: tuple[int, int, int]
    order: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (False, False, False)
    name: str = "stored"
    plane: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.source_shape)
        order = tuple(int(a) for a in self.order)
        flip = tuple(bool(f) for f in self.flip)
        if len(shape) != 3 or any(s < 1 for s in shape):
            raise InputError(f"reorientation: source shape {self.source_shape} is not a (z, y, x) shape")
        if sorted(order) != [0, 1, 2]:
            raise InputError(f"reorientation: order {self.order} is not a permutation of (0, 1, 2)")
        if len(flip) != 3:
            raise InputError(f"reorientation: flip {self.flip} needs one value per view axis")
        object.__setattr__(self, "source_shape", shape)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "flip", flip)

    # --- what it is -----------------------------------------------------------------------------------

    @classmethod
    def identity(cls, shape: Sequence[int], name: str = "stored") -> "AxisReorientation":
        return cls(tuple(int(s) for s in shape[:3]), name=name)  # type: ignore[arg-type]

    @property
    def is_identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flip)

    @property
    def view_shape(self) -> tuple[int, int, int]:
        return tuple(self.source_shape[a] for a in self.order)  # type: ignore[return-value]

    @property
    def keeps_slice_axis(self) -> bool:
        """True when view slices are stored slices (view z is stored z, maybe reversed)."""
        return self.order[0] == 0

    @property
    def inverse_order(self) -> tuple[int, int, int]:
        """Stored axis a is view axis ``inverse_order[a]``."""
        return tuple(int(k) for k in np.argsort(self.order))  # type: ignore[return-value]

    def describe(self) -> str:
        """For people: "stored x flipped, y flipped", "rows and columns swapped, z flipped", "as stored"."""
        parts = []
        if self.order != (0, 1, 2):
            if self.order == (0, 2, 1):
                parts.append("rows and columns swapped")
            else:
                parts.append("view (z, y, x) = stored (" + ", ".join(AXIS_NAMES[a] for a in self.order) + ")")
        flipped = [AXIS_NAMES[self.order[k]] for k in (2, 1, 0) if self.flip[k]]
        if flipped:
            parts.append("stored " + " flipped, ".join(flipped) + " flipped")
        return ", ".join(parts) if parts else "as stored"

    def summary(self) -> str:
        """``"canonical (axial): stored x flipped, y flipped"``."""
        plane = f" ({self.plane})" if self.plane else ""
        return f"{self.name}{plane}: {self.describe()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plane": self.plane,
            "source_shape": list(self.source_shape),
            "order": list(self.order),
            "flip": list(self.flip),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AxisReorientation":
        try:
            return cls(
                tuple(data["source_shape"]), tuple(data.get("order", (0, 1, 2))),  # type: ignore[arg-type]
                tuple(data.get("flip", (False, False, False))), str(data.get("name", "stored")),  # type: ignore[arg-type]
                str(data.get("plane", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"reorientation record {dict(data)!r} is not valid: {exc}") from exc

    # --- arrays ---------------------------------------------------------------------------------------

    def _check(self, shape: tuple[int, ...], expected: tuple[int, int, int], frame: str) -> None:
        if len(shape) < 3 or tuple(shape[:3]) != tuple(expected):
            raise InputError(
                f"array of shape {tuple(shape)} does not match the {frame} grid {tuple(expected)} (z, y, x) of this "
                f"reorientation; give a (z, y, x) or (z, y, x, C) array on the {frame} grid"
            )

    def to_view(self, array: np.ndarray) -> np.ndarray:
        """The stored (z, y, x[, C...]) array in the view orientation (a strided view; copy if needed)."""
        array = np.asarray(array)
        self._check(array.shape, self.source_shape, "stored")
        out = np.transpose(array, self.order + tuple(range(3, array.ndim)))
        flipped = tuple(k for k in range(3) if self.flip[k])
        return np.flip(out, axis=flipped) if flipped else out

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """A view (z, y, x[, C...]) array back on the stored grid: the exact inverse of :meth:`to_view`."""
        array = np.asarray(array)
        self._check(array.shape, self.view_shape, "view")
        flipped = tuple(k for k in range(3) if self.flip[k])
        out = np.flip(array, axis=flipped) if flipped else array
        return np.transpose(out, self.inverse_order + tuple(range(3, array.ndim)))

    # --- indices --------------------------------------------------------------------------------------

    def indices_to_view(self, zyx: np.ndarray) -> np.ndarray:
        """(N, 3) stored (z, y, x) indices (floats allowed) -> view (z, y, x) indices."""
        src = np.asarray(zyx, dtype=np.float64).reshape(-1, 3)
        out = src[:, list(self.order)].copy()
        for k in range(3):
            if self.flip[k]:
                out[:, k] = (self.source_shape[self.order[k]] - 1) - out[:, k]
        return out

    def indices_to_source(self, zyx: np.ndarray) -> np.ndarray:
        """(N, 3) view (z, y, x) indices -> stored (z, y, x) indices."""
        view = np.asarray(zyx, dtype=np.float64).reshape(-1, 3).copy()
        for k in range(3):
            if self.flip[k]:
                view[:, k] = (self.source_shape[self.order[k]] - 1) - view[:, k]
        return view[:, list(self.inverse_order)]

    def _box3d(self, box: Box3D, to_view: bool) -> Box3D:
        corners = np.array([[box.z0, box.y0, box.x0], [box.z1, box.y1, box.x1]], dtype=np.float64)
        mapped = self.indices_to_view(corners) if to_view else self.indices_to_source(corners)
        lo, hi = mapped.min(axis=0), mapped.max(axis=0)
        return Box3D(lo[2], lo[1], lo[0], hi[2], hi[1], hi[0])

    def box3d_to_view(self, box: Box3D) -> Box3D:
        """A stored-index 3D box (x0, y0, z0, x1, y1, z1, inclusive) -> the same voxels' box in the view."""
        return self._box3d(box, True)

    def box3d_to_source(self, box: Box3D) -> Box3D:
        return self._box3d(box, False)

    def slice_to_view(self, z: int) -> int:
        """Stored slice z -> view slice (only when the slice axis is kept, else a PromptError)."""
        self.require_slice_axis("a slice index")
        return int(self.source_shape[0] - 1 - int(z)) if self.flip[0] else int(z)

    def slice_to_source(self, z: int) -> int:
        self.require_slice_axis("a slice index")
        return int(self.source_shape[0] - 1 - int(z)) if self.flip[0] else int(z)

    def require_slice_axis(self, what: str) -> None:
        if not self.keeps_slice_axis:
            raise PromptError(
                f"the {self.name!r} orientation reslices this {self.plane or 'non-axial'} series (view slices are "
                f"stored {AXIS_NAMES[self.order[0]]}-planes, not stored slices), so {what} drawn on a stored slice has "
                "no meaning on a view slice; give a 3D box (x0,y0,z0,x1,y1,z1) instead, or use the 'canonical' or "
                "'stored' orientation, which keep the slices"
            )

    def _plane_points(self, z: int, xy: np.ndarray, to_view: bool) -> tuple[int, np.ndarray]:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        zyx = np.column_stack([np.full(len(xy), float(z)), xy[:, 1], xy[:, 0]])
        mapped = self.indices_to_view(zyx) if to_view else self.indices_to_source(zyx)
        out_z = self.slice_to_view(z) if to_view else self.slice_to_source(z)
        return out_z, mapped[:, [2, 1]]

    def points_to_view(self, z: int, xy: np.ndarray) -> tuple[int, np.ndarray]:
        """(x, y) points on stored slice z -> (view slice, (N, 2) view (x, y)); the slice axis must be kept."""
        self.require_slice_axis("a point")
        return self._plane_points(z, xy, True)

    def points_to_source(self, z: int, xy: np.ndarray) -> tuple[int, np.ndarray]:
        self.require_slice_axis("a point")
        return self._plane_points(z, xy, False)

    def _box2d(self, z: int, box: Box, to_view: bool) -> tuple[int, Box]:
        out_z, pts = self._plane_points(z, np.array([[box.x0, box.y0], [box.x1, box.y1]]), to_view)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        return out_z, Box(lo[0], lo[1], hi[0], hi[1])

    def box_to_view(self, z: int, box: Box) -> tuple[int, Box]:
        """A 2D box on stored slice z -> (view slice, the box there); the slice axis must be kept."""
        self.require_slice_axis("a 2D box")
        return self._box2d(z, box, True)

    def box_to_source(self, z: int, box: Box) -> tuple[int, Box]:
        """A 2D box on view slice z -> (stored slice, the box there); the slice axis must be kept."""
        self.require_slice_axis("a 2D box")
        return self._box2d(z, box, False)

    def spacing_to_view(self, spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
        s = tuple(float(v) for v in spacing_zyx)
        return tuple(s[a] for a in self.order)  # type: ignore[return-value]

    def spacing_to_source(self, spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
        s = tuple(float(v) for v in spacing_zyx)
        return tuple(s[k] for k in self.inverse_order)  # type: ignore[return-value]


# --- choosing a reorientation --------------------------------------------------------------------------


def check_orientation(name: str | None) -> str:
    """The orientation name, checked (None -> "canonical")."""
    value = "canonical" if name is None else str(name).strip().lower()
    if value not in ORIENTATIONS:
        raise InputError(f"orientation {name!r}: choose one of {', '.join(ORIENTATIONS)}")
    return value


def _axis_directions(direction: np.ndarray) -> np.ndarray:
    """(3, 3) rows = unit physical directions of the array axes (z, y, x) (columns z, y, x of the ITK matrix)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(d)):
        raise InputError(f"direction {d.tolist()} contains NaN or infinite values")
    rows = np.stack([d[:, 2], d[:, 1], d[:, 0]])
    norms = np.linalg.norm(rows, axis=1)
    if np.any(norms < 1e-6) or abs(np.linalg.det(rows / norms[:, None])) < 1e-3:
        raise InputError(f"direction {d.tolist()} is degenerate (its axes are not independent); it cannot be oriented")
    return rows / norms[:, None]


def slice_plane(direction: np.ndarray) -> str:
    """"axial", "coronal" or "sagittal": the patient axis nearest the slice normal (the z index axis)."""
    normal = _axis_directions(direction)[0]
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _assign(axes: np.ndarray, targets: Sequence[np.ndarray], orders: Sequence[tuple[int, int, int]]) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """The permutation (from ``orders``, the first wins ties) maximising sum |dot(axis, target)|; flips from signs."""
    best, best_score = orders[0], -1.0
    for order in orders:
        score = sum(abs(float(axes[order[k]] @ targets[k])) for k in range(3))
        if score > best_score + _TIE:
            best, best_score = order, score
    flip = tuple(bool(float(axes[best[k]] @ targets[k]) < -_TIE) for k in range(3))
    return best, flip  # type: ignore[return-value]


def reorientation_for(
    direction: np.ndarray, shape: Sequence[int], orientation: str | None = "canonical"
) -> AxisReorientation:
    """The reorientation of a stored (z, y, x) array of ``shape`` with ``direction`` (ITK columns) into the
    named orientation (see the module doc)."""
    name = check_orientation(orientation)
    shape3 = tuple(int(s) for s in tuple(shape)[:3])
    if name == "stored":
        return AxisReorientation(shape3, name="stored", plane=_plane_or_blank(direction))  # type: ignore[arg-type]
    axes = _axis_directions(direction)
    plane = slice_plane(direction)
    if name == "lps":
        order, flip = _assign(axes, _LPS_TARGETS, list(itertools.permutations(range(3))))
    else:
        order, flip = _assign(axes, _CANONICAL_TARGETS[plane], [(0, 1, 2), (0, 2, 1)])
    return AxisReorientation(shape3, order, flip, name, plane)  # type: ignore[arg-type]


def _plane_or_blank(direction: np.ndarray) -> str:
    try:
        return slice_plane(direction)
    except InputError:
        return ""


# --- oriented volumes ----------------------------------------------------------------------------------


def voxel_to_physical(volume: Volume, zyx: np.ndarray) -> np.ndarray:
    """(N, 3) (z, y, x) voxel indices of ``volume`` -> (N, 3) physical (x, y, z) positions in mm."""
    idx = np.asarray(zyx, dtype=np.float64).reshape(-1, 3)[:, ::-1]  # (i, j, k) along x, y, z
    spacing_xyz = np.asarray(volume.spacing_mm, dtype=np.float64)[::-1]
    return np.asarray(volume.origin_mm)[None, :] + (idx * spacing_xyz[None, :]) @ np.asarray(volume.direction).T


def view_geometry(volume: Volume, reorientation: AxisReorientation) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """(spacing_mm (z, y, x), origin_mm (x, y, z), direction 3x3) of the view, so that every view voxel sits at
    the physical point of the stored voxel it came from."""
    r = reorientation
    src = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    columns_zyx = [src[:, 2], src[:, 1], src[:, 0]]  # directions of stored array axes z, y, x
    view_zyx = [columns_zyx[r.order[k]] * (-1.0 if r.flip[k] else 1.0) for k in range(3)]
    direction = np.column_stack([view_zyx[2], view_zyx[1], view_zyx[0]]) + 0.0  # no negative zeros
    origin = voxel_to_physical(volume, r.indices_to_source(np.zeros((1, 3))))[0]
    return r.spacing_to_view(volume.spacing_mm), tuple(float(v) for v in origin), direction  # type: ignore[return-value]


@dataclass(frozen=True)
class OrientedVolume:
    """A volume as stored (``source``), as seen (``view``) and the map between them.

    The view's array is a contiguous copy reoriented (the source itself when the map is the identity); its
    spacing, origin and direction place every voxel at the same physical point as its stored voxel. The
    view's metadata is the source's without ``dicom`` (DICOM writers need the source slice order: write the
    source-frame labels with ``source``) and with ``orientation`` (the reorientation's record).
    """

    source: Volume
    view: Volume
    reorientation: AxisReorientation

    @property
    def is_identity(self) -> bool:
        return self.reorientation.is_identity

    def labels_to_source(self, labels: np.ndarray) -> np.ndarray:
        """A view (z, y, x) label map on the stored grid (contiguous)."""
        return np.ascontiguousarray(self.reorientation.to_source(labels))

    def labels_to_view(self, labels: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.reorientation.to_view(labels))

    def array_to_view(self, array: np.ndarray) -> np.ndarray:
        """Any stored-grid array (the windowed uint8 volume, a reference mask) in the view, contiguous."""
        return np.ascontiguousarray(self.reorientation.to_view(array))


def orient_volume(volume: Volume, orientation: str | None = "canonical") -> OrientedVolume:
    """The source volume, its view in ``orientation`` and the reorientation between them."""
    reo = reorientation_for(volume.direction, volume.shape, orientation)
    return oriented_with(volume, reo)


def oriented_with(volume: Volume, reorientation: AxisReorientation) -> OrientedVolume:
    """Like :func:`orient_volume` with a given reorientation (e.g. one read back from a session record)."""
    if tuple(reorientation.source_shape) != tuple(volume.shape):
        raise InputError(
            f"reorientation made for a volume of shape {reorientation.source_shape} cannot be applied to one of "
            f"shape {volume.shape}; the file changed"
        )
    if reorientation.is_identity:
        view = volume
    else:
        spacing, origin, direction = view_geometry(volume, reorientation)
        metadata = {k: v for k, v in volume.metadata.items() if k != "dicom"}
        metadata["orientation"] = reorientation.to_dict()
        view = Volume(
            np.ascontiguousarray(reorientation.to_view(volume.array)), spacing, origin, direction, volume.modality,
            metadata,
        )
    return OrientedVolume(volume, view, reorientation)
