"""The web UI's routes: the pages, their static files and the login form.

Every page is the same `index.html`; its scripts (vanilla JavaScript modules in `static/`, no build
step) read the path and draw the page from `/api/*` JSON, inserting span text as text only. The
files are package data, read once at start into memory: a request names a file of that fixed set,
never a path on the machine. `ETag` and `Cache-Control: no-cache` let the browser keep them and
ask again cheaply, so an upgraded package is picked up at the next load.

The login form (`GET|POST /login`) is for a server started with a token: a right token sets the
cookie `security.TOKEN_COOKIE` and goes back to the page asked for.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from importlib import resources
from typing import Final
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from otel_workflow.server.security import set_token_cookie

__all__ = ["PAGE_PATHS", "StaticFile", "UiPages", "load_static"]

#: The URL of every page (Starlette route paths); all answer `index.html`.
PAGE_PATHS: Final = ("/", "/executions/{execution_id}", "/traces/{trace_id}", "/stats", "/sql")

_MEDIA_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

# A login form is a few hundred bytes; anything longer is not one.
_MAX_LOGIN_BODY: Final = 8 * 1024


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of `static/`: its bytes, media type and entity tag."""

    body: bytes
    media_type: str
    etag: str

    def response(self, request: Request, status: int = 200) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}
        if status == 200 and self.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(self.body, status, headers, media_type=self.media_type)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def load_static() -> dict[str, StaticFile]:
    """The files of `static/` by name (the package data; one level, known suffixes only)."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _MEDIA_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[entry.name] = StaticFile(body, _MEDIA_TYPES[suffix], etag)
    return files


def safe_next(target: str | None) -> str:
    """`target` if it is a path on this server (`/...`, not `//host` or `/\\host`), else `/`."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target:
        return target
    return "/"


class UiPages:
    """The page, static-file and login routes; `token` is the server's token (None: no login)."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None
        self.files = load_static()
        self.index = self.files["index.html"]
        self.login_page = self.files["login.html"]

    def routes(self) -> list[Route]:
        return [
            *(Route(path, self.page, methods=["GET", "HEAD"]) for path in PAGE_PATHS),
            Route("/static/{name}", self.static, methods=["GET", "HEAD"]),
            Route("/login", self.login_form, methods=["GET", "HEAD"]),
            Route("/login", self.login, methods=["POST"]),
        ]

    def login_answer(self) -> Response:
        """The login form, as `security.TokenAuth` answers a page asked for without the token."""
        return Response(self.login_page.body, 401, {"Cache-Control": "no-store"}, self.login_page.media_type)

    async def page(self, request: Request) -> Response:
        return self.index.response(request)

    async def static(self, request: Request) -> Response:
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response("no such file\n", 404, media_type="text/plain; charset=utf-8")
        return found.response(request)

    async def login_form(self, request: Request) -> Response:
        if self._token is None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return self.login_page.response(request)

    async def login(self, request: Request) -> Response:
        """A form post of `token` and `next`: the cookie and back to `next`, or the form again."""
        if self._token is None:
            return RedirectResponse("/", 303)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > _MAX_LOGIN_BODY:
                return Response("the login form is too long\n", 413, media_type="text/plain; charset=utf-8")
        form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=4)
        given = (form.get("token") or [""])[0].strip().encode("utf-8")
        target = safe_next((form.get("next") or ["/"])[0])
        if not hmac.compare_digest(given, self._token):
            return RedirectResponse("/login?" + urlencode({"next": target, "failed": "1"}), 303)
        response = RedirectResponse(target, 303)
        set_token_cookie(response, self._token.decode("utf-8"))
        return response
