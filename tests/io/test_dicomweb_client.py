"""medsam.io.dicomweb without a PACS: addresses, credentials, TLS default, and transport failures (refused
connections, silent servers, 503s) against tiny local sockets, each with its clear message and its retries."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from medsam.errors import InputError, RemoteServiceError
from medsam.io.dicomweb import (
    DicomwebConfig,
    DicomwebServer,
    fetch_series,
    is_dicomweb_uri,
    parse_series_uri,
    resolve_input,
    service_url,
)

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("USERNAME", "PASSWORD", "TOKEN", "CREDENTIALS", "CA_BUNDLE", "TIMEOUT", "RETRIES", "BACKOFF"):
        monkeypatch.delenv(f"MEDSAM_DICOMWEB_{name}", raising=False)
    monkeypatch.setenv("MEDSAM_DICOMWEB_RETRIES", "1")
    monkeypatch.setenv("MEDSAM_DICOMWEB_BACKOFF", "0.05")


def test_series_uri_parts():
    ref = parse_series_uri(f"dicomweb://pacs.example:8042/dicom-web/studies/{STUDY}/series/{SERIES}")
    assert (ref.base_url, ref.study_instance_uid, ref.series_instance_uid) == ("http://pacs.example:8042/dicom-web", STUDY, SERIES)
    assert ref.uri == f"dicomweb://pacs.example:8042/dicom-web/studies/{STUDY}/series/{SERIES}"
    secure = parse_series_uri(f"dicomwebs://pacs.example/studies/{STUDY}/series/{SERIES}/")
    assert secure.base_url == "https://pacs.example"
    assert is_dicomweb_uri(ref.uri) and not is_dicomweb_uri("/data/ct") and not is_dicomweb_uri("http://x/y")
    assert service_url("dicomweb://h:1/dicom-web/") == "http://h:1/dicom-web"
    assert service_url("https://h/dicom-web") == "https://h/dicom-web"


@pytest.mark.parametrize(
    "uri, message",
    [
        (f"dicomweb://user:secret@pacs:8042/dicom-web/studies/{STUDY}/series/{SERIES}", "MEDSAM_DICOMWEB_USERNAME"),
        ("dicomweb://pacs:8042/dicom-web/studies/1.2.3", "does not name a series"),
        (f"dicomweb://pacs:8042/dicom-web/studies/{STUDY}/series/liver", "not a DICOM UID"),
        (f"dicomweb://pacs:port/studies/{STUDY}/series/{SERIES}", "port is not a number"),
        (f"dicomweb:///studies/{STUDY}/series/{SERIES}", "no host"),
        (f"dicomweb://pacs/studies/{STUDY}/series/{SERIES}?token=abc", "no query"),
    ],
)
def test_bad_uris_are_refused_with_a_reason(uri, message):
    with pytest.raises(InputError, match=message) as err:
        parse_series_uri(uri)
    assert "secret" not in str(err.value)  # a password typed into the address is never echoed


def test_resolve_input_passes_local_paths_through(tmp_path):
    assert resolve_input(tmp_path / "ct.nii.gz") == tmp_path / "ct.nii.gz"
    assert resolve_input(str(tmp_path)) == tmp_path


def test_credentials_from_the_environment_and_a_private_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_DICOMWEB_USERNAME", "ann")
    monkeypatch.setenv("MEDSAM_DICOMWEB_PASSWORD", "pw")
    config = DicomwebConfig.from_env("http://127.0.0.1:1/dicom-web")
    assert (config.username, config.password) == ("ann", "pw") and "pw" not in repr(config)
    server = DicomwebServer(config)
    assert server.session.auth == ("ann", "pw") and server.session.verify is True  # TLS verified by default
    monkeypatch.delenv("MEDSAM_DICOMWEB_USERNAME")
    monkeypatch.delenv("MEDSAM_DICOMWEB_PASSWORD")

    creds = tmp_path / "creds.json"
    creds.write_text('{"token": "abc"}')
    creds.chmod(0o644)
    monkeypatch.setenv("MEDSAM_DICOMWEB_CREDENTIALS", str(creds))
    with pytest.raises(InputError, match="chmod 600"):
        DicomwebConfig.from_env("http://127.0.0.1:1")
    creds.chmod(0o600)
    server = DicomwebServer(DicomwebConfig.from_env("http://127.0.0.1:1"))
    assert server.session.headers["Authorization"] == "Bearer abc" and server.session.auth is None
    creds.write_text('{"user": "x"}')
    with pytest.raises(InputError, match="expected an object"):
        DicomwebConfig.from_env("http://127.0.0.1:1")
    creds.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        DicomwebConfig.from_env("http://127.0.0.1:1")
    monkeypatch.delenv("MEDSAM_DICOMWEB_CREDENTIALS")
    monkeypatch.setenv("MEDSAM_DICOMWEB_USERNAME", "ann")
    with pytest.raises(InputError, match="MEDSAM_DICOMWEB_PASSWORD"):
        DicomwebConfig.from_env("http://127.0.0.1:1")
    monkeypatch.setenv("MEDSAM_DICOMWEB_PASSWORD", "pw")
    with pytest.warns(UserWarning, match="plain HTTP"):
        DicomwebConfig.from_env("http://pacs.example:8042/dicom-web")
    monkeypatch.setenv("MEDSAM_DICOMWEB_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(InputError, match="CA bundle"):
        DicomwebConfig.from_env("https://pacs.example/dicom-web")
    monkeypatch.setenv("MEDSAM_DICOMWEB_CA_BUNDLE", str(creds))
    assert DicomwebServer(DicomwebConfig.from_env("https://pacs.example")).session.verify == str(creds)
    monkeypatch.setenv("MEDSAM_DICOMWEB_TIMEOUT", "soon")
    with pytest.raises(InputError, match="not a number"):
        DicomwebConfig.from_env("https://pacs.example")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_error(tmp_path):
    port = _closed_port()
    uri = f"dicomweb://127.0.0.1:{port}/dicom-web/studies/{STUDY}/series/{SERIES}"
    started = time.monotonic()
    with pytest.raises(RemoteServiceError, match=r"cannot be reached .*Connection refused.*2 tries.*host and port"):
        fetch_series(uri, cache_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.dcm"))


class _Silent:
    """Accepts connections and never answers: counts how many arrive."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_silent_server_times_out_after_its_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_DICOMWEB_TIMEOUT", "0.4")
    silent = _Silent()
    try:
        uri = f"dicomweb://127.0.0.1:{silent.port}/dicom-web/studies/{STUDY}/series/{SERIES}"
        with pytest.raises(RemoteServiceError, match=r"stopped answering for 0.4 s .*2 tries.*MEDSAM_DICOMWEB_TIMEOUT"):
            fetch_series(uri, cache_dir=tmp_path, progress=False)
        assert silent.accepted == 2  # the first try and one retry
    finally:
        silent.close()


def test_busy_server_answers_are_retried_with_backoff_then_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_DICOMWEB_RETRIES", "2")
    seen: list[float] = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(time.monotonic())
            self.send_response(503)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"busy, sorry"[:9])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        uri = f"dicomweb://127.0.0.1:{httpd.server_address[1]}/dicom-web/studies/{STUDY}/series/{SERIES}"
        with pytest.raises(RemoteServiceError, match="answered HTTP 503"):
            fetch_series(uri, cache_dir=tmp_path, progress=False)
    finally:
        httpd.shutdown()
    assert len(seen) == 3  # 1 + 2 retries
    assert seen[2] - seen[1] >= seen[1] - seen[0] > 0.04  # exponential back-off
