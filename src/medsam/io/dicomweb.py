"""A PACS over DICOMweb as a source and a sink: QIDO-RS to find, WADO-RS to fetch, STOW-RS to store.

A series is named by a URI (``dicomweb://`` is plain HTTP, ``dicomwebs://`` is HTTPS with the certificate
verified against the system's CAs or ``MEDSAM_DICOMWEB_CA_BUNDLE``)::

    dicomweb://HOST:PORT/dicom-web/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>

The two calls other commands use (``medsam segment-volume``, ``medsam batch``, ``medsam serve``)::

    from medsam.io.dicomweb import resolve_input, store_result

    local = resolve_input("dicomweb://pacs:8042/dicom-web/studies/1.2.3/series/4.5.6")  # a verified local folder
    ...  # segment it; write a DICOM-SEG / RT-STRUCT referencing it (medsam.io.dicom_seg / rtstruct)
    stored = store_result("out/liver_seg.dcm", "dicomweb://pacs:8042/dicom-web/studies/1.2.3/series/4.5.6")
    stored.sop_instance_uid, stored.retrieve_url   # STOW-RS done, read back and checked

``resolve_input`` returns any other path unchanged, so callers can pass every input through it.

Fetching: QIDO lists the series' instances first (a missing series, a non-image series such as SEG or SR, and
a series mixing SOP classes are refused before anything is downloaded); WADO-RS retrieves each instance into a
temporary folder beside the cache entry; every instance is checked (its SOP Instance UID was asked for, it
belongs to the series, its pixel data is complete) and the instance count must match the listing; only then is
the folder renamed into place, so a partial download is never read. A cache entry is reused only while the
server still lists exactly the same instances. Cache: ``$MEDSAM_CACHE_DIR/dicomweb`` (else
``$XDG_CACHE_HOME/medsam/dicomweb``, else ``~/.cache/medsam/dicomweb``).

Storing: the file must reference the series of the URI (checked before sending); after STOW-RS the object is
found again by QIDO, retrieved by WADO-RS and compared: same SOP Instance UID and class, same content, and
references to the source study, series, frame of reference and instances.

Credentials never travel on the command line (a URI with ``user:password@`` is refused). They come from the
environment, or from a JSON file that only its owner can read:

    MEDSAM_DICOMWEB_USERNAME + MEDSAM_DICOMWEB_PASSWORD    HTTP basic authentication
    MEDSAM_DICOMWEB_TOKEN                                  a bearer token
    MEDSAM_DICOMWEB_CREDENTIALS=/path/creds.json           {"username": ..., "password": ...} or {"token": ...},
                                                           optionally "ca_bundle": "/path/ca.pem"
Robustness knobs (environment): ``MEDSAM_DICOMWEB_TIMEOUT`` seconds per request (default 30),
``MEDSAM_DICOMWEB_RETRIES`` retries of a failed connection or a 408/429/502/503/504 answer (default 3),
``MEDSAM_DICOMWEB_BACKOFF`` first back-off in seconds, doubled at each retry (default 0.5).

dicomweb-client and requests are imported lazily (the ``dicomweb`` extra).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote, urlsplit

from medsam.errors import InputError, OutputError, RemoteServiceError

log = logging.getLogger(__name__)

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
ENV_PREFIX = "MEDSAM_DICOMWEB_"
MANIFEST = "medsam-dicomweb.json"
_RETRY_STATUS = (408, 429, 502, 503, 504)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# SOP classes that are not images, whatever Modality says.
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
}
_MODALITY_NAMES = {"SEG": "segmentation", "SR": "structured report", "RTSTRUCT": "RT structure set", "PR": "presentation state",
                   "KO": "key object selection", "DOC": "document", "RTDOSE": "RT dose", "RTPLAN": "RT plan", "REG": "registration"}
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


# --- addresses -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomwebSeriesRef:
    """A series on a DICOMweb server: ``base_url`` (the service root, e.g. http://pacs:8042/dicom-web) and UIDs."""

    base_url: str
    study_instance_uid: str
    series_instance_uid: str

    @property
    def uri(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return f"{'dicomwebs' if scheme == 'https' else 'dicomweb'}://{rest}/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"

    def __str__(self) -> str:
        return self.uri


def is_dicomweb_uri(text: object) -> bool:
    """True for ``dicomweb://...`` / ``dicomwebs://...`` (a string; Paths are local files)."""
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def _check_netloc(parts: Any, text: str) -> None:
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InputError(
            f"{_redact(text)}: credentials in the address would be kept in shell history and shown in process lists; "
            f"remove them and set {ENV_PREFIX}USERNAME / {ENV_PREFIX}PASSWORD (or {ENV_PREFIX}TOKEN, or "
            f"{ENV_PREFIX}CREDENTIALS=file.json) instead"
        )
    if not parts.hostname:
        raise InputError(f"{text!r}: no host; write dicomweb://HOST:PORT/dicom-web/studies/S/series/R")
    try:
        parts.port
    except ValueError:
        raise InputError(f"{text!r}: the port is not a number") from None


def _redact(text: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", text)


def parse_series_uri(text: str) -> DicomwebSeriesRef:
    """``dicomweb(s)://HOST[:PORT]/PREFIX/studies/S/series/R`` -> the service root and the two UIDs."""
    if not is_dicomweb_uri(text):
        raise InputError(f"{text!r} is not a DICOMweb address; write dicomweb://HOST:PORT/dicom-web/studies/S/series/R")
    scheme, _, rest = text.partition("://")
    parts = urlsplit(f"{SCHEMES[scheme.lower()]}://{rest}")
    _check_netloc(parts, text)
    if parts.query or parts.fragment:
        raise InputError(f"{text!r}: a series address has no query or fragment (?..., #...)")
    match = re.fullmatch(r"(?P<prefix>(?:/[^/]+)*?)/studies/(?P<study>[^/]+)/series/(?P<series>[^/]+)/?", parts.path)
    if match is None:
        raise InputError(
            f"{text!r} does not name a series; write dicomweb://HOST:PORT/dicom-web/studies/<StudyInstanceUID>/series/"
            "<SeriesInstanceUID> (find them with `medsam serve --dicomweb URL` or the PACS's own viewer)"
        )
    for what, uid in (("study", match["study"]), ("series", match["series"])):
        if not _UID.match(uid) or len(uid) > 64:
            raise InputError(f"{text!r}: the {what} UID {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    base = f"{parts.scheme}://{parts.netloc}{match['prefix']}"
    return DicomwebSeriesRef(base, match["study"], match["series"])


def service_url(text: str) -> str:
    """The service root of ``http(s)://...`` or ``dicomweb(s)://...`` (what ``medsam serve --dicomweb`` takes)."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https", *SCHEMES):
        raise InputError(f"--dicomweb {text!r}: give the service root, e.g. http://pacs:8042/dicom-web (or dicomweb://...)")
    url = f"{SCHEMES.get(scheme, scheme)}://{rest}".rstrip("/")
    parts = urlsplit(url)
    _check_netloc(parts, text)
    if parts.query or parts.fragment:
        raise InputError(f"--dicomweb {text!r}: the service root has no query or fragment")
    return url


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomwebConfig:
    """How to talk to one DICOMweb server. Secrets are kept out of ``repr``."""

    base_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, base_url: str, environ: dict[str, str] | None = None) -> "DicomwebConfig":
        """Credentials and knobs from ``MEDSAM_DICOMWEB_*`` (see the module doc); a clear error for bad values."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = env.get(ENV_PREFIX + "CREDENTIALS")
        if path:
            values.update(_read_credentials_file(Path(path).expanduser()))
        for key in ("username", "password", "token", "ca_bundle"):
            if env.get(ENV_PREFIX + key.upper()):
                values[key] = env[ENV_PREFIX + key.upper()]
        for key, kind, env_name in (("timeout_s", float, "TIMEOUT"), ("retries", int, "RETRIES"), ("backoff_s", float, "BACKOFF")):
            text = env.get(ENV_PREFIX + env_name)
            if text:
                try:
                    values[key] = kind(text)
                except ValueError:
                    raise InputError(f"{ENV_PREFIX}{env_name}={text!r} is not a number") from None
        config = cls(base_url=base_url, **values)
        config.check()
        return config

    def check(self) -> None:
        if (self.username is None) != (self.password is None):
            missing = "PASSWORD" if self.password is None else "USERNAME"
            raise InputError(f"DICOMweb credentials: a {'user name' if missing == 'PASSWORD' else 'password'} without "
                             f"a {'password' if missing == 'PASSWORD' else 'user name'}; set {ENV_PREFIX}{missing} too")
        if self.token is not None and self.username is not None:
            raise InputError("DICOMweb credentials: give a user name and password or a token, not both")
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise InputError(f"DICOMweb: timeout must be positive, retries and back-off not negative ({self!r})")
        if self.ca_bundle is not None and not Path(self.ca_bundle).expanduser().is_file():
            raise InputError(f"DICOMweb CA bundle {self.ca_bundle} does not exist; give the PEM file of your CA")
        host = urlsplit(self.base_url).hostname or ""
        if self.base_url.startswith("http://") and (self.username or self.token) and not _is_loopback(host):
            warnings.warn(
                f"DICOMweb: credentials are sent to {host} over plain HTTP (readable on the network); use dicomwebs:// "
                "(HTTPS) for a server on another machine",
                UserWarning,
                stacklevel=3,
            )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_credentials_file(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"DICOMweb credentials file {path} cannot be read: {exc.strerror or exc}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"DICOMweb credentials file {path} can be read by other users; make it private: chmod 600 {path}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"DICOMweb credentials file {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    allowed = {"username", "password", "token", "ca_bundle"}
    if not isinstance(data, dict) or not set(data) <= allowed or not all(isinstance(v, str) for v in data.values()):
        raise InputError(
            f"DICOMweb credentials file {path}: expected an object with string fields among {sorted(allowed)}, e.g. "
            '{"username": "...", "password": "..."}'
        )
    return data


# --- the client ------------------------------------------------------------------------------------------


def _libraries() -> tuple[Any, Any]:
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InputError(f"DICOMweb needs dicomweb-client ({exc.name} is missing): pip install 'medsam-toolkit[dicomweb]'") from None
    return requests, DICOMwebClient


def make_session(config: DicomwebConfig) -> Any:
    """A requests Session: credentials and TLS verification (always on; a CA bundle may be added). Retries are
    dicomweb-client's (every failed attempt, exceptions and 408/429/502/503/504 answers, with exponential
    back-off), so the transport itself does not retry: one layer of retries, not two multiplied."""
    requests, _ = _libraries()

    session = requests.Session()
    session.verify = str(Path(config.ca_bundle).expanduser()) if config.ca_bundle else True
    session.trust_env = False  # no ~/.netrc credentials or proxies picked up behind the person's back
    if config.username is not None:
        session.auth = (config.username, config.password or "")
    if config.token is not None:
        session.headers["Authorization"] = f"Bearer {config.token}"
    session.headers["User-Agent"] = "medsam-toolkit"
    return session


class DicomwebServer:
    """One DICOMweb server: QIDO/WADO/STOW calls with timeouts, retries and errors people can act on."""

    def __init__(self, config: DicomwebConfig) -> None:
        _, client_class = _libraries()
        self.config = config
        self.session = make_session(config)
        # A chunk size above any object we send: dicomweb-client posts larger bodies as a generator, which a retry
        # would find already consumed (and send empty).
        self.client = client_class(config.base_url, session=self.session, timeout=config.timeout_s, chunk_size=1 << 31)
        self.client.set_http_retry_params(
            retry=config.retries > 0,
            max_attempts=config.retries + 1,
            wait_exponential_multiplier=max(1, int(config.backoff_s * 500)),  # waits backoff, 2 x backoff, ...
            retriable_error_codes=_RETRY_STATUS,
        )

    @classmethod
    def from_url(cls, base_url: str) -> "DicomwebServer":
        return cls(DicomwebConfig.from_env(base_url))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "DicomwebServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def calling(self, what: str, *, missing: str | None = None) -> Iterator[None]:
        """Turn transport and HTTP failures of ``what`` into one clear message (404 -> ``missing`` as InputError)."""
        requests, _ = _libraries()
        url = self.config.base_url
        tries = self.config.retries + 1
        try:
            yield
        except requests.exceptions.SSLError as exc:
            raise RemoteServiceError(
                f"DICOMweb server {url}: the TLS certificate could not be verified ({_reason(exc)}); if the server uses "
                f"a private CA, set {ENV_PREFIX}CA_BUNDLE=/path/ca.pem (verification is never switched off)"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise RemoteServiceError(
                f"DICOMweb server {url} did not accept a connection within {self.config.timeout_s:g} s ({tries} tries) "
                f"while trying to {what}; check the address and the network"
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout) as exc:
            if isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in str(exc):
                raise RemoteServiceError(
                    f"DICOMweb server {url} stopped answering for {self.config.timeout_s:g} s while trying to {what} "
                    f"({tries} tries); raise {ENV_PREFIX}TIMEOUT for a slow server"
                ) from None
            raise RemoteServiceError(
                f"DICOMweb server {url} cannot be reached while trying to {what} ({_reason(exc)}; {tries} tries); "
                "check the host and port and that the server runs"
            ) from None
        except requests.exceptions.Timeout:
            raise RemoteServiceError(
                f"DICOMweb server {url} did not answer within {self.config.timeout_s:g} s while trying to {what} "
                f"({tries} tries); raise {ENV_PREFIX}TIMEOUT for a slow server"
            ) from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                given = "no credentials were given" if self.session.auth is None and "Authorization" not in self.session.headers else "the credentials were refused"
                raise RemoteServiceError(
                    f"DICOMweb server {url} answered {status} ({'unauthorised' if status == 401 else 'forbidden'}) while "
                    f"trying to {what}: {given}. Set {ENV_PREFIX}USERNAME and {ENV_PREFIX}PASSWORD (or {ENV_PREFIX}TOKEN, "
                    f"or {ENV_PREFIX}CREDENTIALS=file.json) for an account that may do this"
                ) from None
            if status == 404 and missing is not None:
                raise InputError(missing) from None
            body = ""
            if exc.response is not None:
                body = " ".join(exc.response.text.split())[:300]
            raise RemoteServiceError(
                f"DICOMweb server {url} answered HTTP {status} while trying to {what}" + (f": {body}" if body else "")
            ) from None
        except requests.exceptions.RequestException as exc:
            raise RemoteServiceError(f"DICOMweb server {url}: {what} failed: {_reason(exc)}") from None
        except Exception as exc:
            response = getattr(getattr(exc, "last_attempt", None), "value", None)  # retrying.RetryError: still busy
            if type(exc).__name__ != "RetryError" or not hasattr(response, "status_code"):
                raise
            body = " ".join(str(getattr(response, "text", "")).split())[:200]
            raise RemoteServiceError(
                f"DICOMweb server {url} answered HTTP {response.status_code} while trying to {what}, {tries} tries "
                "with back-off; the server is busy or down, try again later" + (f" ({body})" if body else "")
            ) from None

    # --- QIDO ---------------------------------------------------------------------------------------------

    def search_studies(self, *, limit: int | None = None, offset: int | None = None,
                       filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        fields = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyDescription", "ModalitiesInStudy",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "AccessionNumber"]
        params: list[tuple[str, Any]] = list((filters or {}).items()) + [("includefield", f) for f in fields]
        params += [(k, v) for k, v in (("limit", limit), ("offset", offset)) if v is not None]
        found = self._get_json("/studies", params, what="search for studies")
        return [_plain(item) for item in found]

    def _get_json(self, path: str, params: list[tuple[str, Any]], *, what: str) -> list[dict[str, Any]]:
        """A QIDO GET whose query keeps wildcards as typed: dicomweb-client percent-encodes '*' and '^', which
        some servers (Orthanc 1.10) then match literally. Same timeout, retries and back-off as the client."""
        from urllib.parse import urlencode

        requests, _ = _libraries()
        url = f"{self.config.base_url}{path}?{urlencode(params, doseq=True, safe='*^')}"
        with self.calling(what):
            for attempt in range(self.config.retries + 1):
                last = attempt == self.config.retries
                try:
                    response = self.session.get(url, headers={"Accept": "application/dicom+json"}, timeout=self.config.timeout_s)
                except requests.exceptions.RequestException:
                    if last:
                        raise
                else:
                    if response.status_code not in _RETRY_STATUS or last:
                        response.raise_for_status()
                        return response.json() if response.content.strip() else []
                time.sleep(self.config.backoff_s * 2**attempt)
        return []  # pragma: no cover - the loop always returns or raises

    def search_series(self, study_uid: str, series_uid: str | None = None) -> list[dict[str, Any]]:
        fields = ["SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances",
                  "StudyInstanceUID"]
        filters = {"SeriesInstanceUID": series_uid} if series_uid else None
        with self.calling(f"search for the series of study {study_uid}",
                          missing=f"DICOMweb server {self.config.base_url} has no study {study_uid}"):
            found = self.client.search_for_series(study_instance_uid=study_uid, fields=fields, search_filters=filters,
                                                  get_remaining=True)
        return [_plain(item) for item in found]

    def search_instances(self, study_uid: str, series_uid: str, sop_uid: str | None = None) -> list[dict[str, Any]]:
        fields = ["SOPInstanceUID", "SOPClassUID", "Modality", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"]
        filters = {"SOPInstanceUID": sop_uid} if sop_uid else None
        with self.calling(f"list the instances of series {series_uid}",
                          missing=f"DICOMweb server {self.config.base_url} has no series {series_uid} in study {study_uid}"):
            found = self.client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid,
                                                     fields=fields, search_filters=filters, get_remaining=True)
        return [_plain(item) for item in found]

    # --- WADO / STOW --------------------------------------------------------------------------------------

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        with self.calling(f"retrieve instance {sop_uid}",
                          missing=f"instance {sop_uid} disappeared from series {series_uid} while it was being fetched"):
            return self.client.retrieve_instance(study_uid, series_uid, sop_uid)

    def store(self, datasets: Sequence[Any], study_uid: str) -> Any:
        with self.calling(f"store {len(datasets)} object(s) in study {study_uid} (STOW-RS)"):
            return self.client.store_instances(list(datasets), study_instance_uid=study_uid)

    def instance_url(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{self.config.base_url}/studies/{quote(study_uid)}/series/{quote(series_uid)}/instances/{quote(sop_uid)}"


def _reason(exc: BaseException) -> str:
    """The innermost readable reason of a requests/urllib3 error (e.g. 'Connection refused')."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"NewConnectionError\([^:]*: ([^'\")]+)", r"(certificate verify failed[^'\")]*)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip().rstrip(".")
    return text[:200]


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object (tag -> {vr, Value}) as {keyword: value} with single values unwrapped."""
    from pydicom.datadict import keyword_for_tag

    out: dict[str, Any] = {}
    for tag, element in item.items():
        try:
            keyword = keyword_for_tag(int(tag, 16)) or tag
        except ValueError:
            keyword = tag
        values = element.get("Value", []) if isinstance(element, dict) else []
        if element.get("vr") == "PN":
            values = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v) for v in values]
        out[keyword] = values[0] if len(values) == 1 else (values or None)
    return out


# --- the source ------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("MEDSAM_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "dicomweb"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "medsam" / "dicomweb"


def _cache_entry(cache_dir: Path, ref: DicomwebSeriesRef) -> Path:
    parts = urlsplit(ref.base_url)
    server = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.hostname}_{parts.port or parts.scheme}{parts.path}").strip("_")
    return cache_dir / server / ref.study_instance_uid / ref.series_instance_uid


def _describe_kind(modality: str | None, sop_class: str | None) -> str | None:
    """'a DICOM SEG (segmentation)' when the instance is not an image, else None."""
    from medsam.io.dicom import _NON_IMAGE_MODALITIES

    mod = (modality or "").upper()
    if sop_class in _NON_IMAGE_SOP_CLASSES:
        return f"a DICOM {mod or 'object'} ({_NON_IMAGE_SOP_CLASSES[sop_class]})"
    if mod in _NON_IMAGE_MODALITIES:
        return f"a DICOM {mod} ({_MODALITY_NAMES.get(mod, 'non-image object')})"
    return None


def _sop_name(uid: str | None) -> str:
    if not uid:
        return "unknown class"
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:  # pragma: no cover - pydicom always names or echoes a UID
        name = uid
    return name if name and name != uid else _NON_IMAGE_SOP_CLASSES.get(uid, uid)


def _image_series_hint(server: DicomwebServer, ref: DicomwebSeriesRef) -> str:
    try:
        series = server.search_series(ref.study_instance_uid)
    except Exception:
        return ""
    images = [s for s in series if _describe_kind(s.get("Modality"), None) is None
              and s.get("SeriesInstanceUID") != ref.series_instance_uid]
    if not images:
        return ""
    listing = "; ".join(f"{s.get('SeriesInstanceUID')} ({s.get('Modality') or '?'} {s.get('SeriesDescription') or ''}".rstrip()
                        + f", {s.get('NumberOfSeriesRelatedInstances') or '?'} instances)" for s in images[:5])
    return f". Image series of this study: {listing}"


def list_series_instances(server: DicomwebServer, ref: DicomwebSeriesRef) -> list[dict[str, Any]]:
    """The series' instances by QIDO, checked: the series exists, holds images only, of one SOP class."""
    where = f"{ref.uri}"
    found = server.search_series(ref.study_instance_uid, ref.series_instance_uid)
    if not found:
        raise InputError(
            f"{where}: DICOMweb server {ref.base_url} has no series {ref.series_instance_uid} in study "
            f"{ref.study_instance_uid}{_image_series_hint(server, ref)}"
        )
    series = found[0]
    instances = server.search_instances(ref.study_instance_uid, ref.series_instance_uid)
    if not instances:
        raise InputError(f"{where}: the series is listed but holds no instances; it may still be arriving, try again later")
    kind = _describe_kind(series.get("Modality"), None)
    kinds = {}
    for inst in instances:
        key = (inst.get("SOPClassUID"), inst.get("Modality") or series.get("Modality"))
        kinds.setdefault(key, []).append(inst)
    non_image = [(k, v) for k, v in kinds.items() if _describe_kind(k[1], k[0]) is not None]
    if kind is not None or (non_image and len(non_image) == len(kinds)):
        what = kind or _describe_kind(non_image[0][0][1], non_image[0][0][0])
        raise InputError(
            f"{where}: this series is {what}, not an image series; segment the CT/MR series it belongs to"
            f"{_image_series_hint(server, ref)}"
        )
    if len(kinds) > 1:
        listing = "; ".join(f"{len(v)} x {_sop_name(k[0])} ({k[1] or '?'})" for k, v in kinds.items())
        raise InputError(
            f"{where}: the series mixes kinds of objects ({listing}); it is not one volume. Ask the PACS to split it, or "
            "export the image instances as a series of their own"
        )
    missing_uid = [i for i in instances if not i.get("SOPInstanceUID")]
    if missing_uid:
        raise RemoteServiceError(f"{where}: the server listed {len(missing_uid)} instance(s) without a SOPInstanceUID")
    return instances


def _expected_pixel_bytes(ds: Any) -> int | None:
    """Bytes of native (uncompressed) pixel data for this header, or None when compressed / not computable."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or getattr(syntax, "is_compressed", False):
        return None
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        count = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1) or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (count * bits + 7) // 8


def check_instance(ds: Any, ref: DicomwebSeriesRef, sop_uid: str) -> None:
    """A fetched instance is the one asked for, of this series, with all its pixel data."""
    got = str(getattr(ds, "SOPInstanceUID", ""))
    if got != sop_uid:
        raise RemoteServiceError(f"{ref.uri}: asked for instance {sop_uid} but the server sent {got or 'an object without a UID'}")
    series = str(getattr(ds, "SeriesInstanceUID", ""))
    if series != ref.series_instance_uid:
        raise RemoteServiceError(f"{ref.uri}: instance {sop_uid} belongs to series {series}, not to the series asked for")
    if "PixelData" not in ds:
        raise InputError(f"{ref.uri}: instance {sop_uid} has no pixel data; it is not an image slice")
    expected = _expected_pixel_bytes(ds)
    size = len(ds.PixelData)
    if expected is not None and size < expected:
        raise RemoteServiceError(
            f"{ref.uri}: instance {sop_uid} arrived incomplete ({size} of {expected} pixel bytes); nothing was kept, try again"
        )


def _manifest_matches(folder: Path, ref: DicomwebSeriesRef, sop_uids: set[str]) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("series_instance_uid") != ref.series_instance_uid or set(manifest.get("sop_instance_uids", [])) != sop_uids:
        return False
    return all((folder / f"{uid}.dcm").is_file() for uid in sop_uids)


def fetch_series(
    ref: DicomwebSeriesRef | str,
    *,
    cache_dir: str | Path | None = None,
    server: DicomwebServer | None = None,
    progress: bool = True,
) -> Path:
    """Download a series into the cache (or reuse a complete, up-to-date copy) and return its folder.

    The folder holds one ``<SOPInstanceUID>.dcm`` per instance and a manifest; it appears only when complete.
    """
    from tqdm.auto import tqdm

    if isinstance(ref, str):
        ref = parse_series_uri(ref)
    own = server is None
    server = server or DicomwebServer.from_url(ref.base_url)
    try:
        instances = list_series_instances(server, ref)
        sop_uids = [str(i["SOPInstanceUID"]) for i in instances]
        if len(set(sop_uids)) != len(sop_uids):
            raise RemoteServiceError(f"{ref.uri}: the server lists some instances twice")
        target = _cache_entry(Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), ref)
        if _manifest_matches(target, ref, set(sop_uids)):
            log.info("DICOMweb: reusing the cached copy of %s (%d instances)", ref.uri, len(sop_uids))
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{ref.series_instance_uid[-16:]}.", suffix=".part", dir=target.parent))
        try:
            with tqdm(sop_uids, desc=f"fetching series {ref.series_instance_uid[-12:]}", unit="instance",
                      disable=not progress, leave=False) as bar:
                for uid in bar:
                    ds = server.retrieve_instance(ref.study_instance_uid, ref.series_instance_uid, uid)
                    check_instance(ds, ref, uid)
                    ds.save_as(tmp / f"{uid}.dcm", enforce_file_format=False)
            written = sorted(p.stem for p in tmp.glob("*.dcm"))
            if written != sorted(sop_uids):  # e.g. two instances sent under one UID
                raise RemoteServiceError(f"{ref.uri}: {len(written)} distinct instances arrived for {len(sop_uids)} listed")
            manifest = {"uri": ref.uri, "series_instance_uid": ref.series_instance_uid,
                        "study_instance_uid": ref.study_instance_uid, "sop_instance_uids": sop_uids,
                        "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            _replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target
    finally:
        if own:
            server.close()


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a complete folder into place; a stale copy is moved aside first (never read half-replaced)."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name[-16:]}.", suffix=".old", dir=target.parent))
        try:
            os.replace(target, trash / "old")
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # another process put its own complete copy there meanwhile: use that one
            raise


def resolve_input(uri: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """A local path for ``uri``: a ``dicomweb(s)://`` series is fetched and verified (see :func:`fetch_series`);
    anything else is returned as a Path unchanged."""
    if not is_dicomweb_uri(uri):
        return Path(uri)
    return fetch_series(str(uri), cache_dir=cache_dir, progress=progress)


def read_series(uri: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> Any:
    """The series of a ``dicomweb(s)://`` URI as a Volume (``medsam.io.dicom.read_dicom`` on the fetched copy);
    ``volume.metadata["dicomweb_uri"]`` keeps where it came from."""
    from medsam.io.dicom import read_dicom

    ref = parse_series_uri(uri)
    folder = fetch_series(ref, cache_dir=cache_dir, progress=progress)
    try:
        volume = read_dicom(folder, series_uid=ref.series_instance_uid)
    except InputError as exc:
        raise InputError(f"{ref.uri}: {exc}") from None
    volume.metadata["dicomweb_uri"] = ref.uri
    return volume


# --- the sink --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """A DICOM-SEG / RT-STRUCT stored by STOW-RS and read back: where it is and what it references."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_series_instance_uid: str
    referenced_instances: int
    retrieve_url: str

    @property
    def kind(self) -> str:
        return {SEGMENTATION_STORAGE: "DICOM-SEG", RT_STRUCTURE_SET_STORAGE: "RT-STRUCT"}.get(self.sop_class_uid, "DICOM")


@dataclass(frozen=True)
class References:
    """What a derived object points at."""

    study_instance_uid: str
    frame_of_reference_uid: str
    series_instance_uids: tuple[str, ...]
    sop_instance_uids: frozenset[str]


def references_of(ds: Any) -> References:
    """The study, frame of reference, series and instances a DICOM-SEG or RT-STRUCT references."""
    series: list[str] = []
    sops: set[str] = set()
    frame = str(getattr(ds, "FrameOfReferenceUID", ""))
    for item in getattr(ds, "ReferencedSeriesSequence", []) or []:  # SEG (and other derived images)
        series.append(str(item.SeriesInstanceUID))
        sops.update(str(i.ReferencedSOPInstanceUID) for i in getattr(item, "ReferencedInstanceSequence", []) or [])
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:  # RT-STRUCT
        frame = frame or str(getattr(fr, "FrameOfReferenceUID", ""))
        for study in getattr(fr, "RTReferencedStudySequence", []) or []:
            for item in getattr(study, "RTReferencedSeriesSequence", []) or []:
                series.append(str(item.SeriesInstanceUID))
                sops.update(str(i.ReferencedSOPInstanceUID) for i in getattr(item, "ContourImageSequence", []) or [])
    for roi in getattr(ds, "ROIContourSequence", []) or []:
        for contour in getattr(roi, "ContourSequence", []) or []:
            sops.update(str(i.ReferencedSOPInstanceUID) for i in getattr(contour, "ContourImageSequence", []) or [])
    for frame_item in getattr(ds, "PerFrameFunctionalGroupsSequence", []) or []:
        for derivation in getattr(frame_item, "DerivationImageSequence", []) or []:
            for source in getattr(derivation, "SourceImageSequence", []) or []:
                sops.add(str(source.ReferencedSOPInstanceUID))
    return References(str(getattr(ds, "StudyInstanceUID", "")), frame, tuple(dict.fromkeys(series)), frozenset(sops))


def check_references(ds: Any, ref: DicomwebSeriesRef, source_sops: set[str], frame_uid: str | None, *, what: str) -> References:
    """The object references the source series (study, series, frame of reference, instances of that series)."""
    refs = references_of(ds)
    if refs.study_instance_uid != ref.study_instance_uid:
        raise OutputError(f"{what} belongs to study {refs.study_instance_uid}, not to the source study {ref.study_instance_uid}")
    if refs.series_instance_uids != (ref.series_instance_uid,):
        listed = ", ".join(refs.series_instance_uids) or "no series"
        raise OutputError(f"{what} references {listed}, not the source series {ref.series_instance_uid}; "
                          "write it from the volume of that series")
    if not refs.sop_instance_uids:
        raise OutputError(f"{what} references no image of the source series")
    stray = refs.sop_instance_uids - source_sops
    if stray:
        raise OutputError(f"{what} references {len(stray)} image(s) that are not in the source series (e.g. {sorted(stray)[0]})")
    if frame_uid and refs.frame_of_reference_uid != frame_uid:
        raise OutputError(f"{what} has frame of reference {refs.frame_of_reference_uid}, not the source's {frame_uid}")
    return refs


def _stow_failures(response: Any) -> list[str]:
    failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
    out = []
    for item in failed or []:
        reason = getattr(item, "FailureReason", None)
        out.append(f"{getattr(item, 'ReferencedSOPInstanceUID', '?')} (failure reason {reason})")
    return out


def _content_matches(local: Any, remote: Any) -> bool:
    if "PixelData" in local:
        return "PixelData" in remote and bytes(remote.PixelData) == bytes(local.PixelData)
    contours = lambda ds: [len(getattr(r, "ContourSequence", []) or []) for r in getattr(ds, "ROIContourSequence", []) or []]  # noqa: E731
    first = lambda ds: [str(c.ContourData[:3]) for r in getattr(ds, "ROIContourSequence", []) or [] for c in getattr(r, "ContourSequence", []) or []]  # noqa: E731
    return contours(local) == contours(remote) and first(local) == first(remote)


def store_result(path: str | Path, uri: str, *, server: DicomwebServer | None = None) -> StoredObject:
    """Store a DICOM-SEG / RT-STRUCT file (made from the series of ``uri``) back into that PACS, and verify it.

    Before sending: the file is read and must reference the series of ``uri`` (study, series, frame of
    reference, instances the server lists). After STOW-RS: the stored instance must be found by QIDO and
    retrieved by WADO-RS with the same SOP Instance UID, class, content and references. Any failure is an
    OutputError or RemoteServiceError naming what went wrong.
    """
    import pydicom

    ref = parse_series_uri(uri)
    path = Path(path)
    try:
        local = pydicom.dcmread(path)
    except FileNotFoundError:
        raise OutputError(f"{path} does not exist; nothing was stored") from None
    except Exception as exc:
        raise OutputError(f"{path} is not a readable DICOM file ({exc}); nothing was stored") from None
    sop_class = str(getattr(local, "SOPClassUID", ""))
    if sop_class not in (SEGMENTATION_STORAGE, RT_STRUCTURE_SET_STORAGE):
        raise OutputError(f"{path} is a {_sop_name(sop_class)}, not a DICOM-SEG or RT-STRUCT; only those are stored back")
    own = server is None
    server = server or DicomwebServer.from_url(ref.base_url)
    try:
        source = server.search_instances(ref.study_instance_uid, ref.series_instance_uid)
        if not source:
            raise OutputError(f"{ref.uri}: the source series is not on the server (any more); {path} was not stored")
        source_sops = {str(i.get("SOPInstanceUID")) for i in source}
        frame_uid = _source_frame_of_reference(server, ref, source)
        check_references(local, ref, source_sops, frame_uid, what=f"{path}")
        sop_uid = str(local.SOPInstanceUID)
        series_uid = str(local.SeriesInstanceUID)
        response = server.store([local], ref.study_instance_uid)
        failures = _stow_failures(response)
        if failures:
            raise RemoteServiceError(f"DICOMweb server {ref.base_url} refused to store {path}: {'; '.join(failures)}")
        found = server.search_instances(ref.study_instance_uid, series_uid, sop_uid)
        if [str(i.get("SOPInstanceUID")) for i in found] != [sop_uid]:
            raise RemoteServiceError(
                f"DICOMweb server {ref.base_url} accepted {path} but does not list it afterwards (QIDO found {len(found)})"
            )
        remote = server.retrieve_instance(ref.study_instance_uid, series_uid, sop_uid)
        what = f"the stored copy of {path.name} on {ref.base_url}"
        if str(getattr(remote, "SOPInstanceUID", "")) != sop_uid or str(getattr(remote, "SOPClassUID", "")) != sop_class:
            raise RemoteServiceError(f"{what} does not read back as the same object")
        if not _content_matches(local, remote):
            raise RemoteServiceError(f"{what} differs from the file that was sent")
        refs = check_references(remote, ref, source_sops, frame_uid, what=what)
        return StoredObject(sop_uid, sop_class, series_uid, ref.study_instance_uid, ref.series_instance_uid,
                            len(refs.sop_instance_uids), server.instance_url(ref.study_instance_uid, series_uid, sop_uid))
    finally:
        if own:
            server.close()


def _source_frame_of_reference(server: DicomwebServer, ref: DicomwebSeriesRef, instances: list[dict[str, Any]]) -> str | None:
    """The source series' FrameOfReferenceUID (WADO metadata of one instance; None when the server does not say)."""
    uid = str(instances[0].get("SOPInstanceUID"))
    with server.calling(f"read the metadata of instance {uid}"):
        meta = server.client.retrieve_instance_metadata(ref.study_instance_uid, ref.series_instance_uid, uid)
    value = _plain(meta).get("FrameOfReferenceUID")
    return str(value) if value else None
