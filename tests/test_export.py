"""OTLP JSON parsed by protobuf, Jaeger JSON as the Jaeger UI reads it, Parquet read back."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from analytics_support import Filled, build_database
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from support import epoch_us

from otel_workflow import TraceStore
from otel_workflow.export.files import PARQUET_TABLES, export, export_jaeger_json, export_otlp_json


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return build_database(tmp_path_factory.mktemp("export") / "traces.duckdb")


@pytest.fixture
def store(filled: Filled) -> TraceStore:
    return TraceStore(filled.path, read_only=True)


def stored_spans(
    store: TraceStore, where: str = "", params: list[Any] | None = None
) -> dict[str, dict[str, Any]]:
    table = store.arrow(
        "SELECT trace_id, span_id, parent_span_id, name, kind, start_time, end_time, status_code, "
        f"status_message, service_name, scope_name, attributes::VARCHAR AS attributes FROM spans {where}",
        params,
    )
    return {row["span_id"]: row for row in table.to_pylist()}


# -- OTLP JSON -------------------------------------------------------------------------------------------

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def hex_ids_to_base64(value: Any) -> Any:
    """OTLP/JSON writes ids as hex where protobuf's generic JSON mapping expects base64: convert them."""
    if isinstance(value, dict):
        return {
            key: base64.b64encode(bytes.fromhex(item)).decode()
            if key in _ID_KEYS
            else hex_ids_to_base64(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [hex_ids_to_base64(item) for item in value]
    return value


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def test_otlp_json_parses_into_export_trace_service_request(store: TraceStore, filled: Filled) -> None:
    out = io.StringIO()
    summary = export_otlp_json(store, out)
    text = out.getvalue()
    document = json.loads(text)
    # As written (hex ids), the document is valid for protobuf's own parser: the field names, enums, types.
    json_format.Parse(text, ExportTraceServiceRequest())
    request = json_format.Parse(json.dumps(hex_ids_to_base64(document)), ExportTraceServiceRequest())

    spans = stored_spans(store)
    assert summary.traces == len(filled.all_ids)
    assert summary.rows["spans"] == len(spans)
    proto_spans = {
        span.span_id.hex(): (resource, scope, span)
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    assert set(proto_spans) == set(spans)
    for span_id, row in spans.items():
        resource, scope, span = proto_spans[span_id]
        assert span.trace_id.hex() == row["trace_id"]
        assert (span.parent_span_id.hex() or None) == row["parent_span_id"]
        assert span.name == row["name"]
        assert span.kind == getattr(ProtoSpan.SpanKind, f"SPAN_KIND_{row['kind']}")
        assert span.start_time_unix_nano == epoch_us(row["start_time"]) * 1000
        assert span.end_time_unix_nano == epoch_us(row["end_time"]) * 1000
        assert span.status.code == getattr(ProtoStatus.StatusCode, f"STATUS_CODE_{row['status_code']}")
        assert (span.status.message or None) == row["status_message"]
        assert {kv.key: plain(kv.value) for kv in span.attributes} == json.loads(row["attributes"])
        assert scope.scope.name == row["scope_name"]
        resource_attributes = {kv.key: plain(kv.value) for kv in resource.resource.attributes}
        assert resource_attributes["service.name"] == row["service_name"]

    # Types survive: the step sequence is an int, the capture flag a bool.
    step = next(span for _, _, span in proto_spans.values() if span.name == "workflow.step.validate")
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in step.attributes}
    assert kinds["workflow.step.sequence"] == "int_value"
    assert kinds["workflow.step.name"] == "string_value"
    assert document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"].isdigit()

    # Events and the link of the old execution.
    events = Counter(event.name for _, _, span in proto_spans.values() for event in span.events)
    [(stored_events,)] = store.sql("SELECT count(*) FROM span_events")
    assert sum(events.values()) == stored_events
    assert events["exception"] >= 2
    linked = [span for _, _, span in proto_spans.values() if span.links]
    [with_link] = linked
    assert with_link.trace_id.hex() == filled.old_trace_id
    assert with_link.links[0].span_id.hex() == with_link.parent_span_id.hex()
    assert {kv.key: plain(kv.value) for kv in with_link.links[0].attributes} == {"why": "test"}


def test_otlp_json_of_one_execution(store: TraceStore, filled: Filled) -> None:
    out = io.StringIO()
    summary = export_otlp_json(store, out, execution=filled.failed_id[:8])
    request = json_format.Parse(
        json.dumps(hex_ids_to_base64(json.loads(out.getvalue()))), ExportTraceServiceRequest()
    )
    [trace_id] = {
        span.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans
    }
    [(expected_trace, expected_count)] = store.sql(
        "SELECT trace_id, (SELECT count(*) FROM spans s WHERE s.trace_id = e.trace_id) "
        "FROM workflow_executions e WHERE id = ?",
        [filled.failed_id],
    )
    assert trace_id == expected_trace
    assert summary.rows["spans"] == expected_count
    assert summary.traces == 1


# -- Jaeger JSON -----------------------------------------------------------------------------------------

_TAG_TYPES = {"string": str, "bool": bool, "int64": int, "float64": float}


def check_tag(tag: dict[str, Any]) -> None:
    assert set(tag) == {"key", "type", "value"}
    assert isinstance(tag["key"], str)
    expected = _TAG_TYPES[tag["type"]]
    assert type(tag["value"]) is expected, tag


def test_jaeger_json_is_what_the_ui_loads(store: TraceStore, filled: Filled, tmp_path: Path) -> None:
    path = tmp_path / "traces.json"
    summary = export(store, "jaeger-json", path)
    assert summary.files == [str(path)]
    document = json.loads(path.read_text(encoding="utf-8"))
    assert set(document) >= {"data"}
    traces = document["data"]
    assert len(traces) == summary.traces == len(filled.all_ids)
    spans = stored_spans(store)
    seen: set[str] = set()
    for trace in traces:
        assert set(trace) >= {"traceID", "spans", "processes"}
        assert len(trace["traceID"]) == 32
        ids = {span["spanID"] for span in trace["spans"]}
        for process in trace["processes"].values():
            assert isinstance(process["serviceName"], str)
            for tag in process["tags"]:
                check_tag(tag)
            assert "service.name" not in {tag["key"] for tag in process["tags"]}
        for span in trace["spans"]:
            seen.add(span["spanID"])
            row = spans[span["spanID"]]
            assert span["traceID"] == trace["traceID"] == row["trace_id"]
            assert span["operationName"] == row["name"]
            assert type(span["startTime"]) is int and type(span["duration"]) is int
            assert span["startTime"] == epoch_us(row["start_time"])
            assert span["duration"] == epoch_us(row["end_time"]) - epoch_us(row["start_time"])
            assert span["processID"] in trace["processes"]
            assert trace["processes"][span["processID"]]["serviceName"] == row["service_name"]
            parents = [ref for ref in span["references"] if ref["refType"] == "CHILD_OF"]
            if row["parent_span_id"] is None:
                assert parents == []
            else:
                # References point at real spans of the same trace.
                assert parents == [
                    {"refType": "CHILD_OF", "traceID": row["trace_id"], "spanID": row["parent_span_id"]}
                ]
                assert row["parent_span_id"] in ids
            for tag in span["tags"]:
                check_tag(tag)
            tags = {tag["key"]: tag["value"] for tag in span["tags"]}
            for key, value in json.loads(row["attributes"]).items():
                assert tags[key] == value
            assert tags["span.kind"] == row["kind"].lower()
            assert tags.get("error", False) is (row["status_code"] == "ERROR")
            for log in span["logs"]:
                assert type(log["timestamp"]) is int
                assert span["startTime"] <= log["timestamp"] <= span["startTime"] + span["duration"]
                assert log["fields"][0]["key"] == "event"
                for field in log["fields"]:
                    check_tag(field)
    assert seen == set(spans)

    by_id = {span["spanID"]: span for trace in traces for span in trace["spans"]}
    failed_step = next(
        span
        for span in by_id.values()
        if span["operationName"] == "workflow.step.reserve-stock"
        and any(tag["key"] == "error" for tag in span["tags"])
    )
    assert failed_step["logs"][0]["fields"][0]["value"] == "exception"
    tags = {tag["key"]: tag for tag in failed_step["tags"]}
    assert tags["workflow.step.sequence"]["type"] == "int64"
    assert tags["otel.status_code"]["value"] == "ERROR"
    follows = [
        ref for span in by_id.values() for ref in span["references"] if ref["refType"] == "FOLLOWS_FROM"
    ]
    assert len(follows) == 1 and follows[0]["traceID"] == filled.old_trace_id


def test_jaeger_json_window(store: TraceStore, filled: Filled) -> None:
    out = io.StringIO()
    summary = export_jaeger_json(store, out, until="7d")
    [trace] = json.loads(out.getvalue())["data"]
    assert trace["traceID"] == filled.old_trace_id
    assert summary.traces == 1
    out = io.StringIO()
    export_jaeger_json(store, out, since="1d", execution=filled.old_id)
    assert json.loads(out.getvalue())["data"] == []


# -- Parquet ---------------------------------------------------------------------------------------------


def table_counts(store: TraceStore) -> dict[str, int]:
    return {table: store.sql(f"SELECT count(*) FROM {table}")[0][0] for table in PARQUET_TABLES}


def test_parquet_one_file_per_table(store: TraceStore, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    summary = export(store, "parquet", folder)
    counts = table_counts(store)
    assert summary.rows == counts
    for table, count in counts.items():
        path = folder / f"{table}.parquet"
        with duckdb.connect() as connection:
            assert connection.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone() == (
                count,
            )
        arrow = pq.read_table(path)
        assert arrow.num_rows == count, table
    spans = pq.read_table(folder / "spans.parquet")
    # JSON columns are plain strings, timestamps keep microseconds and their UTC zone.
    assert str(spans.schema.field("attributes").type) == "string"
    assert str(spans.schema.field("start_time").type) == "timestamp[us, tz=UTC]"
    stored = store.sql("SELECT min(start_time) FROM spans")[0][0]
    assert spans.column("start_time").to_pylist()[0] is not None
    assert min(spans.column("start_time").to_pylist()) == stored
    # A second export to the same folder replaces the files.
    export(store, "parquet", folder)
    assert pq.read_table(folder / "spans.parquet").num_rows == counts["spans"]


def test_parquet_partitioned_by_date(store: TraceStore, filled: Filled, tmp_path: Path) -> None:
    folder = tmp_path / "partitioned"
    summary = export(store, "parquet", folder, partition_by_date=True)
    counts = table_counts(store)
    assert summary.rows == counts
    for table, count in counts.items():
        dates = {path.name for path in (folder / table).iterdir()}
        column = PARQUET_TABLES[table] or "start_time"
        source = "spans WHERE span_id IN (SELECT span_id FROM span_links)" if table == "span_links" else table
        expected = store.sql(
            f"SELECT DISTINCT strftime(({column} AT TIME ZONE 'UTC')::DATE, 'date=%Y-%m-%d') FROM {source}"
        )
        assert dates == {row[0] for row in expected}, table
        assert len(dates) >= (1 if table == "span_links" else 2)  # the old trace is ten days older
        with duckdb.connect() as connection:
            read = connection.execute(
                "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)",
                [str(folder / table / "**" / "*.parquet")],
            ).fetchone()
        assert read == (count,), table
        assert ds.dataset(folder / table, format="parquet", partitioning="hive").count_rows() == count
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(folder / "workflow_executions")
    assert len(frame) == counts["workflow_executions"]
    assert filled.old_id in set(frame["id"])


def test_parquet_of_one_execution(store: TraceStore, filled: Filled, tmp_path: Path) -> None:
    summary = export(store, "parquet", tmp_path / "one", execution=filled.captured_id)
    assert summary.traces == 1
    [(trace_id,)] = store.sql("SELECT trace_id FROM workflow_executions WHERE id = ?", [filled.captured_id])
    expected = {
        "spans": store.sql("SELECT count(*) FROM spans WHERE trace_id = ?", [trace_id])[0][0],
        "workflow_executions": 1,
        "execution_steps": 1,
        "execution_logs": store.sql(
            "SELECT count(*) FROM execution_logs WHERE execution_id = ?", [filled.captured_id]
        )[0][0],
    }
    for table, count in expected.items():
        assert summary.rows[table] == count, table
        assert pq.read_table(tmp_path / "one" / f"{table}.parquet").num_rows == count


def test_export_argument_errors(store: TraceStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        export(store, "yaml", tmp_path / "x")
    with pytest.raises(ValueError, match="Parquet export only"):
        export(store, "otlp-json", tmp_path / "x.json", partition_by_date=True)
    with pytest.raises(IsADirectoryError):
        export(store, "otlp-json", tmp_path)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(NotADirectoryError):
        export(store, "parquet", file)
    with pytest.raises(LookupError):
        export(store, "jaeger-json", tmp_path / "y.json", execution="no-such-execution")
    assert not (tmp_path / "y.json").exists()
    assert not (tmp_path / "y.json.partial").exists()
