"""Small synthetic images and request helpers shared by the server tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


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
