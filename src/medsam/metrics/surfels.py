"""Surface elements ("surfels") of a voxel mask and the surfel-area surface Dice.

This is the surface model of the surface-Dice measure used by the official CVPR 2024 "segment anything in
medical images on a laptop" evaluation (DeepMind's surface-distance method), written from its description:

- The mask is sampled on the grid of voxel centres. Each 2x2x2 block of neighbouring voxel centres (a
  "cube") has one of 256 in/out patterns, its *neighbour code*.
- A cube whose corners are neither all inside nor all outside is a surface cube. Its piece of the surface
  is the marching-cubes surface at level 1/2: polygons through the midpoints of the cube edges whose two
  ends differ, triangulated. The surfel's area is the summed area of those triangles after scaling the
  three axes by the voxel spacing.
- Distances are Euclidean, in millimetres, from each surface cube to the nearest surface cube of the
  other mask (cube centres, i.e. voxel corners); each surface cube carries its area as a weight.

How the polygons are formed (these choices reproduce the reference areas for every one of the 256 codes):
- The surface of a pattern and of its complement is the same surface, so a pattern with more than four
  inside corners is handled as its complement.
- On a face whose two inside corners sit on a diagonal (the ambiguous face of marching cubes), the inside
  corners are cut off separately (the inside is face-connected only).
- A polygon that is not planar (five or six vertices) is triangulated as a fan from the vertex that gives
  the largest total area; planar polygons have one area whatever the fan.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from medsam.errors import InputError
from medsam.metrics._checks import mask_pair, nearest_distances, spacing, tolerance, union_crop

# Corner k of a cube sits at offset (k >> 2 & 1, k >> 1 & 1, k & 1) along axes (0, 1, 2); bit k of the
# neighbour code is set when that corner is inside the mask.
_CORNERS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=np.int64)


def _faces() -> list[list[int]]:
    """The six faces, each as its four corners in cyclic order."""
    faces = []
    for axis in range(3):
        for side in (0, 1):
            ring = [k for k in range(8) if _CORNERS[k, axis] == side]
            # order the four corners around the face: (0,0) (0,1) (1,1) (1,0) in the other two axes
            others = [a for a in range(3) if a != axis]
            key = {(0, 0): 0, (0, 1): 1, (1, 1): 2, (1, 0): 3}
            ring.sort(key=lambda k: key[(int(_CORNERS[k, others[0]]), int(_CORNERS[k, others[1]]))])
            faces.append(ring)
    return faces


_FACES = _faces()


def _edge_vertex(a: int, b: int) -> tuple[float, float, float]:
    mid = (_CORNERS[a] + _CORNERS[b]) / 2.0
    return (float(mid[0]), float(mid[1]), float(mid[2]))


def _polygons(code: int) -> list[list[tuple[float, float, float]]]:
    """Closed polygons (vertex lists) of the level-1/2 surface inside one cube."""
    inside = [bool((code >> k) & 1) for k in range(8)]
    if sum(inside) > 4:
        inside = [not v for v in inside]
    if not any(inside):
        return []
    # Each face contributes segments between crossing-edge midpoints.
    links: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for ring in _FACES:
        sides = [(ring[i], ring[(i + 1) % 4]) for i in range(4)]
        crossing = [(min(e), max(e)) for e in sides if inside[e[0]] != inside[e[1]]]
        if len(crossing) == 2:
            pairs = [(crossing[0], crossing[1])]
        elif len(crossing) == 4:
            # ambiguous face: cut off each inside corner with the two face edges that meet at it
            pairs = []
            for k in ring:
                if inside[k]:
                    at_k = [e for e in crossing if k in e]
                    pairs.append((at_k[0], at_k[1]))
        else:
            pairs = []
        for e1, e2 in pairs:
            links.setdefault(e1, []).append(e2)
            links.setdefault(e2, []).append(e1)
    polygons = []
    unused = set(links)
    while unused:
        start = min(unused)
        loop, prev, cur = [start], None, start
        while True:  # every crossing edge lies on two faces, so it has exactly two links
            a, b = links[cur]
            nxt = b if a == prev else a
            if nxt == start:
                break
            loop.append(nxt)
            prev, cur = cur, nxt
        unused.difference_update(loop)
        polygons.append([_edge_vertex(*e) for e in loop])
    return polygons


def _fan(poly: np.ndarray, start: int) -> np.ndarray:
    """Half cross products (area vectors) of the fan triangulation of ``poly`` from vertex ``start``."""
    v = np.roll(poly, -start, axis=0)
    return np.array([np.cross(v[i] - v[0], v[i + 1] - v[0]) / 2.0 for i in range(1, len(v) - 1)])


@lru_cache(maxsize=1)
def _area_vectors() -> tuple[np.ndarray, ...]:
    """Per neighbour code, the area vectors (T, 3) of its triangles at unit spacing."""
    table = []
    for code in range(256):
        vectors = [np.zeros((0, 3))]
        for poly in _polygons(code):
            pts = np.asarray(poly, dtype=np.float64)
            fans = [_fan(pts, s) for s in range(len(pts))]
            best = max(fans, key=lambda f: float(np.linalg.norm(f, axis=1).sum()))
            vectors.append(best)
        table.append(np.concatenate(vectors, axis=0))
    return tuple(table)


@lru_cache(maxsize=64)
def _surfel_area_table(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(256,) surface area in mm^2 of each neighbour code's surfel at the given (axis 0, 1, 2) spacing."""
    s0, s1, s2 = spacing_mm
    # Scaling the axes by diag(s) scales an area vector's components by (s1*s2, s0*s2, s0*s1).
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    table = np.array([float(np.linalg.norm(v * scale, axis=1).sum()) for v in _area_vectors()])
    table.flags.writeable = False  # cached and shared between calls
    return table


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code of every cube of the zero-padded 3D ``mask``: shape = mask.shape + 1 per axis.

    Cube (i, j, k) spans voxel centres (i-1..i, j-1..j, k-1..k) of ``mask``; outside voxels count as 0.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    n0, n1, n2 = (s + 1 for s in mask.shape)
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for k, (a, b, c) in enumerate(_CORNERS):
        codes |= padded[a : a + n0, b : b + n1, c : c + n2] << np.uint8(k)
    return codes


@dataclass(frozen=True)
class SurfelDistances:
    """Directed distances between the surfaces of two masks, with each surfel's area as its weight.

    distances_pred_to_ref_mm / areas_pred_mm2: one entry per surface cube of the prediction;
    distances_ref_to_pred_mm / areas_ref_mm2: one entry per surface cube of the reference.
    A distance is ``inf`` when the other mask has no surface.
    """

    distances_pred_to_ref_mm: np.ndarray
    areas_pred_mm2: np.ndarray
    distances_ref_to_pred_mm: np.ndarray
    areas_ref_mm2: np.ndarray

    def surface_dice(self, tolerance_mm: float) -> float:
        """Share of the total surfel area lying within ``tolerance_mm`` (inclusive) of the other surface.

        Both surfaces empty gives 1.0 (two empty masks agree); one empty gives 0.0.
        """
        total = float(self.areas_pred_mm2.sum() + self.areas_ref_mm2.sum())
        if total == 0.0:
            return 1.0
        close = float(
            self.areas_pred_mm2[self.distances_pred_to_ref_mm <= tolerance_mm].sum()
            + self.areas_ref_mm2[self.distances_ref_to_pred_mm <= tolerance_mm].sum()
        )
        return close / total


def surfel_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float] | None = None
) -> SurfelDistances:
    """Surfel distances between two 3D masks of one shape (non-zero = foreground).

    spacing_mm: voxel size per array axis (z, y, x) in mm; ``None`` means 1.
    The work is cropped to the bounding box of both masks, which leaves the result unchanged.
    Raises InputError for masks that are not 3D or differ in shape.
    """
    p, r = mask_pair(pred, ref)
    if p.ndim != 3:
        raise InputError(
            f"surfel distances need 3D masks, got shape {p.shape}; a 2D mask is scored as a one-slice volume "
            "by nsd_challenge (mask[..., None])"
        )
    sampling = spacing(3, spacing_mm)
    crop = union_crop(p, r)
    if crop is None:
        empty = np.zeros(0)
        return SurfelDistances(empty, empty, empty, empty)
    table = _surfel_area_table(sampling)  # type: ignore[arg-type]
    codes_p = neighbour_codes(p[crop])
    codes_r = neighbour_codes(r[crop])
    border_p = (codes_p != 0) & (codes_p != 255)
    border_r = (codes_r != 0) & (codes_r != 255)

    return SurfelDistances(
        distances_pred_to_ref_mm=nearest_distances(border_p, border_r, sampling),
        areas_pred_mm2=table[codes_p[border_p]],
        distances_ref_to_pred_mm=nearest_distances(border_r, border_p, sampling),
        areas_ref_mm2=table[codes_r[border_r]],
    )


def nsd_challenge(
    pred: np.ndarray, ref: np.ndarray, tolerance_mm: float = 2.0, spacing_mm: Sequence[float] | None = None
) -> float:
    """NSD as the official CVPR 2024 evaluation computes it: the surfel-area surface Dice.

    3D masks (z, y, x): surface Dice of the marching-cubes surfels at ``spacing_mm`` (z, y, x) in mm; in 3D
    this agrees closely with the boundary-voxel :func:`medsam.metrics.nsd`.

    2D masks (y, x): scored as the official script does, as a one-slice volume ``mask[..., None]`` of
    spacing 1. The slice's flat top and bottom faces then count as surface, so the score behaves much
    like an area overlap and reads far higher than the in-plane boundary NSD for a shifted contour.
    Leave ``spacing_mm`` None to reproduce published numbers (the official script uses 1 for 2D);
    a given (y, x) spacing is applied in-plane with 1 across the slice.

    Both empty gives 1.0, one empty 0.0.
    """
    p, r = mask_pair(pred, ref)
    tol = tolerance(tolerance_mm)
    if p.ndim == 2:
        sy, sx = spacing(2, spacing_mm)
        return surfel_distances(p[..., None], r[..., None], (sy, sx, 1.0)).surface_dice(tol)
    return surfel_distances(p, r, spacing_mm).surface_dice(tol)
