"""The columns of the span and log tables, written once.

`spans`, `span_events`, `span_links`, `running_spans` and `log_records` are made here, column by column: the
DuckDB DDL (`storage.schema`), the Arrow schemas of converted rows (`ingest.convert`; the C
converter's own list of its columns is checked against these when `ingest.convert` configures it,
at import) and the live rows (`running_spans`: the columns of `spans` known when a span starts, then
the writer's own) all come from these tables. tests/test_columns.py compares them with the tables of
a real database file and with what both converters make.

Adding a column to `spans` is one line here, its value in both converters (`convert.SpanConverter`
and `_native/spanrows.c`, at the same place of the row), and a new `SCHEMA_VERSION` with a
migration (`storage.schema`): the tables of existing files are not changed by `CREATE TABLE IF NOT
EXISTS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Final

import pyarrow as pa

# The Arrow type of each DuckDB type used: JSON columns are text in Arrow, checked by DuckDB on insert.
_ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "DOUBLE": pa.float64(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "BOOLEAN": pa.bool_(),
}


class Live(enum.Enum):
    """Whether a column of `spans` is a column of `running_spans` too."""

    NO = enum.auto()
    YES = enum.auto()
    # There, and never null there (a live row is always an execution's or a step's).
    NOT_NULL = enum.auto()


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name, its DuckDB type (which gives its Arrow type) and its constraint."""

    name: str
    duckdb_type: str
    not_null: bool = False
    live: Live = Live.NO

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.duckdb_type]

    def ddl(self) -> str:
        return f"{self.name} {self.duckdb_type}{' NOT NULL' if self.not_null else ''}"


@dataclass(frozen=True, slots=True)
class Table:
    """A table's columns, in order."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def ddl(self) -> str:
        """`CREATE TABLE IF NOT EXISTS` of this table."""
        columns = ",\n".join(f"    {column.ddl()}" for column in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n{columns}\n)"

    def arrow_schema(self) -> pa.Schema:
        fields: list[pa.Field[Any]] = [pa.field(column.name, column.arrow_type) for column in self.columns]
        return pa.schema(fields)


SPANS: Final = Table(
    "spans",
    (
        Column("trace_id", "VARCHAR", not_null=True, live=Live.YES),
        Column("span_id", "VARCHAR", not_null=True, live=Live.YES),
        Column("parent_span_id", "VARCHAR", live=Live.YES),
        Column("name", "VARCHAR", not_null=True, live=Live.YES),
        Column("kind", "VARCHAR"),
        Column("start_time", "TIMESTAMPTZ", not_null=True, live=Live.YES),
        Column("end_time", "TIMESTAMPTZ", not_null=True),
        Column("duration_ms", "DOUBLE"),
        Column("status_code", "VARCHAR"),
        Column("status_message", "VARCHAR"),
        Column("service_name", "VARCHAR", live=Live.YES),
        Column("resource_attributes", "JSON"),
        Column("scope_name", "VARCHAR"),
        Column("scope_version", "VARCHAR"),
        Column("attributes", "JSON"),
        Column("dropped_attributes", "INTEGER"),
        Column("dropped_events", "INTEGER"),
        Column("dropped_links", "INTEGER"),
        # The workflow columns, promoted at ingest by `conventions.recognise`.
        Column("workflow_role", "VARCHAR", live=Live.NOT_NULL),
        Column("execution_id", "VARCHAR", live=Live.YES),
        Column("workflow_id", "VARCHAR", live=Live.YES),
        Column("step_name", "VARCHAR", live=Live.YES),
        Column("step_type", "VARCHAR", live=Live.YES),
        Column("step_sequence", "BIGINT", live=Live.YES),
        Column("parent_step_id", "VARCHAR", live=Live.YES),
        Column("workflow_status", "VARCHAR"),
        Column("error_message", "VARCHAR"),
        Column("trigger_type", "VARCHAR", live=Live.YES),
        Column("triggered_by", "VARCHAR", live=Live.YES),
        Column("config_version", "VARCHAR", live=Live.YES),
        Column("capture_io", "BOOLEAN", live=Live.YES),
        Column("input_data", "JSON"),
        Column("output_data", "JSON"),
    ),
)

SPAN_EVENTS: Final = Table(
    "span_events",
    (
        Column("trace_id", "VARCHAR", not_null=True),
        Column("span_id", "VARCHAR", not_null=True),
        Column("event_index", "INTEGER", not_null=True),
        Column("name", "VARCHAR", not_null=True),
        Column("timestamp", "TIMESTAMPTZ", not_null=True),
        Column("attributes", "JSON"),
    ),
)

SPAN_LINKS: Final = Table(
    "span_links",
    (
        Column("trace_id", "VARCHAR", not_null=True),
        Column("span_id", "VARCHAR", not_null=True),
        Column("link_index", "INTEGER", not_null=True),
        Column("linked_trace_id", "VARCHAR", not_null=True),
        Column("linked_span_id", "VARCHAR", not_null=True),
        Column("attributes", "JSON"),
    ),
)

_LIVE_COLUMNS: Final = tuple(
    replace(column, not_null=column.not_null or column.live is Live.NOT_NULL, live=Live.NO)
    for column in SPANS.columns
    if column.live is not Live.NO
)

# The `running_spans` columns cut from a converted `spans` row (`convert.running_rows`).
RUNNING_COLUMNS: Final = tuple(column.name for column in _LIVE_COLUMNS)

# Who wrote a live row, and when a clean shutdown found its span still running: set in SQL by the writer
# (`storage.write`), after the RUNNING_COLUMNS, in this order.
WRITER_COLUMNS: Final = (
    Column("writer_id", "VARCHAR", not_null=True),
    Column("pid", "BIGINT"),
    Column("interrupted_at", "TIMESTAMPTZ"),
)

RUNNING_SPANS: Final = Table("running_spans", (*_LIVE_COLUMNS, *WRITER_COLUMNS))

# Log records, the OpenTelemetry logs signal (`ingest.logrows` makes the rows): the raw record, from
# which `execution_logs` finds a record's execution and step through its span ids when it is read.
# `id` is ours (a record has no id of its own): the key of its `execution_logs` row.
LOG_RECORDS: Final = Table(
    "log_records",
    (
        Column("id", "VARCHAR", not_null=True),
        Column("time", "TIMESTAMPTZ", not_null=True),
        Column("observed_time", "TIMESTAMPTZ"),
        Column("trace_id", "VARCHAR"),
        Column("span_id", "VARCHAR"),
        Column("severity_number", "INTEGER"),
        Column("severity_text", "VARCHAR"),
        Column("body", "JSON"),
        Column("attributes", "JSON"),
        Column("event_name", "VARCHAR"),
        Column("dropped_attributes", "INTEGER"),
        Column("service_name", "VARCHAR"),
        Column("resource_attributes", "JSON"),
        Column("scope_name", "VARCHAR"),
        Column("scope_version", "VARCHAR"),
    ),
)

SPANS_SCHEMA: Final = SPANS.arrow_schema()
EVENTS_SCHEMA: Final = SPAN_EVENTS.arrow_schema()
LINKS_SCHEMA: Final = SPAN_LINKS.arrow_schema()
LOG_RECORDS_SCHEMA: Final = LOG_RECORDS.arrow_schema()
