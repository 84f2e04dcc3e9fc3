"""`medsam finetune` from the command line: a run, its resume, and refusals with exit status 2."""

from __future__ import annotations

from medsam.cli import main


def test_cli_run_resume_and_refusals(disc_data, embedding_cache, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["finetune", "--data", str(disc_data), "-o", str(run), "--model", "tiny_lite", "--device", "cpu",
            "--epochs", "1", "--batch-size", "3", "--flips", "none", "--train-first", "6",
            "--embedding-cache", str(embedding_cache), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot validation: DSC" in out and "best.pt" in out
    assert main(["finetune", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert "2 epochs, 4 steps" in capsys.readouterr().out
    assert main(["finetune", "--resume", str(run), "--lr", "0.1", "--quiet"]) == 2
    assert "--resume keeps the run's saved settings" in capsys.readouterr().err
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["finetune", "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "r2")]) == 2
    assert "does not exist" in capsys.readouterr().err
