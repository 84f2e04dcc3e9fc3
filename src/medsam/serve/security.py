"""Guards in front of every request (pure ASGI, so they also cover uploads before they are parsed):

- Host header allow-list (a loopback server answers only to loopback names: no DNS rebinding);
- the token, when the server has one: ``Authorization: Bearer TOKEN`` or ``X-Medsam-Token: TOKEN`` on
  every request except the page's own static files (the page then asks for the token and sends it);
- a limit on the request body: a declared Content-Length over it is refused at once with 413, and a body
  that grows past it while streaming is cut and answered with 413 too.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

PUBLIC_PATHS = ("/", "/index.html", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


class BodyTooLarge(Exception):
    pass


async def send_error(send: Send, status: int, message: str, kind: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": message, "error": kind}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.token = token
        self.max_body = int(max_body_bytes)
        self.allowed_hosts = allowed_hosts

    def _headers(self, scope: Scope) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

    def _host_ok(self, headers: dict[str, str]) -> bool:
        if self.allowed_hosts is None:
            return True
        host = headers.get("host", "").strip().lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1] if "]" in host else host
        elif ":" in host:
            host = host.rsplit(":", 1)[0]
        return host in self.allowed_hosts

    def _token_ok(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-medsam-token")
        auth = headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())  # type: ignore[union-attr]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # the API has none; refuse rather than bypass the checks
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = self._headers(scope)
        path = scope.get("path", "")
        if not self._host_ok(headers):
            await send_error(
                send, 400, f"host {headers.get('host', '')!r} is not served here; use http://127.0.0.1:<port>/", "HostNotAllowed"
            )
            return
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if self.token is not None and not public and not self._token_ok(headers):
            missing = "authorization" not in headers and "x-medsam-token" not in headers
            await send_error(
                send,
                401,
                "this server needs a token: send 'Authorization: Bearer <token>' or 'X-Medsam-Token: <token>'"
                if missing
                else "the token is wrong; use the token the server was started with (--token)",
                "Unauthorized",
                [(b"www-authenticate", b'Bearer realm="medsam"')],
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await send_error(send, 413, self._too_large(int(declared)), "PayloadTooLarge")
            return
        await self._limited(scope, receive, send)

    def _too_large(self, size: int | None = None) -> str:
        limit = self.max_body / 2**20
        what = f"the request body ({size / 2**20:.1f} MiB)" if size is not None else "the request body"
        return f"{what} is larger than this server's limit of {limit:g} MiB (start it with a larger --max-upload-mb)"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        tripped = False
        started = False

        async def limited_receive() -> dict:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    tripped = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if tripped:  # the app answered an error about the cut body: replace it with 413
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if tripped and not started:
            await send_error(send, 413, self._too_large(), "PayloadTooLarge")
