"""The results folder and `medsam evaluate`: files linked from report.md exist, nothing is overwritten unasked."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from medsam.cli import main
from medsam.errors import OutputError
from medsam.evaluation import evaluate
from medsam.evaluation.report import FALSE_POSITIVE, MISSED, TRUE_POSITIVE, error_labels

from ._synthetic import small_manifest, write_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return small_manifest(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def result(manifest, tiny_lite):
    return evaluate(manifest, [tiny_lite], prompt=["box", "clicks:1"], keep_worst=2, progress=False)


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", markdown)


def test_report_links_existing_files(tmp_path, result):
    out = tmp_path / "results"
    report = result.write(out)
    assert report == out / "report.md"
    text = report.read_text()
    links = _links(text)
    for name in ("cases.csv", "summary.csv", "clicks.csv", "plots/dsc_discs.png", "plots/dsc_vols.png", "plots/dsc_per_click.png"):
        assert name in links
    for link in links:
        assert (out / link).is_file(), link
    worst = [link for link in links if link.startswith("worst/")]
    assert len(worst) == 2 * (2 + 2 + 1)  # 2 runs x (2 worst discs + 2 blobs + 1 volume)
    assert Image.open(out / worst[0]).mode == "RGB"
    assert "## Per dataset" in text and "## Per modality" in text and "## Corrective clicks" in text
    assert "## 3D interactive protocol (CVPR 2025)" in text
    section = text.split("## 3D interactive protocol (CVPR 2025)")[1].splitlines()
    protocol = next(line for line in section if line.startswith("| tiny_lite/default/clicks:1 | vols |"))
    assert re.search(r"\| 1 \| \d\.\d{3}/\d\.\d{3} \| \d\.\d{3}/\d\.\d{3} \| ", protocol)  # box, then 1 click
    row = next(line for line in text.splitlines() if line.startswith("| discs | tiny_lite/default/box |"))
    assert re.search(r"\| 3 \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", row)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_existing_results_are_kept_unless_overwrite(tmp_path, result):
    out = tmp_path / "results"
    result.write(out)
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="already exists"):
        result.write(out)
    assert (out / "mine.txt").read_text() == "keep"
    result.write(out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "report.md").is_file()


def test_summary_csv_has_dataset_modality_and_pooled_groups(tmp_path, result):
    import csv

    result.write(tmp_path / "r")
    with (tmp_path / "r" / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    groups = {(r["dataset"], r["modality"]) for r in rows if r["metric"] == "dsc"}
    assert {("discs", "(all)"), ("(all)", "synthetic"), ("(all)", "(all)")} <= groups
    assert {"mean", "median", "ci_low", "ci_high", "n_failed"} <= set(rows[0])


def test_error_labels_colour_agreement():
    ref = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    assert error_labels(ref, pred).tolist() == [[TRUE_POSITIVE, MISSED, FALSE_POSITIVE, 0]]


def test_cli_evaluate_writes_the_results_folder(tmp_path, manifest, capsys):
    out = tmp_path / "cli"
    rc = main(["evaluate", "--data", str(manifest), "--model", "tiny_lite", "--prompt", "box,jitter",
               "--datasets", "discs,vols", "--limit", "2", "-o", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "6 of 6 case runs scored (3 cases x 2 runs)" in printed and "tiny_lite/default/jitter" in printed
    assert (out / "report.md").is_file() and (out / "plots" / "dsc_discs.png").is_file()
    assert not (out / "clicks.csv").exists()
    rc = main(["evaluate", "--data", str(manifest), "--model", "tiny_lite", "-o", str(out), "--no-progress"])
    assert rc == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "clicks"], "how many clicks"),
        (["--mode", "fast"], "use one of default, reference"),
        (["--datasets", "nope"], "known datasets"),
        (["--model", "tiny_lite,tiny_sam", "--checkpoint", "a.pth"], "one --checkpoint per --model"),
    ],
)
def test_cli_bad_options_fail_before_work(tmp_path, manifest, capsys, extra, message):
    out = tmp_path / "never"
    rc = main(["evaluate", "--data", str(manifest), "--model", "tiny_lite", "-o", str(out), "--no-progress", *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_cli_empty_manifest_is_a_clear_error(tmp_path, capsys):
    empty = write_manifest(tmp_path / "empty.csv", [])
    rc = main(["evaluate", "--data", str(empty), "--model", "tiny_lite", "-o", str(tmp_path / "out")])
    assert rc == 2 and "lists no cases" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_results_are_written_without_matplotlib(tmp_path, result, monkeypatch):
    from medsam.errors import BackendUnavailableError
    from medsam.evaluation import plots

    def missing(*_args, **_kwargs):
        raise BackendUnavailableError("evaluation plots need matplotlib: pip install 'medsam-toolkit[eval]'")

    monkeypatch.setattr(plots, "_figure", missing)
    report = result.write(tmp_path / "r")
    text = report.read_text()
    assert "No plots: evaluation plots need matplotlib" in text and not (tmp_path / "r" / "plots").exists()
    assert all((tmp_path / "r" / link).is_file() for link in _links(text))
