"""`POST /v1/logs`: OTLP/HTTP log records from other processes into `log_records`, joined to their runs.

A real collector on 127.0.0.1, the real OTLP exporters of another process, real DuckDB files.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from collector_support import Served, served
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_workflow import WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.ingest.logrows import MAX_TEXT_CHARS
from otel_workflow.instrument.capture.redaction import REDACTED
from otel_workflow.server.app import ReceiverLimits

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Another service: logs through the OpenTelemetry API and spans of a run, both over OTLP/HTTP.
SENDER = textwrap.dedent(
    """
    import json, logging, sys
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from otel_workflow import WorkflowLogHandler, WorkflowSpanProcessor, WorkflowTracer

    url = sys.argv[1]
    resource = Resource.create({"service.name": "billing-svc"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(WorkflowSpanProcessor())
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces")))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=url + "/v1/logs"))
    )
    log = logging.Logger("billing")  # outside the logging tree: only the OpenTelemetry handler
    log.addHandler(WorkflowLogHandler(logger_provider=logger_provider))
    wf = WorkflowTracer("invoicing", tracer_provider=tracer_provider)
    with wf.execution(trigger_type="queue") as run, wf.step("render-pdf"):
        log.warning("font %s missing, using a fallback", "Garamond", extra={"password": "hunter2"})
    log.warning("worker idle")
    # Logs first, then the spans: the records reach the collector before their spans.
    logger_provider.shutdown()
    tracer_provider.shutdown()
    print(json.dumps({"execution_id": run.execution_id}))
    """
)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path / "collector.duckdb") as server:
        yield server


def _request(*records: LogRecord, service: str = "node-svc") -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
                ),
                scope_logs=[ScopeLogs(log_records=list(records))],
            )
        ]
    )


def _record(body: str, **fields: Any) -> LogRecord:
    fields.setdefault("time_unix_nano", 1_700_000_000_000_000_000)
    return LogRecord(severity_number=13, severity_text="WARN", body=AnyValue(string_value=body), **fields)


def _post(server: Served, body: bytes, content_type: str = PROTOBUF, **headers: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/logs", content=body, headers={"content-type": content_type, **headers}, timeout=30
    )


def test_another_process_sends_logs_before_its_spans_and_they_join_its_run(collector: Served) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SENDER, collector.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    execution_id = json.loads(done.stdout.strip().splitlines()[-1])["execution_id"]
    assert collector.store.flush(30)
    rows = [row for row in collector.store.logs(execution_id) if row.id.startswith("log:")]
    [row] = rows
    step = next(s for s in collector.store.steps(execution_id) if s.step_name == "render-pdf")
    assert (row.step_id, row.module_name, row.level) == (step.id, "render-pdf", "warning")
    assert row.message == "font Garamond missing, using a fallback"
    assert row.fields["password"] == REDACTED and row.fields["logger"] == "billing"
    [(trace_id,)] = collector.store.sql("SELECT trace_id FROM execution_steps WHERE id = ?", [step.id])
    assert collector.store.sql(
        "SELECT body ->> '$', trace_id, span_id, service_name, attributes ->> 'password' FROM log_records "
        "ORDER BY trace_id NULLS LAST"
    ) == [
        ("font Garamond missing, using a fallback", trace_id, step.id, "billing-svc", REDACTED),
        ("worker idle", None, None, "billing-svc", None),
    ]
    # The record outside any run is stored, and is no execution's log line.
    assert collector.store.sql("SELECT count(*) FROM execution_logs WHERE message = 'worker idle'") == [(0,)]
    status = httpx.get(collector.url + "/api/status", timeout=30).json()
    assert status["accepted_log_records"] == 2 and status["rejected_log_records"] == 0


def test_logs_stored_before_their_spans_join_the_run_once_the_spans_arrive(collector: Served) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "shop"}))
    provider.add_span_processor(WorkflowSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    wf = WorkflowTracer("checkout", tracer_provider=provider)
    with wf.execution(trigger_type="http") as run, wf.step("pay") as step:
        context = step.span.get_span_context()
    provider.shutdown()
    ids = {"trace_id": context.trace_id.to_bytes(16, "big"), "span_id": context.span_id.to_bytes(8, "big")}
    # Its time is that of the run: `store.logs(execution_id)` reads the execution's time window.
    record = _record("card declined", time_unix_nano=time.time_ns(), **ids)
    assert _post(collector, _request(record).SerializeToString()).status_code == 200
    assert collector.store.flush(30)
    # Stored, and not yet anyone's: its run has not arrived.
    assert collector.store.sql("SELECT count(*) FROM log_records") == [(1,)]
    assert collector.store.sql("SELECT count(*) FROM execution_logs WHERE id LIKE 'log:%'") == [(0,)]
    exporter = OTLPSpanExporter(endpoint=collector.traces_url)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert collector.store.flush(30)
    step_id = f"{context.span_id:016x}"
    assert collector.store.sql(
        "SELECT execution_id, step_id, level, message FROM execution_logs WHERE id LIKE 'log:%'"
    ) == [(run.execution_id, step_id, "warning", "card declined")]
    [row] = [row for row in collector.store.logs(run.execution_id) if row.id.startswith("log:")]
    assert (row.step_id, row.module_name) == (step_id, "pay")


def test_json_with_hex_ids_and_gzip_protobuf_are_accepted(collector: Served) -> None:
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    document = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "go-svc"}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "go.logger"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000000",
                                "severityNumber": 17,
                                "body": {"stringValue": "from json"},
                                "traceId": trace_id,
                                "spanId": span_id,
                                "attributes": [{"key": "api_key", "value": {"stringValue": "s3cr3t"}}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    answer = _post(collector, json.dumps(document).encode(), JSON)
    assert answer.status_code == 200 and answer.json() == {}
    compressed = gzip.compress(_request(_record("from gzip")).SerializeToString())
    assert _post(collector, compressed, PROTOBUF, **{"content-encoding": "gzip"}).status_code == 200
    assert collector.store.flush(30)
    rows = collector.store.sql(
        "SELECT body ->> '$', trace_id, span_id, severity_number, scope_name, attributes ->> 'api_key' "
        "FROM log_records ORDER BY body ->> '$'"
    )
    assert rows == [
        ("from gzip", None, None, 13, None, None),
        ("from json", trace_id, span_id, 17, "go.logger", REDACTED),
    ]


def test_records_with_malformed_ids_are_rejected_and_reported_as_partial_success(collector: Served) -> None:
    request = _request(
        _record("good"), _record("short trace id", trace_id=b"\x01" * 5), _record("no trace", span_id=b"")
    )
    answer = _post(collector, request.SerializeToString())
    assert answer.status_code == 200
    partial = ExportLogsServiceResponse.FromString(answer.content).partial_success
    assert partial.rejected_log_records == 1 and "trace_id" in partial.error_message
    json_answer = _post(
        collector,
        json.dumps(
            {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "abcd", "body": {}}]}]}]}
        ).encode(),
        JSON,
    )
    assert json_answer.json()["partialSuccess"]["rejectedLogRecords"] == "1"
    # Not hex: rejected, not stored as a record outside any trace.
    not_hex = {"traceId": "z" * 32, "spanId": "eee19b7ec3c1b174", "body": {"stringValue": "not hex"}}
    hex_ok = {"body": {"stringValue": "kept beside it"}}
    document = {"resourceLogs": [{"scopeLogs": [{"logRecords": [not_hex, hex_ok]}]}]}
    partial_json = _post(collector, json.dumps(document).encode(), JSON).json()["partialSuccess"]
    assert partial_json["rejectedLogRecords"] == "1" and "hex" in partial_json["errorMessage"]
    status = httpx.get(collector.url + "/api/status", timeout=30).json()
    assert (status["accepted_log_records"], status["rejected_log_records"]) == (3, 3)
    assert collector.store.flush(30)
    assert sorted(row[0] for row in collector.store.sql("SELECT body ->> '$' FROM log_records")) == [
        "good",
        "kept beside it",
        "no trace",
    ]


SMALL = ReceiverLimits(max_body_bytes=64 * 1024, max_decompressed_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def small_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("small-logs") / "c.duckdb", limits=SMALL) as server:
        yield server


def _bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(compressor.compress(b"\0" * (1024 * 1024)) for _ in range(8)) + compressor.flush()


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status"),
    [
        (b"\xff\x00garbage", PROTOBUF, {}, 400),
        (_request(_record("cut")).SerializeToString()[:-3], PROTOBUF, {}, 400),
        (b'{"resourceLogs": [', JSON, {}, 400),
        (b'{"resourceLogs": 7}', JSON, {}, 400),
        (b'"a string"', JSON, {}, 400),
        (b"\0" * (65 * 1024), PROTOBUF, {}, 413),
        (_bomb(), PROTOBUF, {"content-encoding": "gzip"}, 413),
        (b"{}", "text/plain", {}, 415),
    ],
    ids=[
        "garbage",
        "truncated",
        "malformed json",
        "wrong shape",
        "not an object",
        "oversized",
        "bomb",
        "type",
    ],
)
def test_hostile_bodies_get_their_status_and_the_server_keeps_serving(
    small_collector: Served, body: bytes, content_type: str, headers: dict[str, str], status: int
) -> None:
    answer = _post(small_collector, body, content_type, **headers)
    assert answer.status_code == status, answer.text
    assert _post(small_collector, _request(_record("still serving")).SerializeToString()).status_code == 200


def test_huge_and_undecodable_bodies_are_stored_bounded(collector: Served) -> None:
    huge = _record("y" * 1024 * 1024)
    binary = LogRecord(time_unix_nano=1, body=AnyValue(bytes_value=b"\xff\xfe\x00 raw"))
    # Invalid UTF-8 inside a JSON string: the parser refuses the body as a whole, with a 400.
    bad_utf8 = b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "\xff\xfe"}}]}]}]}'
    assert _post(collector, bad_utf8, JSON).status_code == 400
    assert _post(collector, _request(huge, binary).SerializeToString()).status_code == 200
    assert collector.store.flush(30)
    bodies = sorted((row[0] for row in collector.store.sql("SELECT body ->> '$' FROM log_records")), key=len)
    assert bodies[0] == "//4AIHJhdw==" and "characters cut" in bodies[1]
    assert len(bodies[1]) < MAX_TEXT_CHARS + 100


def test_the_hand_written_logs_answer_is_the_protobuf_librarys() -> None:
    from google.protobuf import json_format  # noqa: PLC0415
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: PLC0415
        ExportLogsPartialSuccess,
    )

    from otel_workflow.otlp.encode import export_response_json, export_response_protobuf  # noqa: PLC0415

    expected = ExportLogsServiceResponse(
        partial_success=ExportLogsPartialSuccess(rejected_log_records=3, error_message="trace_id too short")
    )
    assert export_response_protobuf(3, "trace_id too short") == expected.SerializeToString()
    assert export_response_json(3, "trace_id too short", rejected_field="rejectedLogRecords") == (
        json_format.MessageToDict(expected)
    )
