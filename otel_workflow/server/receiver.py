"""The OTLP/HTTP receiver: `POST /v1/traces` into `TraceStore.submit_spans` and `POST /v1/logs` into
`TraceStore.submit_logs`, with their bounds, on one path (the signals differ only in decoding).

It takes an `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`) as `application/x-protobuf` or
`application/json` (OTLP/JSON), plain or with `Content-Encoding: gzip` (or
`deflate`), and answers as OTLP/HTTP specifies: 200 with an
`ExportTraceServiceResponse` in the request's encoding (with `partial_success`
counting spans rejected for invalid ids), 400 for a body that does not decode,
413 past the body limits, 415 for another content type or encoding, 429 when
all ingest slots stay busy and 503 when the store's write queue is filling up,
both with `Retry-After`, so that exporters back off and retry instead of losing
spans. Error bodies are `google.rpc.Status` (`otlp_error`).

Decoded spans go to `TraceStore.submit_spans`, the call the in-process exporter
makes, so the derived executions, steps and logs are the same. Retried requests
do not duplicate rows: the store skips spans it already has.

The body is limited on the wire and again after decompression, which is done
incrementally with a cap, so a gzip bomb costs at most the cap; at most
`max_concurrent_ingest` requests are read and decoded at once; a body must
arrive within `body_timeout_s`.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.to_thread
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from otel_workflow.model.errors import StoreError
from otel_workflow.otlp.decode import DecodeError, decode_json, decode_protobuf
from otel_workflow.otlp.encode import (
    export_response_json,
    export_response_protobuf,
    rpc_status_json,
    rpc_status_protobuf,
)
from otel_workflow.otlp.logs import decode_logs_json, decode_logs_protobuf
from otel_workflow.server.limits import ReceiverLimits
from otel_workflow.storage.store import TraceStore

__all__ = ["JSON", "PROTOBUF", "Receiver", "content_kind", "otlp_error"]

#: The two encodings of OTLP/HTTP, as `content_kind` names them.
PROTOBUF: Final = "protobuf"
JSON: Final = "json"
_CONTENT_TYPES: Final = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}
# Content-Encoding -> zlib window bits (31: gzip wrapper, 15: zlib wrapper, which is what HTTP "deflate" is).
_ENCODINGS: Final = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_IDENTITY: Final = ("", "identity")

# google.rpc.Code values for the error bodies (the Status message OTLP/HTTP error responses carry).
_RPC_CODES: Final = {400: 3, 401: 16, 404: 12, 405: 12, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}


def content_kind(content_type: str | None) -> str | None:
    """`PROTOBUF` or `JSON` for a Content-Type header of OTLP/HTTP; None for anything else."""
    if not content_type:
        return None
    return _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def otlp_error(status: int, message: str, kind: str | None, retry_after: int | None = None) -> Response:
    """An OTLP/HTTP error answer: a `google.rpc.Status` in the request's encoding (JSON if unknown)."""
    code = _RPC_CODES.get(status, 2)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if kind == PROTOBUF:
        return Response(
            rpc_status_protobuf(code, message), status, headers, media_type="application/x-protobuf"
        )
    body = json.dumps(rpc_status_json(code, message)).encode()
    return Response(body, status, headers, media_type="application/json")


def _export_response(kind: str, rejected: int, error_message: str, rejected_field: str) -> Response:
    """The 200 answer of an export, in the request's encoding, with its partial success."""
    if kind == PROTOBUF:
        return Response(
            export_response_protobuf(rejected, error_message), 200, media_type="application/x-protobuf"
        )
    body = export_response_json(rejected, error_message, rejected_field=rejected_field)
    return Response(orjson.dumps(body), 200, media_type="application/json")


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

    NAMES: Final = (
        "accepted_spans",
        "rejected_spans",
        "accepted_log_records",
        "rejected_log_records",
        "requests",
        "busy",
        "saturated",
        "invalid",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._values[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Receiver:
    """The OTLP routes, around one store. Blocking work (decoding, DuckDB) runs in worker threads."""

    def __init__(self, store: TraceStore, limits: ReceiverLimits) -> None:
        self.store = store
        self.limits = limits
        self.queue_bound = store.max_queued_spans
        self.high_water = max(1, int(self.queue_bound * limits.queue_high_water))
        self.logs_high_water = max(1, int(store.max_queued_logs * limits.queue_high_water))
        # Checking the queue and submitting happen under one lock, so concurrent requests cannot all
        # see room and together overfill it.
        self._submit_lock = threading.Lock()
        self._slots: anyio.Semaphore | None = None
        self.counters = _Counters()

    def routes(self) -> list[Route]:
        """`POST /v1/traces` and `POST /v1/logs`; metrics get a 404 that says why."""
        return [
            Route("/v1/traces", self.traces, methods=["POST"]),
            Route("/v1/logs", self.logs, methods=["POST"]),
            Route("/v1/metrics", self.not_metrics, methods=["POST"]),
        ]

    async def traces(self, request: Request) -> Response:
        return await self._receive(request, self._store_traces, behind=self._spans_behind)

    async def logs(self, request: Request) -> Response:
        return await self._receive(request, self._store_logs, behind=self._logs_behind)

    def _spans_behind(self) -> bool:
        return self.store.queued >= self.high_water

    def _logs_behind(self) -> bool:
        return self.store.queued_logs >= self.logs_high_water

    async def _receive(
        self, request: Request, store_body: Callable[[bytes, str], Response], *, behind: Callable[[], bool]
    ) -> Response:
        """The path every signal shares: content type and encoding, the body limits, back-pressure and
        the ingest slots; then `store_body(body, kind)` in a worker thread."""
        kind = content_kind(request.headers.get("content-type"))
        if kind is None:
            self.counters.add("invalid", 1)
            return otlp_error(
                415,
                "unsupported content type: send application/x-protobuf or application/json "
                f"(got {request.headers.get('content-type', 'none')!r})",
                None,
            )
        coding = request.headers.get("content-encoding", "").strip().lower()
        if coding not in _IDENTITY and coding not in _ENCODINGS:
            self.counters.add("invalid", 1)
            return otlp_error(
                415, f"unsupported content encoding {coding!r}: use gzip, deflate or none", kind
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.limits.max_body_bytes
            except ValueError:
                return otlp_error(400, "the Content-Length header is not a number", kind)
            if too_large:
                self.counters.add("invalid", 1)
                return self._too_large(kind)
        # Refuse early, before reading the body, when the writer is behind anyway.
        if behind():
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
            return otlp_error(
                429, "the collector is busy with other requests; retry later", kind, self.limits.retry_after_s
            )
        try:
            return await self._ingest(request, kind, coding, store_body)
        finally:
            slots.release()

    async def _ingest(
        self, request: Request, kind: str, coding: str, store_body: Callable[[bytes, str], Response]
    ) -> Response:
        try:
            with anyio.fail_after(self.limits.body_timeout_s):
                body = await self._read_body(request, coding)
        except TimeoutError:
            self.counters.add("invalid", 1)
            return otlp_error(408, f"the body did not arrive within {self.limits.body_timeout_s:g}s", kind)
        except _TooLarge:
            self.counters.add("invalid", 1)
            return self._too_large(kind)
        except (zlib.error, EOFError) as exc:
            self.counters.add("invalid", 1)
            return otlp_error(400, f"the body does not decompress as {coding}: {exc}", kind)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening for the answer
        return await anyio.to_thread.run_sync(store_body, body, kind)

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

    def _store_traces(self, body: bytes, kind: str) -> Response:
        """In a worker thread: decode, check the queue, submit; the OTLP answer."""
        counters = self.counters
        counters.add("requests", 1)
        try:
            decoded = decode_protobuf(body) if kind == PROTOBUF else decode_json(body)
        except DecodeError as exc:
            counters.add("invalid", 1)
            return otlp_error(400, str(exc), kind)
        spans = decoded.spans
        if len(spans) > self.high_water:
            counters.add("invalid", 1)
            return otlp_error(
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
                return otlp_error(
                    503, f"the store is not accepting spans: {exc}", kind, self.limits.retry_after_s
                )
        if not accepted:
            # Only at shutdown or past the store's own bound. The client retries the whole request; the
            # spans that were queued are not stored twice (the store skips spans it already has).
            return self._saturated(kind)
        counters.add("accepted_spans", len(spans))
        counters.add("rejected_spans", decoded.rejected)
        return _export_response(kind, decoded.rejected, decoded.error_message, "rejectedSpans")

    def _store_logs(self, body: bytes, kind: str) -> Response:
        """In a worker thread: decode log records, check the log queue, submit; the OTLP answer."""
        counters = self.counters
        counters.add("requests", 1)
        try:
            decoded = decode_logs_protobuf(body) if kind == PROTOBUF else decode_logs_json(body)
        except DecodeError as exc:
            counters.add("invalid", 1)
            return otlp_error(400, str(exc), kind)
        rows = decoded.rows
        bound = self.logs_high_water
        if rows.count > bound:
            counters.add("invalid", 1)
            return otlp_error(
                413,
                f"{rows.count} log records in one request is more than this collector queues at once "
                f"({bound}); send smaller batches",
                kind,
            )
        with self._submit_lock:
            if rows.count and self.store.queued_logs + rows.count > bound:
                return self._saturated(kind)
            try:
                accepted = self.store.submit_logs(rows)
            except StoreError as exc:
                return otlp_error(
                    503, f"the store is not accepting log records: {exc}", kind, self.limits.retry_after_s
                )
        if not accepted:
            return self._saturated(kind)
        counters.add("accepted_log_records", rows.count)
        counters.add("rejected_log_records", decoded.rejected)
        return _export_response(kind, decoded.rejected, decoded.error_message, "rejectedLogRecords")

    def _saturated(self, kind: str) -> Response:
        self.counters.add("saturated", 1)
        return otlp_error(
            503,
            "the collector's write queue is full; retry later",
            kind,
            self.limits.retry_after_s,
        )

    def _too_large(self, kind: str) -> Response:
        return otlp_error(
            413,
            f"the body is larger than the limit ({self.limits.max_body_bytes} bytes as sent, "
            f"{self.limits.max_decompressed_bytes} decompressed); send smaller batches",
            kind,
        )

    async def not_metrics(self, request: Request) -> Response:
        return otlp_error(
            404,
            f"this collector stores traces and logs only: {request.url.path} is not served "
            "(set OTEL_METRICS_EXPORTER=none, or point only OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and "
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT here)",
            content_kind(request.headers.get("content-type")),
        )

    def status(self) -> dict[str, Any]:
        """The document of `/api/status`: the store's queue and drops, and what this receiver did."""
        counts = self.counters.snapshot()
        return {
            "database": self.store.path,
            "queued": self.store.queued,
            "queue_bound": self.queue_bound,
            "queue_high_water": self.high_water,
            "dropped_spans": self.store.dropped_spans,
            "dropped_by_reason": self.store.dropped_by_reason,
            "accepted_spans": counts["accepted_spans"],
            "rejected_spans": counts["rejected_spans"],
            "queued_logs": self.store.queued_logs,
            "dropped_logs": self.store.dropped_logs,
            "accepted_log_records": counts["accepted_log_records"],
            "rejected_log_records": counts["rejected_log_records"],
            "requests": counts["requests"],
            "refused": {
                "busy": counts["busy"],
                "saturated": counts["saturated"],
                "invalid": counts["invalid"],
            },
        }
