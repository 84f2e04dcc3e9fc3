"""Fixtures of the server tests: a data root with small synthetic images and volumes, and app factories."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from ._helpers import ct_ball, disc, load_test_module  # noqa: E402

HERE = Path(__file__).resolve().parent


def _dicom_synth():
    return load_test_module("dicom_synth", HERE.parent / "io" / "dicom_synth.py")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    import SimpleITK as sitk
    from PIL import Image

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(disc()).save(root / "disc.png")
    Image.fromarray(disc(64, 80, 40, 30, 10)).save(root / "sub" / "small.png")
    image = sitk.GetImageFromArray(ct_ball())
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-10.0, 5.0, 20.0))
    sitk.WriteImage(image, str(root / "ball.nii.gz"))
    _dicom_synth().write_ct_series(root / "dicom", num_slices=5, rows=32, cols=32, angles_deg=(0.0, 0.0, 0.0))
    (tmp_path / "secret.txt").write_text("not for you")
    (root / "escape").symlink_to(tmp_path)
    return root


@pytest.fixture
def make_app(tmp_path: Path, tiny_lite, data_root: Path):
    """make_app(**settings) -> a FastAPI app on tiny_lite with its sessions in tmp_path/sessions."""
    from medsam.serve import ServeSettings, create_app

    apps = []

    def make(model=None, **overrides):
        options = dict(sessions_dir=tmp_path / "sessions", data_root=data_root, prefetch_slices=0, warm_up=False, precision="fp32", backend="torch")
        options.update(overrides)
        app = create_app(ServeSettings(**options), model if model is not None else tiny_lite)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.medsam.close()


@pytest.fixture
def make_client(make_app):
    """make_client(**settings) -> a TestClient (entered) addressing the app as http://127.0.0.1."""
    from fastapi.testclient import TestClient

    clients = []

    def make(**overrides):
        client = TestClient(make_app(**overrides), base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()
