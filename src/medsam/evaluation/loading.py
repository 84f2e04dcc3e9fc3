"""Reading one case: the image (or volume) and the object's reference mask on the same grid.

Problems a user can fix (a missing file, a mask of another shape, a label that is not in the mask) raise
:class:`CaseProblem` with a short ``status`` code and a message; the runner writes both into the results
and goes on with the next case.

Volumes are loaded in the view of the loader's ``orientation`` (:mod:`medsam.preprocess.orientation`;
"canonical" = the radiological display orientation of the series' slice plane, "lps", "stored"): image,
reference mask and spacing are reoriented together, and a 3D box given with the case (npz ``boxes``, in
stored-array indices) is mapped to the view, so prompting and scoring happen in one frame. DSC and NSD do
not depend on it; the model does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medsam.errors import InputError
from medsam.evaluation.cases import Case
from medsam.preprocess.orientation import AxisReorientation, check_orientation
from medsam.types import Box3D, Volume


class CaseProblem(InputError):
    """A case that cannot be evaluated; ``status`` is the short code written to the results."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LoadedCase:
    """A case's pixels. 2D: image (H, W[, C]) as read, reference (H, W) bool, volume None, spacing None
    (distances in pixels). 3D, all in the view frame of ``reorientation``: image is the uint8 (z, y, x)
    volume after the intensity window, volume the raw view Volume (its geometry places each voxel where the
    stored one is), reference (z, y, x) bool, spacing_mm (z, y, x), and ``case.box`` (a given 3D box) mapped
    to the view; ``source_case`` keeps the case as listed (its box in stored indices)."""

    case: Case
    image: np.ndarray
    reference: np.ndarray
    volume: Volume | None = None
    spacing_mm: tuple[float, float, float] | None = None
    reorientation: AxisReorientation | None = None
    source_case: Case | None = None

    @property
    def is_3d(self) -> bool:
        return self.volume is not None


class CaseLoader:
    """Loads cases, keeping the last image file and the last npz file in memory: consecutive cases that share
    an image (several organs of one CT slice, several labels of one npz) read it once."""

    def __init__(self, orientation: str = "canonical") -> None:
        self.orientation = check_orientation(orientation)
        self._image: tuple[Path, object] | None = None
        self._npz: tuple[Path, object] | None = None

    def load(self, case: Case) -> LoadedCase:
        if case.problem:
            raise CaseProblem("bad_row", case.problem)
        for what, path in (("image", case.image_path), ("mask", case.mask_path)):
            if not path.exists():
                raise CaseProblem("missing_file", f"{what} {path} does not exist ({case.source or case.key})")
        try:
            return self._load_3d(case) if case.dims == "3d" else self._load_2d(case)
        except CaseProblem:
            raise
        except InputError as exc:
            raise CaseProblem("unreadable", f"{exc} ({case.source or case.key})") from exc

    # --- 2D -------------------------------------------------------------------------------------------

    def _load_2d(self, case: Case) -> LoadedCase:
        image = self._cached_image(case.image_path)
        mask = self._mask_2d(case)
        if image.ndim not in (2, 3):
            raise CaseProblem("unreadable", f"image {case.image_path} has shape {image.shape}; expected a 2D image")
        if mask.shape != image.shape[:2]:
            raise CaseProblem(
                "shape_mismatch",
                f"mask {case.mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but image "
                f"{case.image_path} is {image.shape[1]}x{image.shape[0]}; give the mask made on this image "
                f"({case.source or case.key})",
            )
        return LoadedCase(case, image, _select(mask, case))

    def _cached_image(self, path: Path) -> np.ndarray:
        if self._image is not None and self._image[0] == path:
            return self._image[1]  # type: ignore[return-value]
        if path.name.lower().endswith(".npz"):
            image = self._npz_case(path).image
        else:
            from medsam.io.raster import read_image

            image = read_image(path)
        self._image = (path, image)
        return image

    def _mask_2d(self, case: Case) -> np.ndarray:
        path = case.mask_path
        if path.name.lower().endswith(".npz"):
            mask = self._npz_gts(path)
        else:
            from medsam.io.raster import read_image

            mask = read_image(path)
        if mask.ndim == 3:
            if mask.shape[-1] in (3, 4) and np.all(mask[..., :3] == mask[..., :1]):
                mask = mask[..., 0]
            else:
                raise CaseProblem(
                    "unreadable",
                    f"mask {path} is a colour image of shape {mask.shape}; give a grayscale mask (0 = background, "
                    "the label value = object)",
                )
        return mask

    # --- 3D -------------------------------------------------------------------------------------------

    def _load_3d(self, case: Case) -> LoadedCase:
        from medsam.preprocess.intensity import apply_window

        if case.image_path.name.lower().endswith(".npz"):
            volume = self._npz_case(case.image_path).volume
            if volume is None:
                raise CaseProblem("unreadable", f"{case.image_path} holds a 2D image but the case says 3d")
        else:
            from medsam.io.volume import read_volume

            volume = read_volume(case.image_path)
        if case.mask_path.name.lower().endswith(".npz"):
            mask = self._npz_gts(case.mask_path)
        else:
            from medsam.io.volume import read_volume

            mask = read_volume(case.mask_path).array
        if mask.shape != volume.shape:
            raise CaseProblem(
                "shape_mismatch",
                f"mask {case.mask_path} has shape {mask.shape} (z, y, x) but volume {case.image_path} has "
                f"{volume.shape}; give a label volume on the image's grid ({case.source or case.key})",
            )
        from medsam.preprocess.orientation import orient_volume

        display = apply_window(volume, "auto", modality=case.modality or volume.modality)
        reference = _select(mask, case)
        oriented = orient_volume(volume, self.orientation)
        reo = oriented.reorientation
        view_case = case
        if not reo.is_identity:
            display, reference = oriented.array_to_view(display), oriented.array_to_view(reference)
            if isinstance(case.box, Box3D):
                view_case = replace(case, box=reo.box3d_to_view(case.box))
        view = oriented.view
        return LoadedCase(view_case, display, reference, view, tuple(view.spacing_mm), reo, case)  # type: ignore[arg-type]

    def _npz_case(self, path: Path):
        from medsam.io.npz import read_npz_case

        if self._npz is None or self._npz[0] != path:
            self._npz = (path, read_npz_case(path))
        return self._npz[1]

    def _npz_gts(self, path: Path) -> np.ndarray:
        gts = self._npz_case(path).gts
        if gts is None:
            raise CaseProblem("unreadable", f"{path} has no 'gts' array, so it cannot be the reference mask")
        return gts


def _select(mask: np.ndarray, case: Case) -> np.ndarray:
    """The object's pixels: mask == label, or every non-zero pixel when the label is None."""
    selected = mask != 0 if case.label is None else mask == case.label
    if not selected.any():
        values = [int(v) for v in np.unique(mask)[:8]]
        what = "any non-zero pixel" if case.label is None else f"a pixel of value {case.label}"
        raise CaseProblem(
            "empty_mask",
            f"mask {case.mask_path} has no {what} (its values: {values}); check the label column "
            f"({case.source or case.key})",
        )
    return selected
