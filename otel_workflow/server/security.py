"""Who may talk to the collector: the bearer token, the loopback Host check, the exposure warning.

- `BearerAuth`: with a token, every route but `/healthz` needs `Authorization: Bearer <token>`
  (compared in constant time); others get 401 with `WWW-Authenticate`.
- `LoopbackHosts`: bound to loopback, requests must be addressed to a loopback name (their Host
  header), which keeps web pages from reading the collector through DNS rebinding.
- `check_exposure`: a warning when the collector listens beyond loopback without a token.

Both middlewares refuse in the answer's dialect: an OTLP `google.rpc.Status` under `/v1/`, the read
API's `{"error": ...}` elsewhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from starlette.datastructures import Headers
from starlette.responses import Response

from otel_workflow.server.api import api_error
from otel_workflow.server.receiver import content_kind, otlp_error

__all__ = [
    "TOKEN_ENV",
    "ASGIApp",
    "BearerAuth",
    "LoopbackHosts",
    "check_exposure",
    "host_name",
    "is_loopback",
]

logger = logging.getLogger("otel_workflow")

#: The environment variable the CLI reads the bearer token from (a token on the command line shows in `ps`).
TOKEN_ENV: Final = "OTEL_WORKFLOW_TOKEN"

_OPEN_PATHS: Final = frozenset({"/healthz"})

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
#: An ASGI application (what `create_app` returns, and what the middlewares wrap).
ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def _refusal(scope: _Scope, headers: Headers, status: int, message: str) -> Response:
    """The error answer of the route asked for: OTLP's under `/v1/`, the read API's elsewhere."""
    if str(scope.get("path", "")).startswith("/v1/"):
        return otlp_error(status, message, content_kind(headers.get("content-type")))
    return api_error(status, message)


class BearerAuth:
    """Asks every request but `/healthz` for `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode("utf-8"), self._token
        ):
            await self._app(scope, receive, send)
            return
        message = "missing or wrong bearer token (Authorization: Bearer <token>)"
        response = _refusal(scope, headers, 401, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="otel-workflow"'
        await response(scope, receive, send)


class LoopbackHosts:
    """Bound to loopback, answers only requests addressed to a loopback name (their Host header).

    A web page can make a browser send requests to 127.0.0.1, and with DNS rebinding read the
    answers too, under a name of the page's own choosing: the Host header then names the page's
    domain, which this refuses. Clients on the machine address it as 127.0.0.1, ::1 or localhost.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host = host_name(headers.get("host", ""))
            if host and not is_loopback(host):
                message = f"this collector listens on loopback only; Host {host!r} is not a loopback name"
                await _refusal(scope, headers, 400, message)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:4318` -> `::1`, `localhost:80` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, without a port) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Warn (on the `otel_workflow` logger) when listening on `host` lets others in without a token."""
    if not is_loopback(host) and not token:
        logger.warning(
            "otel-workflow collector listens on %s without a token: anyone who can reach it can write "
            "spans and read every stored trace. Set a token (--token or $%s), or bind to 127.0.0.1.",
            host,
            TOKEN_ENV,
        )
