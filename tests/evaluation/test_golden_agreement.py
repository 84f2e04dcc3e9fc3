"""Agreement with the reference pipeline: on the 12 golden 2D cases, the DSC of our evaluation (LiteMedSAM,
tight box) equals the DSC of the official pipeline's masks within 0.001."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medsam.evaluation import CaseLoader, evaluate, load_cases
from medsam.metrics import dice


@pytest.mark.slow
def test_golden_2d_dsc_agrees(golden_dir, shared_dir, lite_medsam):
    with (golden_dir / "lite_medsam_2d.csv").open() as fh:
        golden = list(csv.DictReader(fh))
    keys = {(g["dataset"], g["case"]) for g in golden}
    cases = [c for c in load_cases(shared_dir / "data" / "cases.csv") if (c.dataset, c.case_id) in keys]
    assert len(cases) == len(golden) == 12
    result = evaluate(cases, [lite_medsam], prompt="box", keep_worst=0, progress=False)
    masks = np.load(golden_dir / "lite_medsam_2d.npz")
    loader = CaseLoader()
    for case, row in zip(cases, result.rows):
        assert row.status == "ok", row.message
        reference = loader.load(case).reference
        golden_dsc = dice(masks[f"{case.case_id}/mask"] > 0, reference)
        assert row.dsc == pytest.approx(golden_dsc, abs=1e-3), case.case_id
        g = next(g for g in golden if g["case"] == case.case_id)
        assert row.prompt_used.startswith("box box=" + ",".join(g[k] for k in ("x0", "y0", "x1", "y1")))
