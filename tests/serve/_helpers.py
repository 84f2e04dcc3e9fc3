"""Small synthetic images and request helpers shared by the server tests."""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def disc(h: int = 96, w: int = 128, cx: int = 60, cy: int = 40, r: int = 15) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    image = np.full((h, w), 30, np.uint8)
    image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] = 200
    image[::7, ::5] = 35
    return image


def ct_ball(shape=(8, 48, 64)) -> np.ndarray:
    """HU-like int16 volume: air around a soft-tissue body with a brighter ball in the middle slices."""
    z, y, x = np.indices(shape)
    hu = np.full(shape, -1000, np.int16)
    body = ((y - 24) / 20.0) ** 2 + ((x - 32) / 28.0) ** 2 <= 1
    hu[body] = 40
    ball = (z - 4) ** 2 * 4 + (y - 24) ** 2 + (x - 30) ** 2 <= 100
    hu[ball] = 250
    return hu


def open_session(client, path: str = "disc.png", **extra) -> dict:
    r = client.post("/api/sessions", json={"path": path, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def load_test_module(name: str, path: Path):
    """A helper module of another tests folder (those folders are not packages), loaded once by file path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wait_job(client, sid, job_id, timeout=60.0) -> dict:
    """Poll a propagation job (a TestClient or an httpx client) until it is no longer queued or running."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/sessions/{sid}/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def browser(pw, tmp_path: Path, width: int = 1280, height: int = 860):
    """Debian's chromium in a fresh profile (no downloads, no background network), as a Playwright context."""
    return pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
        viewport={"width": width, "height": height},
    )
