"""Collector mode: an OTLP/HTTP receiver that stores traces in DuckDB, and the read API over HTTP.

DuckDB lets one process write a file at a time. The OpenTelemetry answer to
many processes (gunicorn or Celery workers, services in other languages) is a
collector: every process exports OTLP, one process stores. `serve()` is that
process for DuckDB:

- `POST /v1/traces` takes an `ExportTraceServiceRequest` as
  `application/x-protobuf` or `application/json` (OTLP/JSON), plain or with
  `Content-Encoding: gzip` (or `deflate`), and answers as OTLP/HTTP specifies:
  200 with an `ExportTraceServiceResponse` in the request's encoding (with
  `partial_success` counting spans rejected for invalid ids), 400 for a body
  that does not decode, 413 past the body limits, 415 for another content type
  or encoding, 429 when all ingest slots stay busy and 503 when the store's
  write queue is filling up, both with `Retry-After`, so that exporters back
  off and retry instead of losing spans. Error bodies are `google.rpc.Status`.
- Decoded spans go to `TraceStore.submit_spans`, the call the in-process
  exporter makes, so the derived executions, steps and logs are the same.
  Retried requests do not duplicate rows: the store skips spans it already has.
- `GET /api/executions`, `/api/executions/{id}`, `/api/executions/{id}/logs`,
  `/api/logs`, `/api/stats`, `/api/status` and `GET|POST /api/sql` (the SQL
  sandbox of `readonly`, time- and row-limited) serve the read side as JSON;
  `GET /healthz` says it is up.

Safety: the body is limited on the wire and again after decompression, which
is done incrementally with a cap, so a gzip bomb costs at most the cap; at
most `max_concurrent_ingest` requests are read and decoded at once, and the
server accepts at most `max_connections` at a time; a body must arrive within
`body_timeout_s`; it binds to 127.0.0.1 unless told otherwise; with a token,
every route but `/healthz` needs `Authorization: Bearer <token>`.

The HTTP layer is Starlette on uvicorn (the `collector` extra): well kept and
widely deployed, uvicorn bounds concurrent connections (`limit_concurrency`)
and shuts down gracefully, and Starlette streams request bodies, which the
body limits need. OTLP/gRPC (4317) is not offered: it would need grpcio, a
large native dependency, for a second way to send the same data, and every
OpenTelemetry SDK can export OTLP/HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any, Final

import duckdb
import orjson

try:
    import anyio
    import anyio.to_thread
    import uvicorn
    from starlette.applications import Starlette
    from starlette.datastructures import Headers
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the collector (otel-workflow serve) needs Starlette and uvicorn: "
        "pip install 'otel-workflow[collector]'"
    ) from _exc

from otel_workflow.model.errors import (
    AmbiguousExecutionId,
    ExecutionLookupError,
    QueryLimitExceeded,
    ReadOnlyViolation,
    SandboxRefusal,
    StoreError,
)
from otel_workflow.otlp.decode import (
    DecodeError,
    decode_json,
    decode_protobuf,
    response_json,
    response_protobuf,
)
from otel_workflow.query import readonly
from otel_workflow.sdk.setup import default_db_path
from otel_workflow.storage.store import TraceStore

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "Collector",
    "ReceiverLimits",
    "create_app",
    "serve",
]

logger = logging.getLogger("otel_workflow")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 4318  # the OTLP/HTTP port
#: The environment variable the CLI reads the bearer token from (a token on the command line shows in `ps`).
TOKEN_ENV: Final = "OTEL_WORKFLOW_TOKEN"

_MIB: Final = 1024 * 1024
_PROTOBUF: Final = "protobuf"
_JSON: Final = "json"
_CONTENT_TYPES: Final = {
    "application/x-protobuf": _PROTOBUF,
    "application/protobuf": _PROTOBUF,
    "application/json": _JSON,
}
# Content-Encoding -> zlib window bits (31: gzip wrapper, 15: zlib wrapper, which is what HTTP "deflate" is).
_ENCODINGS: Final = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_IDENTITY: Final = ("", "identity")
_OPEN_PATHS: Final = frozenset({"/healthz"})
_MAX_SQL_BODY: Final = 256 * 1024

# google.rpc.Code values for the error bodies (the Status message OTLP/HTTP error responses carry).
_RPC_CODES: Final = {400: 3, 401: 16, 404: 12, 405: 12, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """The receiver's bounds; each one keeps a misbehaving or hostile client from hurting the rest.

    - `max_body_bytes`: a request body as sent (compressed or not); larger gets 413.
    - `max_decompressed_bytes`: a body after gzip/deflate; larger gets 413 (gzip bombs stop here).
    - `max_concurrent_ingest`: requests read and decoded at once, which bounds memory to about
      this many bodies; `ingest_wait_s`: how long a request waits for a slot before 429.
    - `max_connections`: open connections (the new one included) and requests in progress at
      which uvicorn answers 503 (its `limit_concurrency`).
    - `body_timeout_s`: a body must arrive within this time (slow senders get 408).
    - `queue_high_water`: ingest answers 503 once the store's write queue holds this fraction
      of its bound, well before the store itself would have to drop spans.
    - `retry_after_s`: the `Retry-After` of 429 and 503 answers.
    - `max_queued_spans`: the bound of the write queue of the store that `serve()` opens.
    - `sql_rows`, `max_sql_rows`: the rows `/api/sql` returns without a `limit`, and the largest
      `limit` it takes; `max_sql_bytes`: about the most Arrow data of one answer (wide rows stop
      the page earlier; the answer says `truncated`).
    - `sql_timeout_s`: the time limit of one `/api/sql` query; `sql_memory_limit`: the memory
      limit of its DuckDB instance, for the store that `serve()` opens (see `readonly`).
    - `max_page`: the largest `limit` of the listing routes.
    """

    max_body_bytes: int = 20 * _MIB
    max_decompressed_bytes: int = 20 * _MIB
    max_concurrent_ingest: int = 4
    ingest_wait_s: float = 2.0
    max_connections: int = 128
    body_timeout_s: float = 30.0
    queue_high_water: float = 0.5
    retry_after_s: int = 1
    max_queued_spans: int = 200_000
    sql_rows: int = readonly.HTTP_ROWS
    max_sql_rows: int = readonly.HTTP_MAX_ROWS
    max_sql_bytes: int = 16 * _MIB
    sql_timeout_s: float = readonly.HTTP_TIMEOUT_S
    sql_memory_limit: str = readonly.SqlLimits().memory_limit
    max_page: int = 10_000


# -- responses -------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _rpc_status_protobuf(code: int, message: str) -> bytes:
    # google.rpc.Status {int32 code = 1; string message = 2;}, written by hand: two fields do not justify
    # a dependency on googleapis-common-protos.
    encoded = message.encode("utf-8")
    out = b""
    if code:
        out += b"\x08" + _varint(code)
    if encoded:
        out += b"\x12" + _varint(len(encoded)) + encoded
    return out


def _otlp_error(status: int, message: str, kind: str | None, retry_after: int | None = None) -> Response:
    """An OTLP/HTTP error answer: a `google.rpc.Status` in the request's encoding (JSON if unknown)."""
    code = _RPC_CODES.get(status, 2)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if kind == _PROTOBUF:
        return Response(
            _rpc_status_protobuf(code, message), status, headers, media_type="application/x-protobuf"
        )
    body = json.dumps({"code": code, "message": message}).encode()
    return Response(body, status, headers, media_type="application/json")


def _default(value: Any) -> Any:
    """What orjson cannot serialise by itself (DuckDB hands back these types)."""
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def _dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        # Beyond orjson: integers over 64 bits (HUGEINT) and the like. The standard library takes them.
        return json.dumps(data, default=_stdlib_default, ensure_ascii=False).encode("utf-8")


def _stdlib_default(value: Any) -> Any:
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    return _default(value)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(data), status, headers, media_type="application/json")


def _api_error(status: int, message: str, **extra: Any) -> Response:
    return _json({"error": message, **extra}, status)


# -- authentication --------------------------------------------------------------------------------

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class _BearerAuth:
    """Asks every request but `/healthz` for `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: _ASGIApp, token: str) -> None:
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
        if str(scope.get("path", "")).startswith("/v1/"):
            response = _otlp_error(401, message, _content_kind(headers.get("content-type")))
        else:
            response = _api_error(401, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="otel-workflow"'
        await response(scope, receive, send)


class _LoopbackHosts:
    """Bound to loopback, answers only requests addressed to a loopback name (their Host header).

    A web page can make a browser send requests to 127.0.0.1, and with DNS rebinding read the
    answers too, under a name of the page's own choosing: the Host header then names the page's
    domain, which this refuses. Clients on the machine address it as 127.0.0.1, ::1 or localhost.
    """

    def __init__(self, app: _ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host = _host_name(headers.get("host", ""))
            if host and not _is_loopback(host):
                message = f"this collector listens on loopback only; Host {host!r} is not a loopback name"
                if str(scope.get("path", "")).startswith("/v1/"):
                    response = _otlp_error(400, message, _content_kind(headers.get("content-type")))
                else:
                    response = _api_error(400, message)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:4318` -> `::1`, `localhost:80` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


# -- ingest ----------------------------------------------------------------------------------------


def _content_kind(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())


class _TooLarge(Exception):
    """The body passed a size limit (HTTP 413)."""


class _Inflater:
    """Decompresses a body as it arrives and stops as soon as the output passes `limit`.

    `decompress(data, max_length)` never produces more than it is asked for, so a
    gzip bomb costs at most `limit` bytes of memory. Several gzip members one after
    another (what concatenated `.gz` files are) are decompressed in turn.
    """

    def __init__(self, wbits: int, limit: int) -> None:
        self._wbits = wbits
        self._limit = limit
        self._inflater = zlib.decompressobj(wbits=wbits)
        self._out = bytearray()

    def feed(self, data: bytes) -> None:
        while data:
            self._out += self._inflater.decompress(data, self._limit - len(self._out) + 1)
            if len(self._out) > self._limit:
                raise _TooLarge
            if self._inflater.eof:
                data = self._inflater.unused_data
                if data:
                    self._inflater = zlib.decompressobj(wbits=self._wbits)
            else:
                data = self._inflater.unconsumed_tail

    def finish(self) -> bytes:
        # Output zlib still holds back (at most its window: `feed` has passed it all the input).
        self._out += self._inflater.flush()
        if len(self._out) > self._limit:
            raise _TooLarge
        if not self._inflater.eof:
            raise zlib.error("the compressed body ends before its end marker")
        return bytes(self._out)


class _Counters:
    """What the receiver did, for `/api/status`; updated from worker threads, hence the lock."""

    NAMES: Final = ("accepted_spans", "rejected_spans", "requests", "busy", "saturated", "invalid")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._values[name] += count

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class _Receiver:
    """The routes, around one store. Blocking work (decoding, DuckDB) runs in worker threads."""

    def __init__(self, store: TraceStore, limits: ReceiverLimits) -> None:
        self.store = store
        self.limits = limits
        bound = _queue_bound(store, limits.max_queued_spans)
        self.queue_bound = bound
        self.high_water = max(1, int(bound * limits.queue_high_water))
        # Checking the queue and submitting happen under one lock, so concurrent requests cannot all
        # see room and together overfill it.
        self._submit_lock = threading.Lock()
        self._slots: anyio.Semaphore | None = None
        self.counters = _Counters()

    # -- /v1/traces

    async def traces(self, request: Request) -> Response:
        kind = _content_kind(request.headers.get("content-type"))
        if kind is None:
            self.counters.add("invalid", 1)
            return _otlp_error(
                415,
                "unsupported content type: send application/x-protobuf or application/json "
                f"(got {request.headers.get('content-type', 'none')!r})",
                None,
            )
        coding = request.headers.get("content-encoding", "").strip().lower()
        if coding not in _IDENTITY and coding not in _ENCODINGS:
            self.counters.add("invalid", 1)
            return _otlp_error(
                415, f"unsupported content encoding {coding!r}: use gzip, deflate or none", kind
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.limits.max_body_bytes
            except ValueError:
                return _otlp_error(400, "the Content-Length header is not a number", kind)
            if too_large:
                self.counters.add("invalid", 1)
                return self._too_large(kind)
        # Refuse early, before reading the body, when the writer is behind anyway.
        if self.store.queued >= self.high_water:
            return self._saturated(kind)
        if self._slots is None:
            self._slots = anyio.Semaphore(self.limits.max_concurrent_ingest)
        slots = self._slots
        acquired = False
        try:
            slots.acquire_nowait()
            acquired = True
        except anyio.WouldBlock:
            with anyio.move_on_after(self.limits.ingest_wait_s):
                await slots.acquire()
                acquired = True
        if not acquired:
            self.counters.add("busy", 1)
            return _otlp_error(
                429, "the collector is busy with other requests; retry later", kind, self.limits.retry_after_s
            )
        try:
            return await self._ingest(request, kind, coding)
        finally:
            slots.release()

    async def _ingest(self, request: Request, kind: str, coding: str) -> Response:
        try:
            with anyio.fail_after(self.limits.body_timeout_s):
                body = await self._read_body(request, coding)
        except TimeoutError:
            self.counters.add("invalid", 1)
            return _otlp_error(408, f"the body did not arrive within {self.limits.body_timeout_s:g}s", kind)
        except _TooLarge:
            self.counters.add("invalid", 1)
            return self._too_large(kind)
        except (zlib.error, EOFError) as exc:
            self.counters.add("invalid", 1)
            return _otlp_error(400, f"the body does not decompress as {coding}: {exc}", kind)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening for the answer
        return await anyio.to_thread.run_sync(self._store_body, body, kind)

    async def _read_body(self, request: Request, coding: str) -> bytes:
        limit = self.limits.max_body_bytes
        received = 0
        if coding in _IDENTITY:
            chunks = bytearray()
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise _TooLarge
                chunks += chunk
            return bytes(chunks)
        inflater = _Inflater(_ENCODINGS[coding], self.limits.max_decompressed_bytes)
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _TooLarge
            inflater.feed(chunk)
        return inflater.finish()

    def _store_body(self, body: bytes, kind: str) -> Response:
        """In a worker thread: decode, check the queue, submit; the OTLP answer."""
        counters = self.counters
        counters.add("requests", 1)
        try:
            decoded = decode_protobuf(body) if kind == _PROTOBUF else decode_json(body)
        except DecodeError as exc:
            counters.add("invalid", 1)
            return _otlp_error(400, str(exc), kind)
        spans = decoded.spans
        if len(spans) > self.high_water:
            counters.add("invalid", 1)
            return _otlp_error(
                413,
                f"{len(spans)} spans in one request is more than this collector queues at once "
                f"({self.high_water}); send smaller batches",
                kind,
            )
        with self._submit_lock:
            if spans and self.store.queued + len(spans) > self.high_water:
                return self._saturated(kind)
            try:
                accepted = self.store.submit_spans(spans) if spans else True
            except StoreError as exc:
                return _otlp_error(
                    503, f"the store is not accepting spans: {exc}", kind, self.limits.retry_after_s
                )
        if not accepted:
            # Only at shutdown or past the store's own bound. The client retries the whole request; the
            # spans that were queued are not stored twice (the store skips spans it already has).
            return self._saturated(kind)
        counters.add("accepted_spans", len(spans))
        counters.add("rejected_spans", decoded.rejected)
        if kind == _PROTOBUF:
            payload = response_protobuf(decoded.rejected, decoded.error_message)
            return Response(payload, 200, media_type="application/x-protobuf")
        return _json(response_json(decoded.rejected, decoded.error_message))

    def _saturated(self, kind: str) -> Response:
        self.counters.add("saturated", 1)
        return _otlp_error(
            503,
            "the collector's write queue is full; retry later",
            kind,
            self.limits.retry_after_s,
        )

    def _too_large(self, kind: str) -> Response:
        return _otlp_error(
            413,
            f"the body is larger than the limit ({self.limits.max_body_bytes} bytes as sent, "
            f"{self.limits.max_decompressed_bytes} decompressed); send smaller batches",
            kind,
        )

    async def not_traces(self, request: Request) -> Response:
        return _otlp_error(
            404,
            f"this collector stores traces only: {request.url.path} is not served "
            "(set OTEL_METRICS_EXPORTER=none and OTEL_LOGS_EXPORTER=none, or point only "
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT here)",
            _content_kind(request.headers.get("content-type")),
        )

    # -- read API

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def status(self, request: Request) -> Response:
        counts = self.counters.snapshot()
        return _json(
            {
                "database": self.store.path,
                "queued": self.store.queued,
                "queue_bound": self.queue_bound,
                "queue_high_water": self.high_water,
                "dropped_spans": self.store.dropped_spans,
                "dropped_by_reason": self.store.dropped_by_reason,
                "accepted_spans": counts["accepted_spans"],
                "rejected_spans": counts["rejected_spans"],
                "requests": counts["requests"],
                "refused": {
                    "busy": counts["busy"],
                    "saturated": counts["saturated"],
                    "invalid": counts["invalid"],
                },
            }
        )

    async def executions(self, request: Request) -> Response:
        params = request.query_params
        call = functools.partial(
            self.store.executions,
            status=params.getlist("status") or None,
            workflow_id=params.getlist("workflow_id") or None,
            since=params.get("since"),
            until=params.get("until"),
            triggered_by=params.get("triggered_by"),
            error_contains=params.get("error_contains"),
            limit=self._limit(params.get("limit"), 50),
            offset=self._int(params.get("offset"), 0, "offset"),
        )
        return await self._read(call, "executions")

    async def execution(self, request: Request) -> Response:
        return await self._read(functools.partial(self.store.execution, request.path_params["execution_id"]))

    async def logs(self, request: Request) -> Response:
        params = request.query_params
        execution_id = request.path_params.get("execution_id") or params.get("execution_id")
        call = functools.partial(
            self.store.logs,
            execution_id,
            level=params.getlist("level") or None,
            since=params.get("since"),
            until=params.get("until"),
            limit=self._limit(params.get("limit"), None),
        )
        return await self._read(call, "logs")

    async def stats(self, request: Request) -> Response:
        params = request.query_params
        options: dict[str, Any] = {
            "workflow_id": params.get("workflow_id"),
            "since": params.get("since"),
            "until": params.get("until"),
            "sort": params.get("sort", "p95"),
        }

        def both() -> dict[str, Any]:
            return {
                "steps": self.store.step_stats(**options),
                "workflows": self.store.workflow_stats(**options),
            }

        return await self._read(both)

    async def sql(self, request: Request) -> Response:
        limit_text = request.query_params.get("limit")
        if request.method == "GET":
            query = request.query_params.get("q") or request.query_params.get("query")
        else:
            raw = bytearray()
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > _MAX_SQL_BODY:
                    return _api_error(413, f"the query is longer than {_MAX_SQL_BODY} bytes")
            query = bytes(raw).decode("utf-8", "replace")
            if _content_kind(request.headers.get("content-type")) == _JSON:
                try:
                    document = json.loads(query)
                except ValueError:
                    return _api_error(400, 'the body is not JSON: send {"query": "SELECT ...", "limit": 100}')
                if not isinstance(document, dict):
                    return _api_error(400, 'send {"query": "SELECT ...", "limit": 100}')
                query = document.get("query")
                if document.get("limit") is not None:
                    limit_text = str(document["limit"])
        if not isinstance(query, str) or not query.strip():
            return _api_error(400, "give the query: GET /api/sql?q=SELECT... or POST it")
        default = min(self.limits.sql_rows, self.limits.max_sql_rows)
        limit = self._limit(limit_text, default, cap=self.limits.max_sql_rows)
        assert limit is not None
        return await self._read(functools.partial(_run_sql, self.store, query, limit, self.limits))

    def _limit(self, text: str | None, default: int | None, cap: int | None = None) -> int | None:
        if text is None or text == "":
            return default
        value = self._int(text, 0, "limit")
        top = self.limits.max_page if cap is None else cap
        if not 0 <= value <= top:
            raise _BadRequest(f"limit must be between 0 and {top}")
        return value

    @staticmethod
    def _int(text: str | None, default: int, name: str) -> int:
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise _BadRequest(f"{name} must be a whole number, not {text!r}") from None
        if value < 0:
            raise _BadRequest(f"{name} must not be negative")
        return value

    async def _read(self, call: Callable[[], Any], key: str | None = None) -> Response:
        try:
            result = await anyio.to_thread.run_sync(call)
        except AmbiguousExecutionId as exc:
            return _api_error(409, str(exc), candidates=list(getattr(exc, "candidates", [])))
        except ExecutionLookupError as exc:
            return _api_error(404, str(exc))
        except SandboxRefusal as exc:
            return _api_error(403, str(exc), kind="refused")
        except ReadOnlyViolation as exc:
            return _api_error(400, str(exc), kind="refused")
        except QueryLimitExceeded as exc:
            return _api_error(422, str(exc), kind="limit")
        except StoreError as exc:
            return _api_error(503, str(exc))
        except (duckdb.Error, ValueError) as exc:
            return _api_error(400, str(exc))
        return _json(result if key is None else {key: result})


class _BadRequest(Exception):
    """A query parameter is invalid (HTTP 400)."""


def _run_sql(store: TraceStore, query: str, limit: int, limits: ReceiverLimits) -> dict[str, Any]:
    """One statement in the SQL sandbox; at most `limit` rows, `truncated` says whether there were more."""
    page = store.read_sql_page(
        query, max_rows=limit, max_bytes=limits.max_sql_bytes, timeout_s=limits.sql_timeout_s
    )
    table = page.table
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return {
        "columns": table.column_names,
        "types": [str(field.type) for field in table.schema],
        "rows": [list(row) for row in zip(*columns, strict=True)],
        "row_count": table.num_rows,
        "truncated": page.truncated,
        "limit": limit,
    }


def _queue_bound(store: TraceStore, fallback: int) -> int:
    """The store's write-queue bound (what `max_queued_spans` set)."""
    bound = getattr(store, "max_queued_spans", None)
    if isinstance(bound, int) and bound > 0:
        return bound
    writer = getattr(store, "_writer", None)
    bound = getattr(writer, "_max_queued", None)
    return bound if isinstance(bound, int) and bound > 0 else fallback


def create_app(
    store: TraceStore,
    *,
    token: str | None = None,
    limits: ReceiverLimits | None = None,
    loopback_only: bool = False,
) -> _ASGIApp:
    """The ASGI application: OTLP/HTTP ingest into `store` and the read API over it.

    With `token`, every route but `/healthz` needs `Authorization: Bearer <token>`.
    With `loopback_only` (what `serve()` and `Collector` set when bound to a
    loopback address), requests must be addressed to a loopback name, which
    keeps web pages from reading it through DNS rebinding.
    The caller owns the store (and closes it). Serve the app with `Collector`
    (a background thread) or `serve()`; any ASGI server runs it, but only
    uvicorn's `limit_concurrency` bounds connections as `serve()` does.
    """
    receiver = _Receiver(store, limits or ReceiverLimits())

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _api_error(400, str(exc))

    app = Starlette(
        routes=[
            Route("/v1/traces", receiver.traces, methods=["POST"]),
            Route("/v1/metrics", receiver.not_traces, methods=["POST"]),
            Route("/v1/logs", receiver.not_traces, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
            Route("/api/status", receiver.status, methods=["GET"]),
            Route("/api/executions", receiver.executions, methods=["GET"]),
            Route("/api/executions/{execution_id}", receiver.execution, methods=["GET"]),
            Route("/api/executions/{execution_id}/logs", receiver.logs, methods=["GET"]),
            Route("/api/logs", receiver.logs, methods=["GET"]),
            Route("/api/stats", receiver.stats, methods=["GET"]),
            Route("/api/sql", receiver.sql, methods=["GET", "POST"]),
        ],
        exception_handlers={_BadRequest: bad_request},
    )
    app.state.receiver = receiver
    guarded: _ASGIApp = _BearerAuth(app, token) if token else app
    return _LoopbackHosts(guarded) if loopback_only else guarded


# -- running ---------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket; bound here (not by uvicorn) so that port 0 gives its real port at once."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_exposure(host: str, token: str | None) -> None:
    if not _is_loopback(host) and not token:
        logger.warning(
            "otel-workflow collector listens on %s without a token: anyone who can reach it can write "
            "spans and read every stored trace. Set a token (--token or $%s), or bind to 127.0.0.1.",
            host,
            TOKEN_ENV,
        )


def _uvicorn_config(app: _ASGIApp, limits: ReceiverLimits, log_level: str, console: bool) -> uvicorn.Config:
    kwargs: dict[str, Any] = {}
    if not console:
        kwargs["log_config"] = None  # embedded: leave the host application's logging alone
    return uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        log_level=log_level,
        access_log=False,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
        **kwargs,
    )


class Collector:
    """The receiver and read API serving `store` from a background thread (tests, embedding).

    `Collector(store, port=0).start()` binds a free port (see `.url`); `stop()`
    shuts the server down gracefully. The store stays open: its owner closes it.
    Use as a context manager to start and stop.
    """

    def __init__(
        self,
        store: TraceStore,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        limits: ReceiverLimits | None = None,
        log_level: str = "warning",
    ) -> None:
        self.store = store
        self.limits = limits or ReceiverLimits()
        _check_exposure(host, token)
        self.app = create_app(store, token=token, limits=self.limits, loopback_only=_is_loopback(host))
        self._socket = _bind(host, port)
        self.url = _url(self._socket)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.limits, log_level, console=False))
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> Collector:
        """Start serving; returns once the server accepts requests."""
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="otel-workflow-collector",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the collector did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Finish the requests in progress (bounded) and stop. Idempotent."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    db_path: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    limits: ReceiverLimits | None = None,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the collector until SIGINT or SIGTERM: OTLP/HTTP in, DuckDB at `db_path` out, read API over it.

    `db_path` defaults to `$OTEL_WORKFLOW_DB` or `otel_workflow.duckdb`. Binds
    `host:port` (127.0.0.1:4318; port 0 picks a free one); `on_ready(url)` is
    called once the port listens (by default a line on stderr says where).
    On exit, what is queued is written and the database released.
    """
    limits = limits or ReceiverLimits()
    store = TraceStore(
        db_path or default_db_path(),
        max_queued_spans=limits.max_queued_spans,
        sql_limits=readonly.SqlLimits(timeout_s=limits.sql_timeout_s, memory_limit=limits.sql_memory_limit),
    )
    try:
        _check_exposure(host, token)
        sock = _bind(host, port)
        with contextlib.closing(sock), _sigterm_as_exit():
            server = uvicorn.Server(
                _uvicorn_config(
                    create_app(store, token=token, limits=limits), limits, log_level, console=True
                )
            )
            url = _url(sock)
            if on_ready is not None:
                on_ready(url)
            else:
                print(
                    f"otel-workflow collector: OTLP/HTTP at {url}/v1/traces, read API at {url}/api, "
                    f"database {store.path}",
                    file=sys.stderr,
                    flush=True,
                )
            with contextlib.suppress(KeyboardInterrupt, _Exit):
                server.run(sockets=[sock])
    finally:
        store.close()


class _Exit(BaseException):
    """SIGTERM arrived: leave `serve()` through its `finally`, which writes what is queued."""


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # uvicorn handles SIGTERM while it runs, then re-raises it with the previous handler in place. The
    # default handler would end the process there, before the queued spans are written.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Exit

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
