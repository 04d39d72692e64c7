"""The OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs`, the HTTP side of `intake.Intake`.

It takes an `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`) as `application/x-protobuf` or
`application/json` (OTLP/JSON), plain or with `Content-Encoding: gzip` (or
`deflate`), and answers as OTLP/HTTP specifies: 200 with an
`ExportTraceServiceResponse` in the request's encoding (with `partial_success`
counting spans rejected for invalid ids), 400 for a body that does not decode,
413 past the body limits, 415 for another content type or encoding, 429 when
all ingest slots stay busy and 503 when the store's write queue is filling up,
both with `Retry-After`, so that exporters back off and retry instead of losing
spans. Error bodies are `google.rpc.Status` (`otlp_error`).

This module owns what is HTTP: headers, reading and decompressing the body, the answer. Decoding,
the per-request bound, the queue check and the submit are the intake's, shared with the gRPC
receiver; so are the ingest slots. Retried requests do not duplicate rows: the store skips spans it
already has.

The body is limited on the wire and again after decompression, which is done
incrementally with a cap, so a gzip bomb costs at most the cap; at most
`max_concurrent_ingest` requests are read and decoded at once; a body must
arrive within `body_timeout_s`.
"""

from __future__ import annotations

import json
import zlib
from typing import Final

import anyio
import anyio.to_thread
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from otel_workflow.otlp.encode import (
    export_response_json,
    export_response_protobuf,
    rpc_status_json,
    rpc_status_protobuf,
)
from otel_workflow.server.intake import JSON, LOGS, PROTOBUF, TRACES, Intake, Outcome, Result, Signal

__all__ = ["JSON", "PROTOBUF", "Receiver", "content_kind", "otlp_error"]

_CONTENT_TYPES: Final = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}
# Content-Encoding -> zlib window bits (31: gzip wrapper, 15: zlib wrapper, which is what HTTP "deflate" is).
_ENCODINGS: Final = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_IDENTITY: Final = ("", "identity")
# How often a request waiting for an ingest slot looks again.
_SLOT_POLL_S: Final = 0.005

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


class Receiver:
    """The OTLP/HTTP routes over an `Intake`. Blocking work (decoding, DuckDB) runs in worker threads."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.limits = intake.limits

    def routes(self) -> list[Route]:
        """`POST /v1/traces` and `POST /v1/logs`; metrics get a 404 that says why."""
        return [
            Route("/v1/traces", self.traces, methods=["POST"]),
            Route("/v1/logs", self.logs, methods=["POST"]),
            Route("/v1/metrics", self.not_metrics, methods=["POST"]),
        ]

    async def traces(self, request: Request) -> Response:
        return await self._receive(request, TRACES)

    async def logs(self, request: Request) -> Response:
        return await self._receive(request, LOGS)

    async def _receive(self, request: Request, signal: Signal) -> Response:
        """Content type and encoding, the body limits, back-pressure and the ingest slots; then the
        intake in a worker thread."""
        counters = self.intake.counters
        kind = content_kind(request.headers.get("content-type"))
        if kind is None:
            counters.add("invalid", 1)
            return otlp_error(
                415,
                "unsupported content type: send application/x-protobuf or application/json "
                f"(got {request.headers.get('content-type', 'none')!r})",
                None,
            )
        coding = request.headers.get("content-encoding", "").strip().lower()
        if coding not in _IDENTITY and coding not in _ENCODINGS:
            counters.add("invalid", 1)
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
                counters.add("invalid", 1)
                return self._too_large(kind)
        # Refuse early, before reading the body, when the writer is behind anyway.
        if self.intake.behind(signal):
            return self._answer(self.intake.saturated(), kind, signal)
        if not await self._acquire_slot():
            counters.add("busy", 1)
            return otlp_error(
                429, "the collector is busy with other requests; retry later", kind, self.limits.retry_after_s
            )
        try:
            return await self._ingest(request, kind, coding, signal)
        finally:
            self.intake.slots.release()

    async def _acquire_slot(self) -> bool:
        """An ingest slot within `ingest_wait_s`, polled: the slots are shared with the gRPC receiver's
        threads, and a waiting request must not hold one of the worker threads that decode."""
        slots = self.intake.slots
        if slots.try_acquire():
            return True
        with anyio.move_on_after(self.limits.ingest_wait_s):
            while True:
                await anyio.sleep(_SLOT_POLL_S)
                if slots.try_acquire():
                    return True
        return False

    async def _ingest(self, request: Request, kind: str, coding: str, signal: Signal) -> Response:
        counters = self.intake.counters
        try:
            with anyio.fail_after(self.limits.body_timeout_s):
                body = await self._read_body(request, coding)
        except TimeoutError:
            counters.add("invalid", 1)
            return otlp_error(408, f"the body did not arrive within {self.limits.body_timeout_s:g}s", kind)
        except _TooLarge:
            counters.add("invalid", 1)
            return self._too_large(kind)
        except (zlib.error, EOFError) as exc:
            counters.add("invalid", 1)
            return otlp_error(400, f"the body does not decompress as {coding}: {exc}", kind)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening for the answer
        result = await anyio.to_thread.run_sync(self.intake.store_body, signal, body, kind)
        return self._answer(result, kind, signal)

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

    def _answer(self, result: Result, kind: str, signal: Signal) -> Response:
        """The HTTP answer of an intake `Result`."""
        outcome = result.outcome
        if outcome is Outcome.STORED:
            return _export_response(kind, result.rejected, result.rejected_message, signal.rejected_field)
        if outcome is Outcome.INVALID:
            return otlp_error(400, result.message, kind)
        if outcome is Outcome.TOO_MANY:
            return otlp_error(413, result.message, kind)
        return otlp_error(503, result.message, kind, self.limits.retry_after_s)

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
