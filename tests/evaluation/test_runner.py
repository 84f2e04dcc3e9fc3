"""The runner end to end with the tiny model: 2D and 3D cases, several runs, clicks, bad rows, statistics."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from medsam.evaluation import CaseLoader, PromptSpec, StepOutput, evaluate, load_cases, simulate_clicks
from medsam.evaluation.runner import ModelChoice
from medsam.inference.predictor import Predictor
from medsam.metrics import dice
from medsam.training.prompts import SimulatedPrompt, case_seed, corrective_click

from ._synthetic import disc_case, small_manifest, write_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return small_manifest(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def result(manifest, tiny_lite):
    return evaluate(manifest, [tiny_lite], prompt=["box", "clicks:2"], mode=["default", "reference"], progress=False)


def test_every_case_is_scored_under_every_run(result):
    labels = [r.label for r in result.runs]
    assert labels == ["tiny_lite/default/box", "tiny_lite/default/clicks:2", "tiny_lite/reference/box", "tiny_lite/reference/clicks:2"]
    assert len(result.rows) == 6 * 4
    assert all(r.status == "ok" for r in result.rows), [(r.case, r.message) for r in result.rows if not r.ok]
    for r in result.rows:
        for metric in (r.dsc, r.iou, r.nsd, r.nsd_challenge, r.predicted_iou):
            assert 0.0 <= metric <= 1.0 or math.isnan(metric)
        assert r.hd95 >= 0 and r.seconds >= 0 and r.seed == case_seed(0, f"{r.dataset}/{r.case}")
        assert SimulatedPrompt.from_json(r.prompt_json).describe() == r.prompt_used


def test_2d_rows_do_not_depend_on_mode_and_3d_rows_use_mm(result):
    rows = {(r.run, r.case): r for r in result.rows}
    for case in ("d0", "b1"):
        a, b = rows[("tiny_lite/default/box", case)], rows[("tiny_lite/reference/box", case)]
        assert (a.dsc, a.nsd, a.prompt_json) == (b.dsc, b.nsd, b.prompt_json) and a.distance_unit == "px"
    vol = [r for r in result.rows if r.dims == "3d"]
    assert {r.distance_unit for r in vol} == {"mm"} and {r.mode for r in vol} == {"default", "reference"}
    assert all(json.loads(r.prompt_json)["box3d"] == [13, 11, 1, 35, 29, 7] for r in vol)
    protocol = [r for r in vol if r.prompt == "clicks:2"]
    for r in protocol:  # the CVPR 2025 protocol: box then 2 clicks, scored after each step, in either mode's run
        assert "CVPR 2025 protocol" in r.message
        assert len(r.dsc_per_click) == len(r.nsd_per_click) == len(r.seconds_per_step) == 3
        assert r.dsc == pytest.approx(r.dsc_per_click[-1])
        assert r.dsc_auc == pytest.approx((r.dsc_per_click[1] + r.dsc_per_click[2]) / 2)
        assert r.nsd_auc == pytest.approx((r.nsd_per_click[1] + r.nsd_per_click[2]) / 2)
    by_mode = {(r.case, r.mode): r for r in protocol}
    assert all(by_mode[(c, "default")].dsc_per_click == by_mode[(c, "reference")].dsc_per_click for c, _ in by_mode)


def test_click_rows_record_dsc_per_click(result):
    for r in result.rows_of("tiny_lite/default/clicks:2"):
        if r.dims == "2d":
            assert len(r.dsc_per_click) == 3 and r.dsc == pytest.approx(r.dsc_per_click[-1])
            box_row = next(x for x in result.rows_of("tiny_lite/default/box") if x.case == r.case)
            assert r.dsc_per_click[0] == pytest.approx(box_row.dsc)  # click 0 is the box-only prediction
            assert r.n_clicks == len(json.loads(r.prompt_json)["points"]["labels"]) <= 2
    (curve,) = [c for c in result.click_curves() if c.run == "tiny_lite/default/clicks:2" and c.dataset == "discs"]
    rows = result.rows_of("tiny_lite/default/clicks:2", dataset="discs")
    assert curve.n == 3 and curve.mean_dsc == pytest.approx(np.mean([r.dsc_per_click for r in rows], axis=0))


def test_clicks_with_the_tiny_model_land_in_the_previous_error_region(manifest, tiny_lite):
    case = load_cases(manifest)[0]
    loaded = CaseLoader().load(case)
    predictor = Predictor(tiny_lite)
    encoding = predictor.set_image(loaded.image)
    outputs: list[StepOutput] = []

    def predict(box, points, mask_input):
        predictor.set_encoding(encoding)
        pred = predictor.predict(boxes=box, points=points, mask_input=mask_input)
        outputs.append(StepOutput(pred.masks[0, 0], pred.low_res_logits[:1, :1], float(pred.iou_scores[0, 0])))
        return outputs[-1]

    start = PromptSpec.parse("clicks:3").for_image(loaded.reference, seed=0)
    trace = simulate_clicks(predict, loaded.reference, start, 3)
    assert len(trace.dsc_per_click) == 4
    for k, click in enumerate(trace.clicks):
        before = outputs[k].mask
        assert click == corrective_click(before, loaded.reference)
        inside_ref, inside_pred = loaded.reference[click.y, click.x], before[click.y, click.x]
        assert (click.label == 1 and inside_ref and not inside_pred) or (click.label == 0 and inside_pred and not inside_ref)
        assert trace.dsc_per_click[k + 1] == pytest.approx(dice(outputs[k + 1].mask, loaded.reference))


def test_prompts_come_from_the_case_seed(manifest, tiny_lite):
    res = evaluate(manifest, [tiny_lite], prompt="jitter", datasets=["discs"], limit=2, seed=5, progress=False)
    loader = CaseLoader()
    for row, case in zip(res.rows, load_cases(manifest, datasets=["discs"], limit=2)):
        seed = case_seed(5, case.key)
        expected = PromptSpec.parse("jitter").for_image(loader.load(case).reference, seed)
        assert row.seed == seed and row.prompt_json == expected.to_json()
    assert res.rows[0].prompt_json != res.rows[1].prompt_json


def test_summary_statistics_match_the_rows(result):
    run = "tiny_lite/default/box"
    items = {(s.summary.dataset, s.summary.metric): s for s in result.summaries(("dataset",)) if s.run == run}
    dsc = [r.dsc for r in result.rows_of(run, dataset="discs")]
    s = items[("discs", "dsc")].summary
    assert s.n == 3 and s.mean == pytest.approx(np.mean(dsc)) and s.median == pytest.approx(np.median(dsc))
    assert s.ci_low <= s.mean <= s.ci_high and min(dsc) <= s.ci_low and s.ci_high <= max(dsc)
    pooled = [x for x in result.summaries(()) if x.run == run and x.summary.metric == "nsd"][0].summary
    assert pooled.n == 6 and pooled.mean == pytest.approx(np.mean([r.nsd for r in result.rows_of(run)]))
    by_modality = {x.summary.modality for x in result.summaries(("modality",))}
    assert by_modality == {"synthetic", "other", "CT"}


def test_bad_rows_are_reported_and_the_run_goes_on(tmp_path, tiny_lite):
    disc_case(tmp_path, "good")
    disc_case(tmp_path, "small", shape=(30, 40), centre=(20, 15), radius=6)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "masks" / "blank.png")
    rows = [
        dict(dataset="s", case="good", image="images/good.png", mask="masks/good.png", label=255),
        dict(dataset="s", case="gone", image="images/absent.png", mask="masks/good.png", label=255),
        dict(dataset="s", case="other_shape", image="images/good.png", mask="masks/small.png", label=255),
        dict(dataset="s", case="no_object", image="images/good.png", mask="masks/blank.png", label=255),
        dict(dataset="s", case="wrong_label", image="images/good.png", mask="masks/good.png", label=7),
        dict(dataset="s", case="bad_label", image="images/good.png", mask="masks/good.png", label="x"),
        dict(dataset="s", case="corrupt", image="images/corrupt.png", mask="masks/good.png", label=255),
        dict(dataset="v", case="corrupt_npz", dims="3d", image="broken.npz", mask="broken.npz", label=1),
    ]
    (tmp_path / "images" / "corrupt.png").write_bytes(b"not a png at all")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    res = evaluate(write_manifest(tmp_path / "m.csv", rows), [tiny_lite], progress=False)
    status = {r.case: (r.status, r.message) for r in res.rows}
    assert status["good"][0] == "ok"
    assert status["gone"][0] == "missing_file" and "absent.png does not exist" in status["gone"][1]
    assert status["other_shape"][0] == "shape_mismatch" and "40x30" in status["other_shape"][1] and "64x48" in status["other_shape"][1]
    assert status["no_object"][0] == "empty_mask" and status["wrong_label"][0] == "empty_mask"
    assert "value 7" in status["wrong_label"][1]
    assert status["bad_label"][0] == "bad_row" and "m.csv line 7" in status["bad_label"][1]
    assert status["corrupt"][0] == "unreadable" and "corrupt.png" in status["corrupt"][1]
    assert status["corrupt_npz"][0] == "unreadable" and "broken.npz" in status["corrupt_npz"][1]
    (dsc,) = [s for s in res.summaries(("dataset",)) if s.summary.metric == "dsc"]
    assert dsc.summary.n == 1 and dsc.n_failed == 6
    for r in res.failures:
        assert math.isnan(r.dsc)


def test_models_are_named_once(manifest, tiny_lite):
    from medsam.errors import InputError

    with pytest.raises(InputError, match="listed twice"):
        evaluate(manifest, [tiny_lite, tiny_lite], progress=False)
    assert ModelChoice.parse(("lite_medsam", "/w/x.pth")).label == "lite_medsam@x.pth"


def test_to_csv_writes_every_row_and_refuses_to_overwrite(tmp_path, result):
    from medsam.errors import OutputError

    path = result.to_csv(tmp_path / "cases.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.rows) and rows[0]["status"] == "ok"
    assert float(rows[0]["dsc"]) == pytest.approx(result.rows[0].dsc, rel=1e-5)
    clicks = next(r for r in rows if r["prompt"] == "clicks:2" and r["dims"] == "2d")
    assert len(clicks["dsc_per_click"].split(";")) == 3
    with pytest.raises(OutputError, match="already exists"):
        result.to_csv(path)


def test_cvpr24_npz_folder_uses_the_given_boxes(tmp_path, tiny_lite):
    gts = np.zeros((40, 50), np.uint8)
    gts[5:15, 8:20] = 1
    gts[20:35, 25:45] = 2
    imgs = np.repeat(np.where(gts > 0, 200, 30).astype(np.uint8)[..., None], 3, axis=2)
    np.savez(tmp_path / "2DBox_US_0001.npz", imgs=imgs, gts=gts, boxes=np.array([[6, 4, 21, 16], [24, 19, 46, 36]]))
    res = evaluate(tmp_path, [tiny_lite], progress=False)
    assert [(r.case, r.status) for r in res.rows] == [("2DBox_US_0001_label1", "ok"), ("2DBox_US_0001_label2", "ok")]
    assert json.loads(res.rows[1].prompt_json)["box"] == [24, 19, 46, 36]


def test_paired_folders_evaluate(tmp_path, tiny_lite):
    disc_case(tmp_path / "pairs", "p0")
    disc_case(tmp_path / "pairs", "p1", centre=(20, 20), radius=7)
    res = evaluate(tmp_path / "pairs", [tiny_lite], prompt="points:2", progress=False)
    assert [r.status for r in res.rows] == ["ok", "ok"] and {r.dataset for r in res.rows} == {"pairs"}
    assert all(len(json.loads(r.prompt_json)["points"]["labels"]) == 2 for r in res.rows)


def test_clicks_follow_the_model_refinement_unless_the_prompt_names_one(manifest, tiny_lite):
    import dataclasses

    from medsam.models.registry import build_model

    box_trained = build_model("tiny_lite", device="cpu")  # the same random weights, told it was box-trained
    box_trained.spec = dataclasses.replace(box_trained.spec, refinement="box_update")
    named = evaluate(manifest, [tiny_lite], prompt=["box", "clicks:2:box", "clicks:2"], datasets=["discs"], progress=False)
    own = evaluate(manifest, [box_trained], prompt=["clicks:2", "clicks:2:sam"], datasets=["discs"], progress=False)
    assert [r.label for r in named.runs] == ["tiny_lite/default/box", "tiny_lite/default/clicks:2:box", "tiny_lite/default/clicks:2"]
    assert all(r.status == "ok" for r in named.rows + own.rows)
    def dsc(res, run):
        return np.array([r.dsc_per_click for r in sorted(res.rows_of(run), key=lambda r: r.case)])

    box_dsc = [r.dsc for r in sorted(named.rows_of("tiny_lite/default/box"), key=lambda r: r.case)]
    assert np.allclose(dsc(named, "tiny_lite/default/clicks:2:box")[:, 0], box_dsc)  # click 0: the box prediction
    assert np.allclose(dsc(own, "tiny_lite/default/clicks:2"), dsc(named, "tiny_lite/default/clicks:2:box"))
    assert np.allclose(dsc(own, "tiny_lite/default/clicks:2:sam"), dsc(named, "tiny_lite/default/clicks:2"))
