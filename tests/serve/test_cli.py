"""`medsam serve`: options reach the settings; it binds to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import pytest

from medsam.cli import build_parser, main


@pytest.fixture
def captured(monkeypatch):
    import uvicorn

    calls = {}

    def fake_run(app, **kwargs):
        calls["app"] = app
        calls.update(kwargs)
        app.state.medsam.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def test_serve_defaults_and_options(captured, tmp_path, data_root, capsys):
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.token is None and args.max_upload_mb == 512
    assert args.refinement is None
    code = main([
        "serve", "--model", "tiny_lite", "--device", "cpu", "--port", "8123", "--data-root", str(data_root),
        "--sessions-dir", str(tmp_path / "s"), "--token", "abc", "--max-upload-mb", "3", "--prefetch", "0",
        "--precision", "fp32", "--backend", "torch", "--threads", "1", "--refinement", "box_update",
    ])
    assert code == 0
    settings = captured["app"].state.medsam.settings
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123
    assert settings.token == "abc" and settings.max_upload_mb == 3 and settings.data_root == data_root.resolve()
    assert settings.sessions_dir == tmp_path / "s" and (tmp_path / "s").is_dir()
    assert (settings.precision, settings.backend, settings.threads) == ("fp32", "torch", 1)
    assert settings.refinement == "box_update"
    assert "#token=" in capsys.readouterr().out


def test_serve_warns_when_exposed_without_token(captured, tmp_path, capsys):
    main([
        "serve", "--model", "tiny_lite", "--device", "cpu", "--host", "0.0.0.0", "--sessions-dir", str(tmp_path / "s"),
        "--precision", "fp32", "--backend", "torch",
    ])
    assert "without --token" in capsys.readouterr().err
    assert captured["app"].state.medsam.settings.host_allowlist() is None


def test_serve_bad_data_root(tmp_path, capsys):
    code = main([
        "serve", "--model", "tiny_lite", "--data-root", str(tmp_path / "missing"), "--sessions-dir", str(tmp_path),
        "--precision", "fp32", "--backend", "torch",
    ])
    assert code == 2 and "is not a folder" in capsys.readouterr().err
