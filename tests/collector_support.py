"""Helpers of the collector tests: a pipeline touching every derivation, an OTLP/JSON client written
from the specification, a collector on a free port, and table-by-table comparison of two databases."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from otel_workflow import TraceStore, WorkflowSpanProcessor, WorkflowTracer, capture_io
from otel_workflow.server.app import Collector, ReceiverLimits

#: The tables and views a span turns into; comparing them all is what "derived the same" means.
TABLES = ("spans", "span_events", "span_links", "workflow_executions", "execution_steps", "execution_logs")


def run_pipeline(provider: TracerProvider, *, runs: int = 1, workflow_id: str = "orders") -> list[str]:
    """Executions that exercise every derivation: captured I/O, custom events, a span of other
    instrumentation with a link, skipped, compensated and nested steps, and a failing run."""
    wf = WorkflowTracer(workflow_id, tracer_provider=provider, config_version="sha256:0123")
    http = provider.get_tracer("tests.http-client", "1.2.3")
    ids = []
    for number in range(runs):
        with (
            capture_io(),
            wf.execution(
                trigger_type="POST /orders", triggered_by="alice@example.com", trigger_data={"order": number}
            ) as run,
        ):
            with wf.step("validate", step_type="step.validate") as step:
                step.record_input({"order": number, "password": "hunter2"})
                step.record_output({"ok": True, "items": [1, 2, 3]})
                step.span.add_event(
                    "cache.miss", {"key": "k", "attempt": 2, "ratio": 0.5, "tags": ("a", "b")}
                )
            with wf.step("charge", step_type="step.http"):
                link = Link(run.span.get_span_context(), {"why": "the run that caused it"})
                with http.start_as_current_span("HTTP POST", kind=SpanKind.CLIENT, links=[link]) as span:
                    span.set_attribute("http.response.status_code", 200)
                    span.set_attribute("flags", (True, False))
            with wf.step("notify") as step:
                step.skip("no e-mail address")
            with wf.step("refund") as step:
                step.mark_compensated()
            with wf.step("outer"), wf.step("inner"):
                pass
        ids.append(run.execution_id)
    with contextlib.suppress(ValueError), wf.execution(trigger_type="cron") as failing, wf.step("load"):
        raise ValueError("boom")
    ids.append(failing.execution_id)
    return ids


def pipeline_spans(runs: int = 1) -> list[ReadableSpan]:
    """The spans of the test pipeline, kept in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "memory"}), shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    run_pipeline(provider, runs=runs)
    provider.shutdown()
    return list(memory.get_finished_spans())


def protobuf_body(spans: list[ReadableSpan]) -> bytes:
    """`spans` as the binary ExportTraceServiceRequest the OTLP exporters send."""
    return bytes(encode_spans(spans).SerializeToString())


def dump(store: TraceStore, table: str) -> list[tuple[Any, ...]]:
    return store.sql(f"SELECT * FROM {table} ORDER BY ALL")


def assert_same_rows(expected: TraceStore, actual: TraceStore, *, may_be_empty: Sequence[str] = ()) -> None:
    """Every table and derived view holds the same rows in both databases."""
    for table in TABLES:
        want, got = dump(expected, table), dump(actual, table)
        assert want or table in may_be_empty, f"{table} is empty: the pipeline did not reach the database"
        assert got == want, f"{table} differs:\nexpected {want}\ngot      {got}"


# -- an OTLP/JSON client, from the specification (not from the code under test) --------------------


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in the protobuf JSON mapping
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_value(item) for item in value]}}
    raise TypeError(value)


def _attributes(attributes: Any) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in (attributes or {}).items()]


_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """An ExportTraceServiceRequest in OTLP/JSON: hex ids, integer enums, lowerCamelCase keys."""
    resources: dict[int, dict[str, Any]] = {}
    scopes: dict[tuple[int, Any], dict[str, Any]] = {}
    for span in spans:
        resource = span.resource
        resource_spans = resources.get(id(resource))
        if resource_spans is None:
            resource_spans = {"resource": {"attributes": _attributes(resource.attributes)}, "scopeSpans": []}
            resources[id(resource)] = resource_spans
        scope = span.instrumentation_scope
        assert scope is not None
        key = (id(resource), (scope.name, scope.version))
        scope_spans = scopes.get(key)
        if scope_spans is None:
            scope_spans = {"scope": {"name": scope.name, "version": scope.version or ""}, "spans": []}
            scopes[key] = scope_spans
            resource_spans["scopeSpans"].append(scope_spans)
        context = span.context
        assert context is not None
        item: dict[str, Any] = {
            "traceId": f"{context.trace_id:032x}",
            "spanId": f"{context.span_id:016x}",
            "name": span.name,
            "kind": span.kind.value + 1,  # OTLP counts from UNSPECIFIED = 0
            "startTimeUnixNano": str(span.start_time),
            "endTimeUnixNano": str(span.end_time),
            "attributes": _attributes(span.attributes),
            "events": [
                {"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
                for e in span.events
            ],
            "links": [
                {
                    "traceId": f"{link.context.trace_id:032x}",
                    "spanId": f"{link.context.span_id:016x}",
                    "attributes": _attributes(link.attributes),
                }
                for link in span.links
            ],
            "status": {"code": _STATUS[span.status.status_code], "message": span.status.description or ""},
            "flags": int(context.trace_flags),
        }
        if span.parent is not None:
            item["parentSpanId"] = f"{span.parent.span_id:016x}"
        scope_spans["spans"].append(item)
    return {"resourceSpans": list(resources.values())}


def post(
    url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST with the standard library: the status, headers (lower-case names) and body of the answer."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def post_json(url: str, document: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = post(url, json.dumps(document).encode(), "application/json", headers)
    return status, json.loads(body) if body else None


# -- a collector on a free port --------------------------------------------------------------------


@dataclass
class Served:
    store: TraceStore
    collector: Collector

    @property
    def url(self) -> str:
        return self.collector.url

    @property
    def traces_url(self) -> str:
        return self.collector.url + "/v1/traces"

    @property
    def grpc_address(self) -> str:
        """`host:port` of the OTLP/gRPC receiver (`served(..., grpc=True)`)."""
        assert self.collector.grpc is not None, "served without grpc=True"
        return self.collector.grpc.address


@contextlib.contextmanager
def served(
    db: Path,
    *,
    token: str | None = None,
    limits: ReceiverLimits | None = None,
    grpc: bool = False,
    **store_options: Any,
) -> Iterator[Served]:
    """A store at `db` and a collector serving it on 127.0.0.1 (free ports; OTLP/gRPC too with `grpc`),
    stopped and closed after."""
    store = TraceStore(db, flush_interval_s=0.05, **store_options)
    try:
        collector = Collector(
            store, port=0, grpc_port=0 if grpc else None, token=token, limits=limits
        ).start()
        try:
            yield Served(store, collector)
        finally:
            collector.stop()
    finally:
        store.close()
