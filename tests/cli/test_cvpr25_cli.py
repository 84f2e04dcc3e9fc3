"""`medsam segment INPUT_DIR -o OUTPUT_DIR` as a CVPR 2025 interactive submission: six calls per case under the
simulated harness (box, then 1..5 accumulated clicks), the segs contract, continuing from the previous call,
the same labels as a replay from scratch, and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medsam.cli import main
from medsam.evaluation.protocol3d import simulate_harness
from medsam.io.npz import read_cvpr25_case, write_cvpr25_input


def synthetic_case() -> tuple[np.ndarray, np.ndarray]:
    """Three classes in a 12x48x48 volume: two balls and a tube (labels 1, 2, 3)."""
    z, y, x = np.indices((12, 48, 48))
    gts = np.zeros((12, 48, 48), np.uint8)
    gts[(z - 5) ** 2 + (y - 14) ** 2 + (x - 14) ** 2 <= 16] = 1
    gts[(z - 6) ** 2 + (y - 32) ** 2 + (x - 30) ** 2 <= 25] = 2
    gts[(z >= 2) & (z <= 9) & ((y - 36) ** 2 + (x - 10) ** 2 <= 9)] = 3
    imgs = np.where(gts > 0, 40 + 60 * gts, 20).astype(np.uint8)
    imgs[:, ::5, ::3] += 7
    return imgs, gts


def _submission(inputs, outputs, extra=()):
    def run():
        assert main(["segment", str(inputs), "-o", str(outputs), "--model", "tiny_lite", *extra]) == 0
    return run


def test_six_steps_keep_the_segs_contract_and_continue_from_the_previous_call(tmp_path, capsys):
    imgs, gts = synthetic_case()
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    steps = simulate_harness(_submission(inputs, outputs), imgs, gts, (2.0, 1.0, 1.0), inputs, outputs, seed=3)
    printed = capsys.readouterr().out
    assert len(steps) == 6
    for k, step in enumerate(steps):
        assert step.segs.shape == imgs.shape and step.segs.dtype == np.uint8
        assert set(np.unique(step.segs)) <= {0, 1, 2, 3}
        assert all(len(c) <= k for c in step.clicks)  # at most one more click per class and step
    assert sum(len(c) for c in steps[-1].clicks) > 0  # the random tiny model leaves errors to click on
    assert sorted(p.name for p in outputs.iterdir()) == [".medsam_cache", "case.npz"]
    lines = [ln for ln in printed.splitlines() if "CVPR25 step" in ln]
    assert len(lines) == 6 and "from the box" in lines[0]
    assert all("continued from the previous step" in ln and " 0 slices encoded" in ln for ln in lines[1:])
    # every step is a function of the prompts so far: without the saved state, replaying gives the same labels
    fresh = read_cvpr25_case(inputs / "case.npz")
    replay_in, replay_out = tmp_path / "replay_in", tmp_path / "replay_out"
    write_cvpr25_input(replay_in / "case.npz", fresh.imgs, fresh.spacing, boxes=fresh.boxes, clicks=fresh.clicks,
                       prev_pred=fresh.prev_pred)
    assert main(["segment", str(replay_in), "-o", str(replay_out), "--model", "tiny_lite"]) == 0
    assert "from the box and every click" in capsys.readouterr().out
    with np.load(replay_out / "case.npz") as data:
        assert np.array_equal(data["segs"], steps[-1].segs)


def test_a_wrong_prev_pred_falls_back_to_replaying(tmp_path, capsys):
    imgs, gts = synthetic_case()
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    steps = simulate_harness(_submission(inputs, outputs), imgs, gts, (2.0, 1.0, 1.0), inputs, outputs, n_clicks=1)
    case = read_cvpr25_case(inputs / "case.npz")
    write_cvpr25_input(inputs / "case.npz", case.imgs, case.spacing, boxes=case.boxes, clicks=case.clicks,
                       prev_pred=np.zeros_like(case.imgs))  # not what this tool wrote
    capsys.readouterr()
    _submission(inputs, outputs)()
    assert "from the box and every click" in capsys.readouterr().out
    with np.load(outputs / "case.npz") as data:
        assert np.array_equal(data["segs"], steps[-1].segs)


def test_bad_cases_get_clear_errors_and_leave_no_output(tmp_path, capsys):
    imgs, gts = synthetic_case()
    from medsam.io.npz import Cvpr25Box

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write_cvpr25_input(inputs / "case.npz", imgs, (1, 1, 1), boxes=[Cvpr25Box(2, 30, 5, 1, 1, 10, 10)])
    assert main(["segment", str(inputs), "-o", str(outputs), "--model", "tiny_lite"]) == 2
    assert "z_max 30" in capsys.readouterr().err and not (outputs / "case.npz").exists()
    evil = np.empty(1, dtype=object)
    evil[0] = shutil.rmtree  # a callable pickled by reference: refused, never called
    np.savez(inputs / "case.npz", imgs=imgs, boxes=evil)
    assert main(["segment", str(inputs), "-o", str(outputs), "--model", "tiny_lite"]) == 2
    assert "refused for safety" in capsys.readouterr().err
    (outputs / "case.npz").parent.mkdir(parents=True, exist_ok=True)
    (outputs / "case.npz").write_text("not an npz")
    write_cvpr25_input(inputs / "case.npz", imgs, (1, 1, 1), boxes=[Cvpr25Box(2, 8, 5, 1, 1, 20, 20)])
    assert main(["segment", str(inputs), "-o", str(outputs), "--model", "tiny_lite"]) == 2
    assert "not an earlier step's segs" in capsys.readouterr().err
    assert (outputs / "case.npz").read_text() == "not an npz"
