"""`evaluate` with a SAM 2 memory model (the tiny random one): 3D cases through MedSAM2's procedure, 2D cases
reported as unavailable, the rest of the run unaffected."""

from __future__ import annotations

import math

from medsam.evaluation import evaluate

from ._synthetic import small_manifest


def test_memory_model_scores_volumes_and_skips_images(tmp_path):
    manifest = small_manifest(tmp_path / "data")
    result = evaluate(manifest, ["tiny_sam2"], prompt="box", mode="default", progress=False, device="cpu")
    rows_3d = [r for r in result.rows if r.dims == "3d"]
    rows_2d = [r for r in result.rows if r.dims == "2d"]
    assert rows_3d and rows_2d
    for r in rows_3d:
        assert r.status == "ok", r.message
        assert 0.0 <= r.dsc <= 1.0 and r.seconds > 0 and math.isnan(r.predicted_iou)
    for r in rows_2d:
        assert r.status == "unavailable" and "SAM 2 memory model" in r.message


def test_memory_model_runs_the_3d_click_protocol(tmp_path):
    manifest = small_manifest(tmp_path / "data")
    result = evaluate(manifest, ["tiny_sam2"], prompt="clicks:2", datasets=["vols"], progress=False, device="cpu")
    rows = [r for r in result.rows if r.dims == "3d"]
    assert rows
    for r in rows:
        assert r.status == "ok", r.message
        assert len(r.dsc_per_click) == len(r.nsd_per_click) == len(r.seconds_per_step) == 3
        assert r.dsc == r.dsc_per_click[-1] or abs(r.dsc - r.dsc_per_click[-1]) < 1e-9
        assert "CVPR 2025 protocol" in r.message
