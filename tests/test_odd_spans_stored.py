"""Odd spans that used to be rejected whole are now stored, with the odd part made sane."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_workflow import DuckDBSpanExporter, TraceStore

YEAR_10000_NS = 253_402_300_800 * 10**9 + 5 * 10**9


def finished_spans(service_name: str) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("odd")
    tracer.start_span("workflow.execute", attributes={"note": "an execution span without an id"}).end()
    with tracer.start_as_current_span(
        "workflow.step.huge-sequence",
        attributes={"execution.id": "go-1", "step.sequence": 2**70, "step.name": "bad\ud800name"},
    ) as step:
        step.add_event("workflow.step.output", {"workflow.io.json": "not json {"})
    tracer.start_span("from-the-future", start_time=YEAR_10000_NS).end(end_time=YEAR_10000_NS + 1000)
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def test_odd_spans_are_stored_sanely(tmp_path: Path) -> None:
    spans = finished_spans("svc\udcff")
    with TraceStore(tmp_path / "odd.duckdb") as store:
        exporter = DuckDBSpanExporter(store)
        exporter.export(spans)
        assert exporter.force_flush()
        assert store.dropped_spans == 0
        names = {row[0]: row[1:] for row in store.sql("SELECT name, service_name, step_sequence FROM spans")}
        assert set(names) == {"workflow.execute", "workflow.step.huge-sequence", "from-the-future"}
        # The lone surrogate became a replacement character instead of costing the span its place.
        assert all(service is not None and "\udcff" not in service for service, _ in names.values())
        # A sequence beyond BIGINT is not a sequence.
        assert names["workflow.step.huge-sequence"][1] is None
        # An execution span without any id is a span, not an execution row.
        assert store.sql("SELECT count(*) FROM workflow_executions") == [(0,)]
        [(step_name, output)] = store.sql("SELECT step_name, output_data FROM execution_steps")
        assert "\ud800" not in step_name
        # A payload that is not JSON is kept, as a JSON string.
        assert json.loads(output) == "not json {"
