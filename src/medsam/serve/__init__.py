"""The annotation server: an HTTP API (FastAPI) and a browser page for prompting, correcting, accepting,
propagating and exporting masks on 2D images and 3D volumes.

    from medsam.serve import ServeSettings, create_app
    app = create_app(ServeSettings(sessions_dir="work/sessions", data_root="data"))   # then: uvicorn.run(app)

From the shell: ``medsam serve --data-root DATA --sessions-dir SESSIONS`` and open http://127.0.0.1:8000/.
Needs the ``serve`` extra: ``pip install 'medsam-toolkit[serve]'``.
"""

from __future__ import annotations

from medsam.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(settings: ServeSettings | None = None, model=None):
    """See :func:`medsam.serve.app.create_app` (imported lazily: FastAPI is an optional dependency)."""
    from medsam.serve.app import create_app as _create_app

    return _create_app(settings, model)
