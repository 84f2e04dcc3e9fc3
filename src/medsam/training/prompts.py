"""Seeded prompt simulation from ground-truth masks, for training and evaluation (pure numpy/scipy).

Every random choice draws from a ``numpy.random.Generator`` that the caller passes in, so a run is
reproducible from its seed; :func:`simulate_prompt` makes the generator from a seed and records the
result as a :class:`SimulatedPrompt` for the per-case table. :func:`case_seed` derives a per-case seed
from a run seed and a case id, so a case gets the same prompt whatever the order of the cases.

Conventions: masks are (y, x) or (z, y, x) arrays, non-zero = object; boxes (x0, y0, x1, y1) and
points (x, y) in pixels of the image, box bounds inclusive (the object's first and last pixel).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage

from medsam.errors import InputError, PromptError
from medsam.types import Box, Box3D, Points

PromptKind = Literal["box", "jitter", "points", "box3d", "key_slice", "clicks"]
PROMPT_KINDS: tuple[str, ...] = ("box", "jitter", "points", "box3d", "key_slice", "clicks")


def _mask(mask: np.ndarray, ndim: int, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != ndim:
        axes = "(y, x)" if ndim == 2 else "(z, y, x)"
        raise InputError(f"{what} needs a {ndim}D mask {axes}, got shape {m.shape}")
    m = m != 0
    if not m.any():
        raise PromptError(
            f"{what}: the mask is empty, so no prompt can be simulated; skip empty masks or slices"
        )
    return m


def _distance_inside(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of ``region`` to the nearest pixel outside it; the image edge counts as outside."""
    padded = np.pad(region, 1)
    inner = tuple(slice(1, -1) for _ in range(region.ndim))
    return ndimage.distance_transform_edt(padded)[inner]


def tight_box(mask: np.ndarray) -> Box:
    """The tight box around a 2D mask: first and last object column and row (inclusive).

    Raises InputError for a mask that is not 2D and PromptError for an empty one.
    """
    box = Box.from_mask(_mask(mask, 2, "tight_box"))
    assert box is not None  # the mask is not empty
    return box


def jittered_box(mask: np.ndarray, rng: np.random.Generator, max_shift_px: int = 20) -> Box:
    """The tight box with each side moved outwards by its own random 0..max_shift_px pixels (inclusive).

    This is MedSAM's training augmentation (``randint(0, bbox_shift)`` per side). The four shifts are drawn
    in the order x0, y0, x1, y1 from ``rng``; the box is then clipped to the image (0..W-1, 0..H-1).
    """
    if int(max_shift_px) != max_shift_px or max_shift_px < 0:
        raise PromptError(f"max_shift_px {max_shift_px!r}: give a whole number of pixels >= 0 (MedSAM uses 20)")
    m = _mask(mask, 2, "jittered_box")
    box = Box.from_mask(m)
    assert box is not None
    h, w = m.shape
    dx0, dy0, dx1, dy1 = (int(v) for v in rng.integers(0, int(max_shift_px) + 1, size=4))
    return Box(
        max(0.0, box.x0 - dx0), max(0.0, box.y0 - dy0), min(float(w - 1), box.x1 + dx1), min(float(h - 1), box.y1 + dy1)
    )


def sample_points(
    mask: np.ndarray, rng: np.random.Generator, n: int = 1, *, interior_fraction: float = 0.5
) -> Points:
    """``n`` distinct positive points (label 1) inside a 2D mask, preferring its interior.

    Candidates are the object pixels whose distance to the background (the image edge counts as background)
    is at least ``interior_fraction`` times the largest such distance: the object's core, away from its
    boundary. They are drawn uniformly without replacement; when the core has fewer than ``n`` pixels, all
    object pixels are candidates. Raises PromptError when the object has fewer than ``n`` pixels.
    """
    if int(n) != n or n < 1:
        raise PromptError(f"n {n!r}: give the number of points as a whole number >= 1")
    if not 0.0 <= interior_fraction <= 1.0:
        raise PromptError(f"interior_fraction {interior_fraction!r} must lie in [0, 1]")
    m = _mask(mask, 2, "sample_points")
    dist = _distance_inside(m)
    ys, xs = np.nonzero(dist >= interior_fraction * dist.max())
    if ys.size < n:
        ys, xs = np.nonzero(m)
    if ys.size < n:
        raise PromptError(f"sample_points: the object has {ys.size} pixels, fewer than the {n} points asked for")
    pick = rng.choice(ys.size, size=int(n), replace=False)
    coords = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)
    return Points(coords, np.ones(int(n), dtype=np.int64))


def box3d(mask3d: np.ndarray) -> Box3D:
    """The tight 3D box (x0, y0, z0, x1, y1, z1), bounds inclusive, of a (z, y, x) mask."""
    box = Box3D.from_mask(_mask(mask3d, 3, "box3d"))
    assert box is not None
    return box


@dataclass(frozen=True)
class KeySlice:
    """The slice of a 3D mask with the largest object area, and the tight 2D box on it."""

    z: int
    area_px: int
    box: Box


def key_slice(mask3d: np.ndarray) -> KeySlice:
    """The z index with the most object pixels (the lowest such z on a tie) and its tight box."""
    m = _mask(mask3d, 3, "key_slice")
    areas = m.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    return KeySlice(z=z, area_px=int(areas[z]), box=tight_box(m[z]))


class Click(NamedTuple):
    """A corrective click at pixel (x, y): label 1 adds a missed region, 0 removes a false positive."""

    x: int
    y: int
    label: int


def corrective_click(pred: np.ndarray, ref: np.ndarray) -> Click | None:
    """The next click of a simulated user, or None when the prediction equals the reference.

    The error regions are the 8-connected components of the misses (ref and not pred; click label 1) and of
    the false positives (pred and not ref; label 0). The largest region by pixel count is chosen (a miss
    wins a tie), and the click goes to its centre: the pixel farthest from the region's boundary (maximum
    of its Euclidean distance transform, the image edge counting as boundary; the first in raster order on
    a tie), as interactive-segmentation benchmarks place clicks.
    """
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape or p.ndim != 2:
        raise InputError(
            f"corrective_click needs a 2D prediction and reference of one shape, got {p.shape} and {r.shape}"
        )
    p, r = p != 0, r != 0
    structure = ndimage.generate_binary_structure(2, 2)
    best: tuple[int, int, np.ndarray] | None = None  # (size, label, region)
    for label, errors in ((1, r & ~p), (0, p & ~r)):
        components, count = ndimage.label(errors, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        i = int(np.argmax(sizes))
        if best is None or sizes[i] > best[0]:
            best = (int(sizes[i]), label, components == i + 1)
    if best is None:
        return None
    _, label, region = best
    y, x = np.unravel_index(int(np.argmax(_distance_inside(region))), region.shape)
    return Click(int(x), int(y), label)


class Click3DSim(NamedTuple):
    """A simulated 3D click at array index (z, y, x): label 1 adds a missed region, 0 removes a false positive."""

    z: int
    y: int
    x: int
    label: int


def corrective_click_3d(pred: np.ndarray, ref: np.ndarray) -> Click3DSim | None:
    """The CVPR 2025 challenge harness's next click, or None when the prediction equals the reference.

    As ``CVPR25_iter_eval.py`` places it: the error is every voxel where prediction and reference differ (misses and
    false positives together); its largest 26-connected component is taken; the click goes to the voxel farthest
    from the component's boundary (Euclidean distance transform of the component cropped to its bounding box and
    padded by a quarter of its size, at least one voxel, so the volume's border counts as boundary), the first of
    the farthest voxels drawn with ``np.random.seed(42)`` on a tie; it is positive where the reference holds the
    object (a miss), negative elsewhere (a false positive).
    """
    p, r = np.asarray(pred) != 0, np.asarray(ref) != 0
    if p.shape != r.shape or p.ndim != 3:
        raise InputError(f"corrective_click_3d needs 3D masks of one shape, got {p.shape} and {r.shape}")
    error = p != r
    if not error.any():
        return None
    components, count = ndimage.label(error, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))
    coords = np.argwhere(largest)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    crop_shape = hi - lo
    pad = np.maximum((crop_shape * 0.25).astype(int), 1)
    padded = np.zeros(crop_shape + 2 * pad, dtype=np.uint8)
    inner = tuple(slice(int(a), int(a + n)) for a, n in zip(pad, crop_shape))
    padded[inner] = largest[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
    edt = ndimage.distance_transform_edt(padded)[inner]
    best = np.argwhere(edt == edt.max())
    pick = best[np.random.RandomState(42).choice(len(best))]
    z, y, x = (int(v) for v in pick + lo)
    return Click3DSim(z, y, x, 1 if r[z, y, x] else 0)


def cvpr25_box(mask3d: np.ndarray, rng: np.random.Generator) -> dict[str, int]:
    """The CVPR 2025 challenge's box of a (z, y, x) mask (its ``get_boxes.py``): z_min/z_max the object's first
    and last slice, z_mid the slice of the median object voxel in raster order, and on that slice the tight 2D box
    grown on every side by ``randint(0, 6)`` pixels of the 256-pixel frame (scaled to the slice size, per axis) and
    clipped. Keys as the challenge's dicts: z_min, z_max, z_mid, z_mid_x_min, z_mid_y_min, z_mid_x_max, z_mid_y_max."""
    m = _mask(mask3d, 3, "cvpr25_box")
    zs = np.nonzero(m)[0]
    z_mid = int(zs[len(zs) // 2])
    h, w = m.shape[1:]
    ys, xs = np.nonzero(m[z_mid])
    shift = int(rng.integers(0, 6))
    sx, sy = int(shift * w / 256), int(shift * h / 256)
    return {
        "z_min": int(zs.min()), "z_max": int(zs.max()), "z_mid": z_mid,
        "z_mid_x_min": max(0, int(xs.min()) - sx), "z_mid_y_min": max(0, int(ys.min()) - sy),
        "z_mid_x_max": min(w - 1, int(xs.max()) + sx), "z_mid_y_max": min(h - 1, int(ys.max()) + sy),
    }


def append_click(points: Points | None, click: Click) -> Points:
    """``points`` with ``click`` added at the end (a new Points; None starts from no points)."""
    coords = np.zeros((0, 2)) if points is None else points.coords
    labels = np.zeros(0, dtype=np.int64) if points is None else points.labels
    return Points(
        np.concatenate([coords, [[float(click.x), float(click.y)]]]), np.concatenate([labels, [int(click.label)]])
    )


def case_seed(run_seed: int, case_id: str) -> int:
    """A seed for one case from the run's seed and the case id, stable across runs, machines and orders."""
    digest = hashlib.blake2b(f"{int(run_seed)}:{case_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # fits a signed 64-bit column


@dataclass(frozen=True, eq=False)
class SimulatedPrompt:
    """A prompt simulated for one case, as recorded in the per-case results.

    kind: "box" (tight), "jitter" (jittered box), "points", "box3d", "key_slice" (2D box on slice_z) or
        "clicks" (a starting box or none, plus corrective clicks in ``points``).
    seed: the generator's seed (None when nothing random was drawn from a seed this record knows).
    Compare records with ``to_json()``; numpy fields make ``==`` ambiguous, so it is identity here.
    """

    kind: PromptKind
    seed: int | None = None
    box: Box | None = None
    points: Points | None = None
    box3d: Box3D | None = None
    slice_z: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise PromptError(f"prompt kind {self.kind!r} is unknown; use one of {', '.join(PROMPT_KINDS)}")

    def with_click(self, click: Click) -> "SimulatedPrompt":
        """This prompt with a corrective click appended; the kind becomes "clicks"."""
        return replace(self, kind="clicks", points=append_click(self.points, click))

    @property
    def n_clicks(self) -> int:
        return len(self.points) if self.kind == "clicks" and self.points is not None else 0

    def to_json(self) -> str:
        """Compact JSON with every field (boxes as lists, points as coords/labels)."""
        data = {
            "kind": self.kind,
            "seed": self.seed,
            "box": None if self.box is None else [self.box.x0, self.box.y0, self.box.x1, self.box.y1],
            "points": None
            if self.points is None
            else {"coords": self.points.coords.tolist(), "labels": self.points.labels.tolist()},
            "box3d": None if self.box3d is None else self.box3d.as_array().tolist(),
            "slice_z": self.slice_z,
        }
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SimulatedPrompt":
        """Rebuild a record written by :meth:`to_json`; anything else is a PromptError."""
        try:
            data = json.loads(text)
            raw_points = data.get("points")
            points = None
            if raw_points is not None:
                coords = np.asarray(raw_points["coords"], dtype=np.float64).reshape(-1, 2)
                points = Points(coords, np.asarray(raw_points["labels"], dtype=np.int64))
            return cls(
                kind=data["kind"],
                seed=data.get("seed"),
                box=None if data.get("box") is None else Box.from_sequence(data["box"]),
                points=points,
                box3d=None if data.get("box3d") is None else Box3D.from_sequence(data["box3d"]),
                slice_z=data.get("slice_z"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PromptError(f"not a recorded prompt: {text[:80]!r} ({exc})") from exc

    def describe(self) -> str:
        """A short human-readable form for a CSV cell, e.g. ``jitter box=10,12,40,44 seed=7``."""

        def num(v: float) -> str:
            return f"{v:g}"

        parts: list[str] = [self.kind]
        if self.slice_z is not None:
            parts.append(f"z={self.slice_z}")
        if self.box is not None:
            parts.append("box=" + ",".join(num(v) for v in (self.box.x0, self.box.y0, self.box.x1, self.box.y1)))
        if self.box3d is not None:
            parts.append("box3d=" + ",".join(num(v) for v in self.box3d.as_array()))
        if self.points is not None and len(self.points):
            parts.append(
                "points="
                + ";".join(
                    f"{num(x)},{num(y)},{int(label)}"
                    for (x, y), label in zip(self.points.coords, self.points.labels, strict=True)
                )
            )
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return " ".join(parts)


def simulate_prompt(
    kind: PromptKind,
    mask: np.ndarray,
    *,
    seed: int | None = None,
    n_points: int = 1,
    max_shift_px: int = 20,
) -> SimulatedPrompt:
    """Simulate one prompt of ``kind`` from a ground-truth mask and record it.

    2D masks: "box" (tight), "jitter" (needs ``seed``), "points" (``n_points``, needs ``seed``).
    3D masks: "box3d", "key_slice" (the largest slice's tight box). "clicks" start from a box prompt and
    grow with :meth:`SimulatedPrompt.with_click`, so they are not simulated from the mask alone.
    """
    if kind not in PROMPT_KINDS:
        raise PromptError(f"prompt kind {kind!r} is unknown; use one of {', '.join(PROMPT_KINDS)}")
    if kind == "clicks":
        raise PromptError(
            "clicks need predictions: simulate a 'box' first, then add corrective_click(pred, ref) with with_click"
        )
    dims = np.ndim(mask)
    wants = 3 if kind in ("box3d", "key_slice") else 2
    if dims != wants:
        hint = "use 'box3d' or 'key_slice' for volumes" if dims == 3 else "use 'box', 'jitter' or 'points' for 2D"
        raise InputError(f"prompt kind {kind!r} needs a {wants}D mask, got {dims}D: {hint}")
    if kind in ("jitter", "points") and seed is None:
        raise PromptError(f"prompt kind {kind!r} is random: give a seed (e.g. case_seed(run_seed, case_id))")
    if kind == "box":
        return SimulatedPrompt("box", seed=seed, box=tight_box(mask))
    if kind == "jitter":
        return SimulatedPrompt("jitter", seed=seed, box=jittered_box(mask, np.random.default_rng(seed), max_shift_px))
    if kind == "points":
        return SimulatedPrompt("points", seed=seed, points=sample_points(mask, np.random.default_rng(seed), n_points))
    if kind == "box3d":
        return SimulatedPrompt("box3d", seed=seed, box3d=box3d(mask))
    ks = key_slice(mask)
    return SimulatedPrompt("key_slice", seed=seed, box=ks.box, slice_z=ks.z)
