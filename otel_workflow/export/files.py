"""Export stored traces: Jaeger UI JSON, OTLP JSON, and Parquet files.

- `export_jaeger_json`: the JSON the Jaeger UI loads with "Upload JSON" (the
  shape of Jaeger's query API `/api/traces`): `{"data": [trace, ...]}` with
  microsecond times, typed tags, CHILD_OF / FOLLOWS_FROM references, span
  events as logs and one process per resource.
- `export_otlp_json`: one `ExportTraceServiceRequest` in the OTLP/JSON
  encoding (the protobuf JSON mapping with the OTLP rules: hex trace and span
  ids, integer enums, 64-bit integers as strings), which Tempo, Jaeger v2 and
  the OpenTelemetry Collector accept.
- `export_parquet`: one Parquet file per table (`spans`, `span_events`,
  `span_links`, `workflow_executions`, `execution_steps`, `execution_logs`), or
  one Hive-partitioned folder per table (`spans/date=2024-05-01/...`), readable
  by DuckDB, pandas/pyarrow and Spark. JSON columns are written as strings.

All select whole traces: those of one execution, and/or those whose first span
started in the `since` / `until` window. Spans still running are not exported
(they have no end yet). The JSON exports read the database a few hundred traces
at a time, so the application writing to it is never held up for long.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import duckdb

from otel_workflow.model.jsonvalues import json_object
from otel_workflow.model.records import TimeArg
from otel_workflow.otlp.encode import SPAN_KIND_NUMBERS, STATUS_CODE_NUMBERS, key_values_json
from otel_workflow.query.timeparse import time_window
from otel_workflow.storage.store import TraceStore

__all__ = ["FORMATS", "PARQUET_TABLES", "ExportSummary", "export", "export_jaeger_json", "export_otlp_json"]

FORMATS: Final = ("parquet", "otlp-json", "jaeger-json")

#: Table -> the time column that dates its rows for `partition_by_date` (span_links take their span's).
PARQUET_TABLES: Final = {
    "spans": "start_time",
    "span_events": "timestamp",
    "span_links": None,
    "workflow_executions": "started_at",
    "execution_steps": "started_at",
    "execution_logs": "created_at",
}

_CHUNK_TRACES: Final = 200


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote: the format, where, and how many traces and rows per table."""

    format: str
    output: str
    traces: int
    rows: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


# -- selection ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Selection:
    """Which traces to export, as SQL over `spans` (None: everything)."""

    sql: str | None
    params: list[Any]


def _selection(store: TraceStore, execution: str | None, since: TimeArg, until: TimeArg) -> _Selection:
    where, params = [], []
    if execution is not None:
        execution_id = store.resolve_execution_id(execution)
        where.append("trace_id IN (SELECT trace_id FROM workflow_executions WHERE id = ?)")
        params.append(execution_id)
    having, window = time_window("min(start_time)", since, until)
    if not where and not having:
        return _Selection(None, [])
    sql = "SELECT trace_id FROM spans"
    if where:
        sql += f" WHERE {' AND '.join(where)}"
    sql += " GROUP BY trace_id"
    if having:
        sql += f" HAVING {' AND '.join(having)}"
    return _Selection(sql, [*params, *window])


def _trace_ids(store: TraceStore, selection: _Selection) -> list[str]:
    base = selection.sql or "SELECT trace_id FROM spans GROUP BY trace_id"
    with store.connection() as connection:
        rows = connection.execute(
            f"SELECT s.trace_id FROM ({base}) sel JOIN spans s USING (trace_id) "
            "GROUP BY s.trace_id ORDER BY min(s.start_time), s.trace_id",
            selection.params,
        ).fetchall()
    return [row[0] for row in rows]


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _CHUNK_TRACES):
        yield list(ids[start : start + _CHUNK_TRACES])


@dataclass(slots=True)
class _Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str | None
    start_us: int
    end_us: int
    status_code: str | None
    status_message: str | None
    service_name: str | None
    resource: str
    scope_name: str | None
    scope_version: str | None
    attributes: dict[str, Any]
    dropped_attributes: int
    dropped_events: int
    dropped_links: int
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


def _read_spans(connection: duckdb.DuckDBPyConnection, trace_ids: list[str]) -> list[_Span]:
    """The spans of these traces, in start order, with their events and links."""
    spans: dict[tuple[str, str], _Span] = {}
    for row in connection.execute(
        """
        SELECT trace_id, span_id, parent_span_id, name, kind, epoch_us(start_time), epoch_us(end_time),
               status_code, status_message, service_name, resource_attributes::VARCHAR, scope_name,
               scope_version, attributes::VARCHAR, coalesce(dropped_attributes, 0),
               coalesce(dropped_events, 0), coalesce(dropped_links, 0)
        FROM spans WHERE trace_id IN (SELECT unnest($ids))
        ORDER BY trace_id, start_time, span_id
        """,
        {"ids": trace_ids},
    ).fetchall():
        span = _Span(
            trace_id=row[0],
            span_id=row[1],
            parent_span_id=row[2],
            name=row[3],
            kind=row[4],
            start_us=row[5],
            end_us=row[6],
            status_code=row[7],
            status_message=row[8],
            service_name=row[9],
            resource=row[10] or "{}",
            scope_name=row[11],
            scope_version=row[12],
            attributes=json_object(row[13]),
            dropped_attributes=row[14],
            dropped_events=row[15],
            dropped_links=row[16],
        )
        spans[(span.trace_id, span.span_id)] = span
    for trace_id, span_id, timestamp_us, name, attributes in connection.execute(
        "SELECT trace_id, span_id, epoch_us(timestamp), name, attributes::VARCHAR FROM span_events "
        "WHERE trace_id IN (SELECT unnest($ids)) ORDER BY trace_id, span_id, event_index",
        {"ids": trace_ids},
    ).fetchall():
        owner = spans.get((trace_id, span_id))
        if owner is not None:
            owner.events.append((timestamp_us, name, json_object(attributes)))
    for trace_id, span_id, linked_trace, linked_span, attributes in connection.execute(
        "SELECT trace_id, span_id, linked_trace_id, linked_span_id, attributes::VARCHAR FROM span_links "
        "WHERE trace_id IN (SELECT unnest($ids)) ORDER BY trace_id, span_id, link_index",
        {"ids": trace_ids},
    ).fetchall():
        owner = spans.get((trace_id, span_id))
        if owner is not None:
            owner.links.append((linked_trace, linked_span, json_object(attributes)))
    return list(spans.values())


def _spans_by_trace(store: TraceStore, trace_ids: Sequence[str]) -> Iterator[tuple[str, list[_Span]]]:
    for chunk in _chunks(trace_ids):
        # One short connection per chunk: the application's writer gets the file in between.
        with store.connection() as connection:
            spans = _read_spans(connection, chunk)
        grouped: dict[str, list[_Span]] = {trace_id: [] for trace_id in chunk}
        for span in spans:
            grouped[span.trace_id].append(span)
        yield from grouped.items()


# -- Jaeger ------------------------------------------------------------------------------------------


def _jaeger_tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    # Jaeger tags have no array or map type: its own OTLP translator stores those as JSON text too.
    return {"key": key, "type": "string", "value": json.dumps(value, ensure_ascii=False)}


def _jaeger_tags(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [_jaeger_tag(key, value) for key, value in attributes.items() if value is not None]


def _jaeger_span(span: _Span, process_id: str) -> dict[str, Any]:
    references = []
    if span.parent_span_id:
        references.append({"refType": "CHILD_OF", "traceID": span.trace_id, "spanID": span.parent_span_id})
    references.extend(
        {"refType": "FOLLOWS_FROM", "traceID": linked_trace, "spanID": linked_span}
        for linked_trace, linked_span, _ in span.links
    )
    tags = _jaeger_tags(span.attributes)
    # The same extra tags Jaeger's own OTLP receiver adds, so the UI shows kind, scope and errors as usual.
    if span.kind and span.kind != "UNSPECIFIED":
        tags.append(_jaeger_tag("span.kind", span.kind.lower()))
    if span.scope_name:
        tags.append(_jaeger_tag("otel.scope.name", span.scope_name))
    if span.scope_version:
        tags.append(_jaeger_tag("otel.scope.version", span.scope_version))
    if span.status_code in ("OK", "ERROR"):
        tags.append(_jaeger_tag("otel.status_code", span.status_code))
    if span.status_message:
        tags.append(_jaeger_tag("otel.status_description", span.status_message))
    if span.status_code == "ERROR":
        tags.append(_jaeger_tag("error", True))
    logs = [
        {"timestamp": timestamp_us, "fields": [_jaeger_tag("event", name), *_jaeger_tags(attributes)]}
        for timestamp_us, name, attributes in span.events
    ]
    return {
        "traceID": span.trace_id,
        "spanID": span.span_id,
        "operationName": span.name,
        "references": references,
        "flags": 1,
        "startTime": span.start_us,
        "duration": max(span.end_us - span.start_us, 0),
        "tags": tags,
        "logs": logs,
        "processID": process_id,
        "warnings": None,
    }


def jaeger_trace(trace_id: str, spans: Sequence[_Span]) -> dict[str, Any]:
    """One trace in the Jaeger UI's JSON shape."""
    processes: dict[str, dict[str, Any]] = {}
    ids: dict[tuple[str | None, str], str] = {}
    out = []
    for span in spans:
        key = (span.service_name, span.resource)
        process_id = ids.get(key)
        if process_id is None:
            process_id = ids[key] = f"p{len(ids) + 1}"
            resource = {k: v for k, v in json_object(span.resource).items() if k != "service.name"}
            processes[process_id] = {
                "serviceName": span.service_name or "unknown_service",
                "tags": _jaeger_tags(resource),
            }
        out.append(_jaeger_span(span, process_id))
    return {"traceID": trace_id, "spans": out, "processes": processes, "warnings": None}


def export_jaeger_json(
    store: TraceStore,
    output: IO[str],
    *,
    execution: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
) -> ExportSummary:
    """Write the selected traces to `output` as Jaeger UI JSON, one trace at a time."""
    trace_ids = _trace_ids(store, _selection(store, execution, since, until))
    spans = events = 0
    output.write('{"data": [')
    for index, (trace_id, trace_spans) in enumerate(_spans_by_trace(store, trace_ids)):
        output.write(",\n" if index else "\n")
        json.dump(jaeger_trace(trace_id, trace_spans), output, ensure_ascii=False)
        spans += len(trace_spans)
        events += sum(len(span.events) for span in trace_spans)
    output.write('\n], "total": 0, "limit": 0, "offset": 0, "errors": null}\n')
    return ExportSummary(
        "jaeger-json", _name(output), len(trace_ids), {"spans": spans, "span_events": events}
    )


# -- OTLP JSON ---------------------------------------------------------------------------------------


def _otlp_span(span: _Span) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": span.trace_id, "spanId": span.span_id}
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    out["name"] = span.name
    out["kind"] = SPAN_KIND_NUMBERS.get(span.kind or "", 0)
    out["startTimeUnixNano"] = str(span.start_us * 1000)
    out["endTimeUnixNano"] = str(span.end_us * 1000)
    out["attributes"] = key_values_json(span.attributes)
    if span.dropped_attributes:
        out["droppedAttributesCount"] = span.dropped_attributes
    out["events"] = [
        {"timeUnixNano": str(timestamp_us * 1000), "name": name, "attributes": key_values_json(attributes)}
        for timestamp_us, name, attributes in span.events
    ]
    if span.dropped_events:
        out["droppedEventsCount"] = span.dropped_events
    out["links"] = [
        {"traceId": linked_trace, "spanId": linked_span, "attributes": key_values_json(attributes)}
        for linked_trace, linked_span, attributes in span.links
    ]
    if span.dropped_links:
        out["droppedLinksCount"] = span.dropped_links
    status: dict[str, Any] = {"code": STATUS_CODE_NUMBERS.get(span.status_code or "", 0)}
    if span.status_message:
        status["message"] = span.status_message
    out["status"] = status
    return out


def otlp_request(spans: Sequence[_Span]) -> dict[str, Any]:
    """An `ExportTraceServiceRequest` (OTLP/JSON) of these spans, grouped by resource and scope."""
    resources: dict[str, dict[tuple[str | None, str | None], list[dict[str, Any]]]] = {}
    for span in spans:
        scopes = resources.setdefault(span.resource, {})
        scopes.setdefault((span.scope_name, span.scope_version), []).append(_otlp_span(span))
    resource_spans = []
    for resource, scopes in resources.items():
        scope_spans = []
        for (name, version), scope_span_list in scopes.items():
            scope: dict[str, Any] = {}
            if name:
                scope["name"] = name
            if version:
                scope["version"] = version
            scope_spans.append({"scope": scope, "spans": scope_span_list})
        resource_spans.append(
            {"resource": {"attributes": key_values_json(json_object(resource))}, "scopeSpans": scope_spans}
        )
    return {"resourceSpans": resource_spans}


def export_otlp_json(
    store: TraceStore,
    output: IO[str],
    *,
    execution: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
) -> ExportSummary:
    """Write the selected traces to `output` as one OTLP/JSON `ExportTraceServiceRequest`.

    The request is built in memory (spans are grouped by resource and scope
    across traces); export a window or an execution when the database is large.
    """
    trace_ids = _trace_ids(store, _selection(store, execution, since, until))
    spans = [span for _, trace_spans in _spans_by_trace(store, trace_ids) for span in trace_spans]
    json.dump(otlp_request(spans), output, ensure_ascii=False)
    output.write("\n")
    events = sum(len(span.events) for span in spans)
    return ExportSummary(
        "otlp-json", _name(output), len(trace_ids), {"spans": len(spans), "span_events": events}
    )


def _name(output: IO[str]) -> str:
    return str(getattr(output, "name", "<stream>"))


# -- Parquet -----------------------------------------------------------------------------------------


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _table_query(
    connection: duckdb.DuckDBPyConnection, table: str, selection: _Selection, partition: bool
) -> tuple[str, list[Any]]:
    # JSON columns go out as plain strings: every Parquet reader understands those.
    relation = connection.sql(f"SELECT * FROM {table} LIMIT 0")
    columns = [
        f"t.{name}::VARCHAR AS {name}" if str(kind) == "JSON" else f"t.{name}"
        for name, kind in zip(relation.columns, relation.types, strict=True)
    ]
    source = f"{table} t"
    date_column = PARQUET_TABLES[table]
    if date_column is None:
        # Links carry no time of their own: they are dated, and selected, by the span that has them.
        source = f"{table} t JOIN spans s ON s.trace_id = t.trace_id AND s.span_id = t.span_id"
        date_column = "s.start_time"
    else:
        date_column = f"t.{date_column}"
    if partition:
        columns.append(f"({date_column} AT TIME ZONE 'UTC')::DATE AS date")
    where = ""
    params: list[Any] = []
    if selection.sql is not None:
        if table == "execution_logs":
            where = (
                f" WHERE t.execution_id IN (SELECT id FROM workflow_executions WHERE trace_id IN "
                f"({selection.sql}))"
            )
        else:
            where = f" WHERE t.trace_id IN ({selection.sql})"
        params = list(selection.params)
    return f"SELECT {', '.join(columns)} FROM {source}{where}", params


def export_parquet(
    store: TraceStore,
    folder: str | Path,
    *,
    execution: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    partition_by_date: bool = False,
) -> ExportSummary:
    """Write each table to `folder/<table>.parquet`, or to `folder/<table>/date=YYYY-MM-DD/*.parquet`.

    The folder is created if needed; files (or partition folders) of a
    previous export to the same place are replaced. Dates are UTC.
    """
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file: the Parquet export writes a folder of files")
    target.mkdir(parents=True, exist_ok=True)
    selection = _selection(store, execution, since, until)
    rows: dict[str, int] = {}
    files: list[str] = []
    with store.connection() as connection:
        traces = _count_traces(connection, selection)
        for table in PARQUET_TABLES:
            query, params = _table_query(connection, table, selection, partition_by_date)
            if partition_by_date:
                path = target / table
                options = "FORMAT parquet, PARTITION_BY (date), OVERWRITE"
            else:
                path = target / f"{table}.parquet"
                options = "FORMAT parquet"
            result = connection.execute(f"COPY ({query}) TO {_sql_text(str(path))} ({options})", params)
            count = result.fetchone()
            rows[table] = 0 if count is None else int(count[0])
            if partition_by_date:
                # An empty partitioned table writes no folder; make one so that readers find the table.
                path.mkdir(exist_ok=True)
            files.append(str(path))
    return ExportSummary(
        "parquet-partitioned" if partition_by_date else "parquet", str(target), traces, rows, files
    )


def _count_traces(connection: duckdb.DuckDBPyConnection, selection: _Selection) -> int:
    query = selection.sql or "SELECT DISTINCT trace_id FROM spans"
    row = connection.execute(f"SELECT count(*) FROM ({query})", selection.params).fetchone()
    return 0 if row is None else int(row[0])


# -- one entry point ---------------------------------------------------------------------------------


def export(
    store: TraceStore,
    format: str,
    output: str | Path,
    *,
    execution: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    partition_by_date: bool = False,
) -> ExportSummary:
    """Export in one of `FORMATS` to a file (JSON formats; `-` is standard output) or a folder (Parquet)."""
    if format == "parquet":
        return export_parquet(
            store, output, execution=execution, since=since, until=until, partition_by_date=partition_by_date
        )
    if partition_by_date:
        raise ValueError("partition_by_date applies to the Parquet export only")
    writer = {"jaeger-json": export_jaeger_json, "otlp-json": export_otlp_json}.get(format)
    if writer is None:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if str(output) == "-":
        return writer(store, sys.stdout, execution=execution, since=since, until=until)
    path = Path(output)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file name for the {format} export")
    # Written next to the target and renamed, so a failed export never leaves a truncated file behind.
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as stream:
            summary = writer(store, stream, execution=execution, since=since, until=until)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return ExportSummary(summary.format, str(path), summary.traces, summary.rows, [str(path)])
