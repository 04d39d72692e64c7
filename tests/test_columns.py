"""One table of span columns (`otel_workflow/ingest/columns.py`), and everything that must agree with it.

The DDL of a real database file, the Arrow schemas, the live rows' columns, the C converter's own
list of the columns it builds, and the rows both converters make (each value in its column, by
name, through the real write path into a real file) are all checked against the table. Any of them
disagreeing with it fails here.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel_workflow.ingest import columns, convert
from otel_workflow.ingest.columns import (
    EVENTS_SCHEMA,
    LINKS_SCHEMA,
    LOG_RECORDS,
    RUNNING_COLUMNS,
    RUNNING_SPANS,
    SPAN_EVENTS,
    SPAN_LINKS,
    SPANS,
    SPANS_SCHEMA,
    WRITER_COLUMNS,
    Table,
)
from otel_workflow.ingest.convert import SpanConverter, running_rows
from otel_workflow.model import conventions as cv
from otel_workflow.storage.database import Database
from otel_workflow.storage.schema import SCHEMA_VERSION
from otel_workflow.storage.store import TraceStore
from otel_workflow.storage.write import SpanWriteSink

TABLES = (SPANS, SPAN_EVENTS, SPAN_LINKS, RUNNING_SPANS)
# Every table made from the column table: those above and `log_records` (no converter of spans makes it).
ALL_TABLES = (*TABLES, LOG_RECORDS)
JSON_COLUMNS = {column.name for table in TABLES for column in table.columns if column.duckdb_type == "JSON"}


def native_built() -> bool:
    if convert._spanrows is not None:
        return True
    if os.environ.get("OTEL_WORKFLOW_REQUIRE_NATIVE"):
        pytest.fail("otel_workflow._native.spanrows was not built")
    return False


def paths() -> list[Any]:
    """The C converter (skipped where it is not built) and the Python one."""
    c_path = pytest.param(
        True, id="c", marks=pytest.mark.skipif(convert._spanrows is None, reason="not built")
    )
    return [c_path, pytest.param(False, id="python")]


# -- the DDL of a real file --------------------------------------------------------------------------


def described(connection: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str, bool]]:
    """(name, type, NOT NULL) of each column of `table`, in order, as the file has them."""
    rows = connection.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return [(name, kind, nullable == "NO") for name, kind, nullable in rows]


def duckdb_spelling(connection: duckdb.DuckDBPyConnection, duckdb_type: str) -> str:
    """How DuckDB names a type in its catalogue (TIMESTAMPTZ is TIMESTAMP WITH TIME ZONE there)."""
    connection.execute(f"CREATE OR REPLACE TEMP TABLE _probe (c {duckdb_type})")
    row = connection.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_name = '_probe'"
    ).fetchone()
    assert row is not None
    return str(row[0])


def expected(connection: duckdb.DuckDBPyConnection, table: Table) -> list[tuple[str, str, bool]]:
    return [
        (column.name, duckdb_spelling(connection, column.duckdb_type), column.not_null)
        for column in table.columns
    ]


@pytest.fixture(scope="module")
def real_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A database file as TraceStore makes it, opened again on its own."""
    path = tmp_path_factory.mktemp("columns") / "made.duckdb"
    TraceStore(path).close()
    connection = duckdb.connect(str(path))
    try:
        yield connection
    finally:
        connection.close()


@pytest.mark.parametrize("table", ALL_TABLES, ids=lambda table: table.name)
def test_the_tables_of_a_real_file_are_the_column_table(
    real_file: duckdb.DuckDBPyConnection, table: Table
) -> None:
    assert described(real_file, table.name) == expected(real_file, table)


# The layout of schema version 1, as released: files made by it are opened and written by this code,
# so a change of any column (name, type, NOT NULL, order) needs a new SCHEMA_VERSION and a migration.
VERSION_1: dict[str, list[tuple[str, str, bool]]] = {
    "spans": [
        ("trace_id", "VARCHAR", True),
        ("span_id", "VARCHAR", True),
        ("parent_span_id", "VARCHAR", False),
        ("name", "VARCHAR", True),
        ("kind", "VARCHAR", False),
        ("start_time", "TIMESTAMPTZ", True),
        ("end_time", "TIMESTAMPTZ", True),
        ("duration_ms", "DOUBLE", False),
        ("status_code", "VARCHAR", False),
        ("status_message", "VARCHAR", False),
        ("service_name", "VARCHAR", False),
        ("resource_attributes", "JSON", False),
        ("scope_name", "VARCHAR", False),
        ("scope_version", "VARCHAR", False),
        ("attributes", "JSON", False),
        ("dropped_attributes", "INTEGER", False),
        ("dropped_events", "INTEGER", False),
        ("dropped_links", "INTEGER", False),
        ("workflow_role", "VARCHAR", False),
        ("execution_id", "VARCHAR", False),
        ("workflow_id", "VARCHAR", False),
        ("step_name", "VARCHAR", False),
        ("step_type", "VARCHAR", False),
        ("step_sequence", "BIGINT", False),
        ("parent_step_id", "VARCHAR", False),
        ("workflow_status", "VARCHAR", False),
        ("error_message", "VARCHAR", False),
        ("trigger_type", "VARCHAR", False),
        ("triggered_by", "VARCHAR", False),
        ("config_version", "VARCHAR", False),
        ("capture_io", "BOOLEAN", False),
        ("input_data", "JSON", False),
        ("output_data", "JSON", False),
    ],
    "span_events": [
        ("trace_id", "VARCHAR", True),
        ("span_id", "VARCHAR", True),
        ("event_index", "INTEGER", True),
        ("name", "VARCHAR", True),
        ("timestamp", "TIMESTAMPTZ", True),
        ("attributes", "JSON", False),
    ],
    "span_links": [
        ("trace_id", "VARCHAR", True),
        ("span_id", "VARCHAR", True),
        ("link_index", "INTEGER", True),
        ("linked_trace_id", "VARCHAR", True),
        ("linked_span_id", "VARCHAR", True),
        ("attributes", "JSON", False),
    ],
    "running_spans": [
        ("trace_id", "VARCHAR", True),
        ("span_id", "VARCHAR", True),
        ("parent_span_id", "VARCHAR", False),
        ("name", "VARCHAR", True),
        ("start_time", "TIMESTAMPTZ", True),
        ("service_name", "VARCHAR", False),
        ("workflow_role", "VARCHAR", True),
        ("execution_id", "VARCHAR", False),
        ("workflow_id", "VARCHAR", False),
        ("step_name", "VARCHAR", False),
        ("step_type", "VARCHAR", False),
        ("step_sequence", "BIGINT", False),
        ("parent_step_id", "VARCHAR", False),
        ("trigger_type", "VARCHAR", False),
        ("triggered_by", "VARCHAR", False),
        ("config_version", "VARCHAR", False),
        ("capture_io", "BOOLEAN", False),
        ("writer_id", "VARCHAR", True),
        ("pid", "BIGINT", False),
        ("interrupted_at", "TIMESTAMPTZ", False),
    ],
}


# Version 2 adds `log_records`; the tables of version 1 are unchanged (the migration only makes new ones).
VERSION_2: dict[str, list[tuple[str, str, bool]]] = {
    **VERSION_1,
    "log_records": [
        ("id", "VARCHAR", True),
        ("time", "TIMESTAMPTZ", True),
        ("observed_time", "TIMESTAMPTZ", False),
        ("trace_id", "VARCHAR", False),
        ("span_id", "VARCHAR", False),
        ("severity_number", "INTEGER", False),
        ("severity_text", "VARCHAR", False),
        ("body", "JSON", False),
        ("attributes", "JSON", False),
        ("event_name", "VARCHAR", False),
        ("dropped_attributes", "INTEGER", False),
        ("service_name", "VARCHAR", False),
        ("resource_attributes", "JSON", False),
        ("scope_name", "VARCHAR", False),
        ("scope_version", "VARCHAR", False),
    ],
}
# Version 3 turns the derived `steps` table (not made from the column table) into a view: the same layout.
LAYOUTS = {1: VERSION_1, 2: VERSION_2, 3: VERSION_2}


@pytest.mark.parametrize("table", ALL_TABLES, ids=lambda table: table.name)
def test_the_column_table_is_the_layout_of_its_schema_version(
    real_file: duckdb.DuckDBPyConnection, table: Table
) -> None:
    assert SCHEMA_VERSION in LAYOUTS, "a new schema version: add its layout here (and keep the migrations)"
    layout = [(column.name, column.duckdb_type, column.not_null) for column in table.columns]
    assert layout == LAYOUTS[SCHEMA_VERSION][table.name]
    pinned = [
        (name, duckdb_spelling(real_file, kind), not_null)
        for name, kind, not_null in LAYOUTS[SCHEMA_VERSION][table.name]
    ]
    assert described(real_file, table.name) == pinned


def test_running_spans_are_the_live_columns_of_spans_then_the_writers() -> None:
    live = [column for column in SPANS.columns if column.live is not columns.Live.NO]
    assert tuple(column.name for column in live) == RUNNING_COLUMNS
    assert RUNNING_SPANS.names == (*RUNNING_COLUMNS, *(column.name for column in WRITER_COLUMNS))
    by_name = {column.name: column for column in RUNNING_SPANS.columns}
    for column in live:
        kept = by_name[column.name]
        assert kept.duckdb_type == column.duckdb_type
        assert kept.not_null == (column.not_null or column.live is columns.Live.NOT_NULL)


# -- the Arrow schemas and the C converter's columns -------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "table"),
    [(SPANS_SCHEMA, SPANS), (EVENTS_SCHEMA, SPAN_EVENTS), (LINKS_SCHEMA, SPAN_LINKS)],
    ids=["spans", "span_events", "span_links"],
)
def test_the_arrow_schemas_are_the_column_table(schema: pa.Schema, table: Table) -> None:
    assert schema.names == list(table.names)
    assert [field.type for field in schema] == [column.arrow_type for column in table.columns]


def test_the_c_converter_builds_the_columns_of_the_table() -> None:
    if not native_built():
        pytest.skip("otel_workflow._native.spanrows was not built")
    assert convert._spanrows is not None
    built = convert._spanrows.columns()
    for made, table in zip(built, (SPANS, SPAN_EVENTS, SPAN_LINKS), strict=True):
        assert list(made) == [(column.name, str(column.arrow_type)) for column in table.columns], table.name
    assert convert.native_columns_mismatch(built) is None


def test_a_c_converter_with_other_columns_is_refused() -> None:
    built = [list(table) for table in ((("trace_id", "string"),), (), ())]
    assert convert.native_columns_mismatch(built) is not None
    if convert._spanrows is not None:
        spans, events, links = convert._spanrows.columns()
        swapped = (*spans[:5], spans[6], spans[5], *spans[7:])
        found = convert.native_columns_mismatch([swapped, events, links])
        assert found is not None and "spans column 6" in found


# -- each value in its column, by both converters, through the real write path ------------------------

START_NS = 1_700_000_000_123_456_789
RESOURCE = {"service.name": "billing", "deployment.environment": "test"}
PARENT_STEP = "00000000000000ab"
EXCEPTION = {"exception.type": "ValueError", "exception.message": "bad order"}


def recorded() -> tuple[list[ReadableSpan], ReadableSpan]:
    """An ended execution and step, with a value in every column between them; and a running step."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(RESOURCE),
        span_limits=SpanLimits(max_span_attributes=8, max_events=3, max_links=1),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope-x", "1.2.3")
    linked = [
        Link(SpanContext(0xA0 + i, 0xB0 + i, is_remote=True, trace_flags=TraceFlags(1)), {"n": i})
        for i in range(4)
    ]
    execution = tracer.start_span(
        cv.EXECUTION_SPAN_NAME,
        kind=SpanKind.SERVER,
        start_time=START_NS,
        attributes={
            cv.WORKFLOW_ID: "wf-orders",
            cv.EXECUTION_ID: "exec-1",
            cv.TRIGGER_TYPE: "POST /orders",
            cv.TRIGGERED_BY: "alice@example.com",
            cv.CONFIG_VERSION: "sha256:abc",
            cv.CAPTURE_IO: True,
        },
    )
    execution.add_event(cv.EXECUTION_INPUT_EVENT, {cv.IO_JSON: '{"order": 1}'}, timestamp=START_NS + 1_000)
    execution.add_event("exception", EXCEPTION, timestamp=START_NS + 19_000_000)
    execution.set_status(Status(StatusCode.ERROR))
    parent = trace.set_span_in_context(execution)
    step = tracer.start_span(
        cv.STEP_SPAN_PREFIX + "validate",
        context=parent,
        kind=SpanKind.CLIENT,
        start_time=START_NS + 2_000_000,
        links=linked,
        attributes={
            "dropped.one": "x",  # the first of 9: the limit of 8 drops it
            cv.WORKFLOW_ID: "wf-orders",
            cv.EXECUTION_ID: "exec-1",
            cv.STEP_NAME: "validate",
            cv.STEP_TYPE: "step.validate",
            cv.STEP_SEQUENCE: 3,
            cv.STEP_PARENT_ID: PARENT_STEP,
            "http.route": "/orders",
            "retries": 2,
        },
    )
    for index in range(3):
        step.add_event(f"note {index}", {"index": index}, timestamp=START_NS + 3_000_000 + index)
    step.add_event(cv.IO_INPUT_EVENT, {cv.IO_JSON: '{"in": [1, 2]}'}, timestamp=START_NS + 4_000_000)
    step.add_event(cv.IO_OUTPUT_EVENT, {cv.IO_JSON: '{"out": true}'}, timestamp=START_NS + 5_000_000)
    step.set_status(Status(StatusCode.ERROR, "card declined"))
    step.end(end_time=START_NS + 14_500_000)
    running = tracer.start_span(
        cv.STEP_SPAN_PREFIX + "charge",
        context=parent,
        start_time=START_NS + 15_000_000,
        attributes={cv.EXECUTION_ID: "exec-1", cv.STEP_NAME: "charge", cv.STEP_SEQUENCE: 4},
    )
    execution.end(end_time=START_NS + 20_000_000)
    ended = list(exporter.get_finished_spans())
    assert [span.name for span in ended] == [cv.STEP_SPAN_PREFIX + "validate", cv.EXECUTION_SPAN_NAME]
    assert isinstance(running, ReadableSpan)
    return ended, running


def at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC)


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.context
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def expected_spans(step: ReadableSpan, execution: ReadableSpan) -> list[dict[str, Any]]:
    trace_id, step_id = ids(step)
    _, execution_id = ids(execution)
    resource = dict(step.resource.attributes)
    assert resource["service.name"] == "billing"
    rows = [
        {
            "trace_id": trace_id,
            "span_id": step_id,
            "parent_span_id": execution_id,
            "name": cv.STEP_SPAN_PREFIX + "validate",
            "kind": "CLIENT",
            "start_time": at(START_NS + 2_000_000),
            "end_time": at(START_NS + 14_500_000),
            "duration_ms": 12.5,
            "status_code": "ERROR",
            "status_message": "card declined",
            "service_name": "billing",
            "resource_attributes": resource,
            "scope_name": "scope-x",
            "scope_version": "1.2.3",
            "attributes": dict(step.attributes or {}),
            "dropped_attributes": 1,
            "dropped_events": 2,
            "dropped_links": 3,
            "workflow_role": cv.ROLE_STEP,
            "execution_id": "exec-1",
            "workflow_id": "wf-orders",
            "step_name": "validate",
            "step_type": "step.validate",
            "step_sequence": 3,
            "parent_step_id": PARENT_STEP,
            "workflow_status": cv.STATUS_FAILED,
            "error_message": "card declined",
            "trigger_type": None,
            "triggered_by": None,
            "config_version": None,
            "capture_io": False,
            "input_data": {"in": [1, 2]},
            "output_data": {"out": True},
        },
        {
            "trace_id": trace_id,
            "span_id": execution_id,
            "parent_span_id": None,
            "name": cv.EXECUTION_SPAN_NAME,
            "kind": "SERVER",
            "start_time": at(START_NS),
            "end_time": at(START_NS + 20_000_000),
            "duration_ms": 20.0,
            "status_code": "ERROR",
            "status_message": None,
            "service_name": "billing",
            "resource_attributes": resource,
            "scope_name": "scope-x",
            "scope_version": "1.2.3",
            "attributes": dict(execution.attributes or {}),
            "dropped_attributes": 0,
            "dropped_events": 0,
            "dropped_links": 0,
            "workflow_role": cv.ROLE_EXECUTION,
            "execution_id": "exec-1",
            "workflow_id": "wf-orders",
            "step_name": None,
            "step_type": None,
            "step_sequence": None,
            "parent_step_id": None,
            "workflow_status": cv.STATUS_FAILED,
            "error_message": "ValueError: bad order",
            "trigger_type": "POST /orders",
            "triggered_by": "alice@example.com",
            "config_version": "sha256:abc",
            "capture_io": True,
            "input_data": {"order": 1},
            "output_data": None,
        },
    ]
    assert [set(row) for row in rows] == [set(SPANS.names)] * 2
    # Every column has a value in some row, and no two columns of a type the same values: a value in
    # the wrong column cannot go unnoticed.
    for name in SPANS.names:
        assert any(row[name] is not None for row in rows), name
    signatures = [tuple(repr(row[name]) for row in rows) for name in SPANS.names]
    repeated = {
        name
        for name, signature in zip(SPANS.names, signatures, strict=True)
        if signatures.count(signature) > 1
    }
    assert repeated == set(), repeated
    return rows


def expected_events(step: ReadableSpan, execution: ReadableSpan) -> list[dict[str, Any]]:
    trace_id, step_id = ids(step)
    _, execution_id = ids(execution)
    return [
        {
            "trace_id": trace_id,
            "span_id": step_id,
            "event_index": 0,
            "name": "note 2",
            "timestamp": at(START_NS + 3_000_002),
            "attributes": {"index": 2},
        },
        {
            "trace_id": trace_id,
            "span_id": step_id,
            "event_index": 1,
            "name": cv.IO_INPUT_EVENT,
            "timestamp": at(START_NS + 4_000_000),
            "attributes": {cv.IO_JSON: '{"in": [1, 2]}'},
        },
        {
            "trace_id": trace_id,
            "span_id": step_id,
            "event_index": 2,
            "name": cv.IO_OUTPUT_EVENT,
            "timestamp": at(START_NS + 5_000_000),
            "attributes": {cv.IO_JSON: '{"out": true}'},
        },
        {
            "trace_id": trace_id,
            "span_id": execution_id,
            "event_index": 0,
            "name": cv.EXECUTION_INPUT_EVENT,
            "timestamp": at(START_NS + 1_000),
            "attributes": {cv.IO_JSON: '{"order": 1}'},
        },
        {
            "trace_id": trace_id,
            "span_id": execution_id,
            "event_index": 1,
            "name": "exception",
            "timestamp": at(START_NS + 19_000_000),
            "attributes": EXCEPTION,
        },
    ]


def expected_links(step: ReadableSpan) -> list[dict[str, Any]]:
    trace_id, step_id = ids(step)
    # The limit keeps the last link.
    return [
        {
            "trace_id": trace_id,
            "span_id": step_id,
            "link_index": 0,
            "linked_trace_id": f"{0xA3:032x}",
            "linked_span_id": f"{0xB3:016x}",
            "attributes": {"n": 3},
        }
    ]


def readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON columns parsed, times as instants (a file's session may give another time zone)."""
    out = []
    for row in rows:
        made = {}
        for name, stored in row.items():
            value = json.loads(stored) if name in JSON_COLUMNS and isinstance(stored, str) else stored
            made[name] = value.astimezone(UTC) if isinstance(value, datetime) else value
        out.append(made)
    return out


@pytest.mark.parametrize("native", paths())
def test_each_value_is_in_its_column(native: bool) -> None:
    (step, execution), _ = recorded()
    converter = SpanConverter(native=native)
    assert converter.native == native
    batch = converter.finished([step, execution])
    assert batch.spans.schema == SPANS_SCHEMA
    assert batch.events.schema == EVENTS_SCHEMA
    assert batch.links.schema == LINKS_SCHEMA
    assert readable(batch.spans.to_pylist()) == expected_spans(step, execution)
    assert readable(batch.events.to_pylist()) == expected_events(step, execution)
    assert readable(batch.links.to_pylist()) == expected_links(step)


@pytest.mark.parametrize("native", paths())
def test_a_real_file_stores_each_value_in_its_column(tmp_path: Path, native: bool) -> None:
    (step, execution), running = recorded()
    database = Database(str(tmp_path / "written.duckdb"), read_only=False, lock_timeout_s=5.0)
    sink = SpanWriteSink(database, SpanConverter(native=native))
    parts, rejected = sink.convert([step, execution])
    assert rejected == 0
    live = running_rows(parts[0].tables().spans)
    assert live is not None and live.schema.names == list(RUNNING_COLUMNS)
    assert (
        sink.write(parts, [weakref.ref(running)], final=False, forget=(), commit=lambda action: action()) == 0
    )
    sink.release()
    connection = duckdb.connect(database.path, read_only=True)
    try:

        def stored(query: str) -> list[dict[str, Any]]:
            return readable(connection.sql(query).to_arrow_table().to_pylist())

        assert stored("SELECT * FROM spans ORDER BY start_time DESC") == expected_spans(step, execution)
        _, step_id = ids(step)
        events = sorted(
            stored("SELECT * FROM span_events"), key=lambda e: (e["span_id"] != step_id, e["event_index"])
        )
        assert events == expected_events(step, execution)
        assert stored("SELECT * FROM span_links") == expected_links(step)
        trace_id, span_id = ids(running)
        _, execution_span = ids(execution)
        assert stored("SELECT * FROM running_spans") == [
            {
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_span_id": execution_span,
                "name": cv.STEP_SPAN_PREFIX + "charge",
                "start_time": at(START_NS + 15_000_000),
                "service_name": "billing",
                "workflow_role": cv.ROLE_STEP,
                "execution_id": "exec-1",
                "workflow_id": None,
                "step_name": "charge",
                "step_type": None,
                "step_sequence": 4,
                "parent_step_id": None,
                "trigger_type": None,
                "triggered_by": None,
                "config_version": None,
                "capture_io": False,
                "writer_id": database.writer_id,
                "pid": os.getpid(),
                "interrupted_at": None,
            }
        ]
    finally:
        connection.close()
