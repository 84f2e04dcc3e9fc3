"""Fidelity to the official LiteMedSAM pipeline (../shared/golden), with the real weights."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def _cases(golden_dir):
    data = np.load(golden_dir / "lite_medsam_2d.npz")
    rows = list(csv.DictReader(open(golden_dir / "lite_medsam_2d.csv")))
    return data, rows


def test_logits_match_reference_from_golden_inputs(lite_medsam, golden_dir):
    data, rows = _cases(golden_dir)
    assert rows
    inputs = torch.stack([torch.from_numpy(data[f"{r['case']}/input"]) for r in rows])
    boxes = torch.stack([torch.from_numpy(data[f"{r['case']}/box_256"]).float() for r in rows])
    with torch.inference_mode():
        embeddings = lite_medsam.encode(inputs)  # the whole set as one batch
        logits, _ = lite_medsam.decode(embeddings, boxes=boxes)
    for i, row in enumerate(rows):
        reference = data[f"{row['case']}/low_res_logits"]
        err = np.abs(logits[i, 0].numpy() - reference).max()
        assert err < 1e-3, f"{row['case']}: max |logit difference| {err:.2e}"


def test_end_to_end_masks_match_reference(lite_medsam, golden_dir, shared_dir):
    from medsam.inference.predictor import Predictor
    from medsam.io.raster import read_image

    data, rows = _cases(golden_dir)
    predictor = Predictor(lite_medsam)
    for row in rows:
        image = read_image(shared_dir / "data" / row["image"])
        prepared = predictor.prepare(image)
        _, h, w = prepared.array.shape
        np.testing.assert_allclose(prepared.array, data[f"{row['case']}/input"][:, :h, :w], atol=1e-6)
        predictor.set_image(image)
        box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
        mask = predictor.predict(boxes=box).masks[0, 0]
        reference = data[f"{row['case']}/mask"] > 0
        assert mask.shape == reference.shape
        agreement = (mask == reference).mean()
        assert agreement >= 0.999, f"{row['case']}: {agreement:.5f} of pixels agree"
