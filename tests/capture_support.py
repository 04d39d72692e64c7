"""Helpers of the I/O capture tests: traced services, an OTLP receiver and a WSGI server on 127.0.0.1.

Everything is real: a TracerProvider with WorkflowSpanProcessor and a BatchSpanProcessor of the DuckDB
exporter on a file, optionally a BatchSpanProcessor of the standard OTLP/HTTP exporter sending to an
`http.server` in a thread, whose protobuf bodies are decoded with the OTLP proto classes.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import WSGIApplication

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as ProtoLogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

# -- an OTLP/HTTP receiver -------------------------------------------------------------------------

TRACES_PATH = "/v1/traces"
LOGS_PATH = "/v1/logs"


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf exports on 127.0.0.1 and keeps the raw bodies per path.

    Traces arrive at `/v1/traces` (`endpoint`), logs at `/v1/logs` (`logs_endpoint`); `url` is the base
    an exporter reading `OTEL_EXPORTER_OTLP_ENDPOINT` appends those to. Every POST is answered 200.
    """

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.bodies.setdefault(self.path, []).append(body)
                # An export response without a partial success is an empty message, for every signal.
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def endpoint(self) -> str:
        return f"{self.url}{TRACES_PATH}"

    @property
    def logs_endpoint(self) -> str:
        return f"{self.url}{LOGS_PATH}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _bodies(self, path: str) -> list[bytes]:
        with self._lock:
            return list(self.bodies.get(path, ()))

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(body) for body in self._bodies(TRACES_PATH)]

    def log_requests(self) -> list[ExportLogsServiceRequest]:
        return [ExportLogsServiceRequest.FromString(body) for body in self._bodies(LOGS_PATH)]

    def spans(self) -> list[ProtoSpan]:
        return [
            span
            for request in self.trace_requests()
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def log_records(self) -> list[ProtoLogRecord]:
        return [
            record
            for request in self.log_requests()
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        ]

    def raw(self) -> bytes:
        """Every body received, of every path."""
        with self._lock:
            return b"".join(body for bodies in self.bodies.values() for body in bodies)


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def proto_attributes(attributes: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in attributes}


def proto_events(span: ProtoSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, proto_attributes(event.attributes)) for event in span.events]


# -- a traced service ------------------------------------------------------------------------------


@dataclass
class Service:
    """One service: its own provider, DuckDB file and tracer (and optionally an OTLP exporter)."""

    name: str
    store: TraceStore
    provider: TracerProvider
    wf: WorkflowTracer
    closed: bool = field(default=False)

    def finish(self) -> None:
        """Flush every exporter and close the store's writer (idempotent)."""
        if not self.closed:
            self.closed = True
            self.provider.shutdown()

    def close(self) -> None:
        self.finish()
        self.store.close()

    def rows(self, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.store.sql(query, params)

    def steps(self) -> list[dict[str, Any]]:
        names = ["execution_id", "step_name", "status", "input_data", "output_data"]
        rows = self.rows(f"SELECT {', '.join(names)} FROM execution_steps ORDER BY started_at, sequence_num")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def executions(self) -> list[dict[str, Any]]:
        names = ["id", "status", "trigger_type", "triggered_by", "metadata", "trace_id", "span_id"]
        rows = self.rows(f"SELECT {', '.join(names)} FROM workflow_executions ORDER BY started_at")
        out = [dict(zip(names, row, strict=True)) for row in rows]
        for row in out:
            row["metadata"] = json.loads(row["metadata"])
        return out

    def everything_stored(self) -> str:
        """Every row of every table, as one text to search for what must not be there."""
        parts: list[str] = []
        for table in ("spans", "span_events", "span_links", "running_spans"):
            parts.extend(repr(row) for row in self.rows(f"SELECT * FROM {table}"))
        for view in ("workflow_executions", "execution_steps", "execution_logs"):
            parts.extend(repr(row) for row in self.rows(f"SELECT * FROM {view}"))
        return "\n".join(parts)


def make_service(
    path: Path, name: str = "orders", *, workflow_id: str = "orders", otlp_endpoint: str | None = None
) -> Service:
    store = TraceStore(path)
    provider = TracerProvider(resource=Resource.create({"service.name": name}), shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=50))
    if otlp_endpoint is not None:
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, timeout=5), schedule_delay_millis=50)
        )
    return Service(name, store, provider, WorkflowTracer(workflow_id, tracer_provider=provider))


# -- a WSGI server -----------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WsgiServer:
    """`wsgiref` serving `app` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app: WSGIApplication) -> None:
        self._server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> WsgiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def http_request(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()
