"""A real Orthanc PACS for the tests: started on 127.0.0.1 on a free port with a temporary configuration.

Storage in a temporary folder, the DICOMweb plugin of the Debian package ``orthanc-dicomweb``, no DICOM
(DIMSE) port, no remote access, HTTP authentication on with one test user (so the credentials path of
``medsam.io.dicomweb`` is exercised). ``start_orthanc`` returns None with a reason when Orthanc or its plugin
is not installed; any other failure to start is an error (the tests must not skip silently on CI).
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")
USER, PASSWORD = "medsam-test", "not-a-real-secret-42"


def find_orthanc() -> tuple[str | None, str | None, str]:
    """(binary, plugin, reason when one is missing)."""
    binary = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None)
    plugin = next((hit for pattern in PLUGIN_GLOBS for hit in sorted(glob.glob(pattern))), None)
    if binary is None:
        return None, None, "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)"
    if plugin is None:
        return binary, None, "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return binary, plugin, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    process: subprocess.Popen
    port: int
    folder: Path
    user: str = USER
    password: str = PASSWORD

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def series_uri(self, study_uid: str, series_uid: str) -> str:
        return f"dicomweb://127.0.0.1:{self.port}/dicom-web/studies/{study_uid}/series/{series_uid}"

    def _request(self, path: str, data: bytes | None = None, method: str | None = None, content_type: str = "application/dicom"):
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def upload(self, paths) -> list[str]:
        """Upload DICOM files through Orthanc's own REST API (not our STOW code); returns Orthanc instance ids."""
        ids = []
        for path in paths:
            answer = self._request("/instances", Path(path).read_bytes(), "POST")
            ids.append(answer["ID"])
        return ids

    def get(self, path: str):
        return self._request(path)

    def lookup(self, uid: str) -> list[tuple[str, str]]:
        """(level, Orthanc id) of every resource with this DICOM UID (Orthanc's REST API, not DICOMweb)."""
        found = self._request("/tools/lookup", uid.encode(), "POST", content_type="text/plain")
        return [(hit["Type"], hit["ID"]) for hit in found]

    def delete_instance(self, sop_uid: str) -> None:
        for level, oid in self.lookup(sop_uid):
            if level == "Instance":
                self._request(f"/instances/{oid}", method="DELETE")

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_orthanc(folder: Path, binary: str, plugin: str, *, timeout_s: float = 60.0) -> Orthanc:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "medsam-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "HttpDescribeErrors": True,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{port}", "Ssl": False},
        "LuaScripts": [],
        "StableAge": 1,
        "SaveJobs": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(process, port, folder)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {process.returncode}: {(folder / 'orthanc.log').read_text()[-3000:]}")
        try:
            server.get("/system")
            plugins = server.get("/plugins")
            if "dicom-web" not in plugins:
                server.stop()
                raise RuntimeError(f"Orthanc started without its DICOMweb plugin (plugins: {plugins}); see {folder / 'orthanc.log'}")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"Orthanc did not answer on port {port} within {timeout_s:g} s; see {folder / 'orthanc.log'}")
            time.sleep(0.2)
