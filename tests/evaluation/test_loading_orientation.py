"""Volumes are loaded, prompted and scored in the view frame: a RAS copy (and a transposed MedSAM2 npz) of a
volume scores exactly as the original, a given 3D box is mapped with the voxels, overlays show the view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam.evaluation import CaseLoader, evaluate, load_cases
from medsam.preprocess.intensity import apply_window
from medsam.preprocess.orientation import AxisReorientation, oriented_with
from medsam.types import Box3D, Volume

from ._synthetic import write_manifest

SHAPE = (9, 40, 48)
RAS = AxisReorientation(SHAPE, flip=(False, True, True), name="ras copy")
PLI = AxisReorientation(SHAPE, order=(0, 2, 1), flip=(True, False, False), name="medsam2 copy")


def lps_case() -> tuple[Volume, np.ndarray]:
    z, y, x = np.indices(SHAPE)
    inside = ((z - 4) / 3.0) ** 2 + ((y - 14) / 8.0) ** 2 + ((x - 30) / 10.0) ** 2 <= 1.0
    hu = np.full(SHAPE, -1000, np.int16)
    hu[((y - 20) / 18.0) ** 2 + ((x - 24) / 22.0) ** 2 <= 1] = 30
    hu[inside] = 200
    hu[:, 31:35, 18:30] = 800
    volume = Volume(hu, (2.5, 0.8, 0.7), (-20.0, 10.0, 55.0), np.eye(3), "CT")
    return volume, inside.astype(np.uint8)


def write_itk(volume: Volume, array: np.ndarray, path: Path) -> str:
    import SimpleITK as sitk

    from medsam.io.volume_writers import to_sitk_image

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk_image(array, volume), str(path))
    return path.name


@pytest.fixture
def manifest(tmp_path) -> Path:
    """The same CT case three times: stored LPS (NIfTI), RAS (NIfTI), MedSAM2-like npz (PLI) with its box."""
    volume, mask = lps_case()
    ras = oriented_with(volume, RAS).view
    root = tmp_path / "data"
    rows = []
    for name, v in (("lps", volume), ("ras", ras)):
        m = RAS.to_view(mask) if name == "ras" else mask
        rows.append(dict(dataset=name, case="ct", modality="CT", dims="3d", image=f"vol/{write_itk(v, v.array, root / 'vol' / f'{name}.nii.gz')}",
                         mask=f"vol/{write_itk(v, m, root / 'vol' / f'{name}_mask.nii.gz')}", label=1, target="ball"))
    pli = oriented_with(volume.with_array(apply_window(volume, "soft_tissue")), PLI).view
    np.savez_compressed(root / "vol" / "pli.npz", imgs=pli.array, gts=PLI.to_view(mask),
                        spacing=np.array(pli.spacing_mm[::-1]), direction=pli.direction.reshape(-1),
                        origin=np.array(pli.origin_mm))
    rows.append(dict(dataset="pli", case="ct", modality="CT", dims="3d", image="vol/pli.npz", mask="vol/pli.npz",
                     label=1, target="ball"))
    return write_manifest(root / "cases.csv", rows)


def test_a_ras_copy_scores_exactly_as_its_original(manifest, tiny_lite):
    result = evaluate(manifest, [tiny_lite], prompt="box", progress=False, keep_worst=1)
    rows = {r.dataset: r for r in result.rows}
    assert all(r.status == "ok" for r in rows.values()), [r.message for r in rows.values()]
    for name in ("ras", "pli"):
        assert rows[name].dsc == rows["lps"].dsc and rows[name].nsd == rows["lps"].nsd, name
        assert rows[name].hd95 == pytest.approx(rows["lps"].hd95)
        assert rows[name].prompt_used.split(" seed=")[0] == rows["lps"].prompt_used.split(" seed=")[0]  # same view prompt
    assert result.settings.orientation == "canonical"
    worst = {w.row.dataset: w for w in result.worst}
    assert np.array_equal(worst["ras"].image, worst["lps"].image)  # overlays show the (radiological) view
    assert np.array_equal(worst["ras"].prediction, worst["lps"].prediction)


def test_stored_orientation_scores_the_arrays_as_stored(manifest, tiny_lite):
    loader = CaseLoader("stored")
    ras = next(c for c in load_cases(manifest) if c.dataset == "ras")
    loaded = loader.load(ras)
    assert loaded.reorientation.is_identity
    canonical = CaseLoader().load(ras)
    assert canonical.reorientation.flip == (False, True, True)
    assert np.array_equal(canonical.image, loaded.image[:, ::-1, ::-1])
    assert np.array_equal(canonical.reference, loaded.reference[:, ::-1, ::-1])
    result = evaluate(manifest, [tiny_lite], progress=False, orientation="stored", datasets=["ras"], keep_worst=0)
    assert result.rows[0].status == "ok" and result.settings.orientation == "stored"


def test_a_given_3d_box_is_mapped_with_the_voxels(tmp_path):
    volume, mask = lps_case()
    u8 = apply_window(volume, "soft_tissue")
    pli = oriented_with(volume.with_array(u8), PLI).view
    stored_box = Box3D.from_mask(PLI.to_view(mask))
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez_compressed(folder / "CT_case.npz", imgs=pli.array, gts=PLI.to_view(mask), boxes=np.array([stored_box.as_array()]),
                        spacing=np.array(pli.spacing_mm[::-1]), direction=pli.direction.reshape(-1), origin=np.array(pli.origin_mm))
    (case,) = load_cases(folder)
    assert case.box == stored_box
    loaded = CaseLoader().load(case)
    assert loaded.source_case.box == stored_box
    assert loaded.case.box == Box3D.from_mask(loaded.reference) == Box3D.from_mask(mask)
    assert np.array_equal(loaded.image, u8) and loaded.spacing_mm == volume.spacing_mm
