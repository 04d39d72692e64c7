"""Who may talk to the server, and what every answer carries.

- `TokenAuth`: with a token, every route but `/healthz`, `/login` and `/static/` needs it, as
  `Authorization: Bearer <token>` (scripts, exporters) or as the cookie `TOKEN_COOKIE` (browsers:
  set by the login form, or by opening a page once with `?token=`, which answers a redirect to the
  same page without it). Compared in constant time; others get 401 with `WWW-Authenticate`, and a
  page asked for without the token gets the login form.
- `LoopbackHosts`: bound to loopback, requests must be addressed to a loopback name (their Host
  header), which keeps web pages from reading the server through DNS rebinding.
- `SecurityHeaders`: every answer says no to being framed, sniffed or mixed with other origins'
  scripts (`Content-Security-Policy` without inline script, `nosniff`, no referrer). No CORS
  header is ever sent: other origins' pages cannot read any answer.
- `check_exposure`: a warning when the server listens beyond loopback without a token.

Refusals are in the answer's dialect: an OTLP `google.rpc.Status` under `/v1/`, the read API's
`{"error": ...}` under `/api/`, text (or the login form) for pages.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import URL, Headers, MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from otel_workflow.server.api import api_error
from otel_workflow.server.receiver import content_kind, otlp_error

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "TOKEN_COOKIE",
    "TOKEN_ENV",
    "ASGIApp",
    "LoopbackHosts",
    "SecurityHeaders",
    "TokenAuth",
    "bearer_matches",
    "check_exposure",
    "host_name",
    "is_loopback",
    "set_token_cookie",
]

logger = logging.getLogger("otel_workflow")

#: The environment variable the CLI reads the bearer token from (a token on the command line shows in `ps`).
TOKEN_ENV: Final = "OTEL_WORKFLOW_TOKEN"

#: The cookie a browser holds the token in (HttpOnly, SameSite=Strict: scripts and other sites never see it).
TOKEN_COOKIE: Final = "otel_workflow_token"

#: Scripts and styles from this server only, never inline; nothing may frame the pages.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

_OPEN_PATHS: Final = frozenset({"/healthz", "/login"})
_OPEN_PREFIX: Final = "/static/"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
#: An ASGI application (what `create_app` returns, and what the middlewares wrap).
ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def _is_page(path: str) -> bool:
    return not path.startswith(("/v1/", "/api/")) and path != "/healthz"


def _refusal(scope: _Scope, headers: Headers, status: int, message: str) -> Response:
    """The error answer of the route asked for: OTLP's under `/v1/`, the read API's under `/api/`, text for
    pages."""
    path = str(scope.get("path", ""))
    if path.startswith("/v1/"):
        return otlp_error(status, message, content_kind(headers.get("content-type")))
    if not _is_page(path):
        return api_error(status, message)
    return PlainTextResponse(message + "\n", status)


def set_token_cookie(response: Response, token: str) -> None:
    """Give the browser the token as a cookie only this server's requests carry."""
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")


#: The answer to a page asked for without the token: the login form (a `Response` made per request).
LoginPage = Callable[[], Response]


class TokenAuth:
    """Asks every request but `/healthz`, `/login` and `/static/` for the token, as a bearer token or the
    cookie; `login_page` answers pages asked for without it."""

    def __init__(self, app: ASGIApp, token: str, login_page: LoginPage | None = None) -> None:
        self._app = app
        self._token = token.encode("utf-8")
        self._login_page = login_page

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path in _OPEN_PATHS or path.startswith(_OPEN_PREFIX):
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookie = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
        if bearer_matches(headers.get("authorization", ""), self._token) or self._matches(cookie):
            await self._app(scope, receive, send)
            return
        url = URL(scope=scope)
        if _is_page(path) and scope.get("method") in ("GET", "HEAD") and "token" in url.query:
            link = self._token_link(url)
            if link is not None:
                await link(scope, receive, send)
                return
        if _is_page(path) and self._login_page is not None:
            response = self._login_page()
            response.status_code = 401
        else:
            message = "missing or wrong token (Authorization: Bearer <token>)"
            response = _refusal(scope, headers, 401, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="otel-workflow"'
        await response(scope, receive, send)

    def _token_link(self, url: URL) -> Response | None:
        """`?token=` with the right token: the same page without it, and the cookie."""
        pairs = parse_qsl(url.query, keep_blank_values=True)
        if not any(name == "token" and self._matches(value) for name, value in pairs):
            return None
        rest = urlencode([(name, value) for name, value in pairs if name != "token"])
        response = RedirectResponse(url.path + (f"?{rest}" if rest else ""), 303)
        set_token_cookie(response, self._token.decode("utf-8"))
        return response


def _cookie(header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header (None if absent)."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


class SecurityHeaders:
    """Adds the headers every answer carries: the CSP, `nosniff`, no framing, no referrer, same-origin
    resources."""

    _HEADERS: Final = (
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self._HEADERS:
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self._app(scope, receive, send_with_headers)


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


def bearer_matches(authorization: str, token: bytes) -> bool:
    """Whether an `Authorization` value (HTTP header or gRPC metadata) is `Bearer <token>`; constant time."""
    scheme, _, credentials = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode("utf-8"), token)


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
