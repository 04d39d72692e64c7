"""The OTLP/gRPC receiver: `TraceService/Export` and `LogsService/Export` (port 4317), over an `Intake`.

Most OpenTelemetry SDKs export OTLP over gRPC unless told otherwise. This receiver serves the two
services of `opentelemetry-proto` on grpcio's server and hands each request to the same
`intake.Intake` as the HTTP receiver (decoding, bounds, queue check and submit, counters, partial
success), so a span stored through either is the same row.

The methods are registered with the generated services' full names but without their request
deserializer: the request arrives as bytes and is decoded by `otlp.decode`, exactly as an HTTP body
is (the generated `add_*Servicer_to_server` would parse every request into Python objects first).

The limits are the HTTP receiver's:
- `max_receive_message_length` is the larger of `ReceiverLimits.max_body_bytes` and
  `max_decompressed_bytes` (both 20 MiB by default; gRPC's
  own default of 4 MiB answers a larger batch RESOURCE_EXHAUSTED, which exporters retry, six times in
  the Python SDK, before dropping it). grpc checks it on the decompressed message, so a gzip bomb
  costs at most the limit.
- gzip-compressed requests are accepted (grpc decompresses them); answers are not compressed.
- the ingest slots are shared with HTTP (`Intake.slots`); a request that finds none within
  `ingest_wait_s` gets RESOURCE_EXHAUSTED, a store that is behind or shutting down UNAVAILABLE, both
  with retry info (`google.rpc.RetryInfo` in the status details, and in `google.rpc.retryinfo-bin`,
  the trailer the Python exporter reads) of `retry_after_s`, which every OTLP exporter honours.
- a message that does not decode, or holds more items than the collector queues at once, gets
  INVALID_ARGUMENT (not retried); invalid ids inside a message are a partial success, as over HTTP.
- with a token, metadata `authorization: Bearer <token>` is required (UNAUTHENTICATED otherwise).
- at most `max_connections` calls are in progress (grpc answers RESOURCE_EXHAUSTED beyond), decoded
  by `max_concurrent_ingest` + 2 threads; a connection lives at most `_MAX_CONNECTION_AGE_S`
  (exporters reconnect transparently) plus `body_timeout_s` of grace, which bounds how long a
  sender that stops in the middle of a message holds a thread.

`stop(grace_s)` refuses new calls and waits for those in progress, whose spans are then queued in
the store: closing the store after it writes every acknowledged span.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Final, NoReturn

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_workflow.otlp.encode import export_response_protobuf, retry_info_protobuf, rpc_status_protobuf
from otel_workflow.server.intake import LOGS, PROTOBUF, TRACES, Intake, Outcome, Signal
from otel_workflow.server.security import bearer_matches

__all__ = ["GrpcReceiver", "grpc_address"]

logger = logging.getLogger(__name__)

TRACE_SERVICE: Final = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
LOGS_SERVICE: Final = logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name
# How long one connection is served before grpc asks the client to reconnect (see the module docstring).
_MAX_CONNECTION_AGE_S: Final = 120
# Threads beyond the ingest slots: a call waiting for a slot, or being refused, needs one too.
_EXTRA_THREADS: Final = 2
# Concurrent calls on one HTTP/2 connection (grpc's default is unbounded).
_MAX_STREAMS_PER_CONNECTION: Final = 100


def grpc_address(host: str, port: int) -> str:
    """`host:port` as grpc wants it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcReceiver:
    """The two OTLP gRPC services on `host:port` (0: a free port, see `.port`), started by `start()`."""

    def __init__(self, intake: Intake, *, host: str, port: int, token: str | None = None) -> None:
        self.intake = intake
        self._token = token.encode("utf-8") if token else None
        limits = intake.limits
        # One limit for a message as sent and decompressed: what HTTP takes either way passes here too.
        receive_limit = max(limits.max_body_bytes, limits.max_decompressed_bytes)
        self._executor = futures.ThreadPoolExecutor(
            max_workers=limits.max_concurrent_ingest + _EXTRA_THREADS, thread_name_prefix="otel-workflow-grpc"
        )
        self._server = grpc.server(
            self._executor,
            handlers=[self._service(TRACE_SERVICE, TRACES), self._service(LOGS_SERVICE, LOGS)],
            maximum_concurrent_rpcs=limits.max_connections,
            options=[
                ("grpc.max_receive_message_length", receive_limit),
                ("grpc.max_send_message_length", 1024 * 1024),
                ("grpc.max_concurrent_streams", _MAX_STREAMS_PER_CONNECTION),
                ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_S * 1000),
                ("grpc.max_connection_age_grace_ms", int(limits.body_timeout_s * 1000)),
                # Another process on the same port is an error, not a silent share of the traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        try:
            self.port: int = self._server.add_insecure_port(grpc_address(host, port))
        except RuntimeError as exc:  # grpc's way of saying the address could not be bound
            self._executor.shutdown(wait=False)
            raise OSError(
                f"cannot listen for OTLP/gRPC on {grpc_address(host, port)} (is the port in use?): {exc}"
            ) from exc
        self.address = grpc_address(host, self.port)

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self, grace_s: float) -> None:
        """Refuse new calls, let those in progress finish for up to `grace_s`, then stop. Idempotent."""
        self._server.stop(grace_s).wait()
        self._executor.shutdown(wait=True)

    def _service(self, name: str, signal: Signal) -> grpc.GenericRpcHandler:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._export(signal, request, context)

        # No (de)serializers: the request arrives as bytes for `otlp.decode`; the answer is encoded by us.
        return grpc.method_handlers_generic_handler(
            name, {"Export": grpc.unary_unary_rpc_method_handler(export)}
        )

    def _export(self, signal: Signal, request: bytes, context: grpc.ServicerContext) -> bytes:
        intake = self.intake
        counters = intake.counters
        counters.add("grpc_requests", 1)
        if self._token is not None and not self._authorized(context):
            _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong token (metadata authorization: Bearer <token>)",
            )
        if intake.behind(signal):
            self._refuse(context, grpc.StatusCode.UNAVAILABLE, intake.saturated().message)
        if not intake.slots.acquire(intake.limits.ingest_wait_s):
            counters.add("busy", 1)
            self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "the collector is busy with other requests; retry later",
            )
        try:
            result = intake.store_body(signal, request, PROTOBUF)
        finally:
            intake.slots.release()
        if result.outcome is Outcome.STORED:
            return export_response_protobuf(result.rejected, result.rejected_message)
        if result.outcome in (Outcome.INVALID, Outcome.TOO_MANY):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, result.message)
        self._refuse(context, grpc.StatusCode.UNAVAILABLE, result.message)

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        assert self._token is not None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and bearer_matches(value, self._token):
                return True
        return False

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
        """End the call with a retryable `code` and the delay after which to retry; raises."""
        delay = self.intake.limits.retry_after_s
        retry_info = retry_info_protobuf(delay)
        context.set_trailing_metadata(
            (
                ("grpc-status-details-bin", rpc_status_protobuf(code.value[0], message, retry_info)),
                ("google.rpc.retryinfo-bin", retry_info),
            )
        )
        _abort(context, code, message)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with `code`: `abort` raises (its stub says it returns, hence the NoReturn here)."""
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
