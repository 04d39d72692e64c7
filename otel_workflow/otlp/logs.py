"""OTLP log requests (protobuf or JSON) decoded into `log_records` rows.

The collector hands the rows to `TraceStore.submit_logs`; they are made by the builder every way in
uses (`ingest.logrows.LogRowBuilder`: bounded, redacted by the I/O capture rules, always storable),
so a record from a Node or Go service is stored as one logged in-process is. A record of another
service joins its execution and step through its trace and span ids when `execution_logs` is read,
whether its spans came before it or not.

Input is untrusted: a body that is not an `ExportLogsServiceRequest` is a `DecodeError`; a record
whose trace or span id has the wrong length (or, in JSON, is not hex) is left out and counted
(`DecodedLogs.rejected`, for the OTLP partial success answer). Empty or all-zero ids mean "outside
any trace" and are kept as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as PbLogRecord

from otel_workflow.ingest.logrows import LogRowBuilder, LogRows
from otel_workflow.instrument.capture.flag import capture_redactor
from otel_workflow.otlp.decode import (
    DecodeError,
    Rejected,
    Rejections,
    attribute_values,
    decode_any_value,
    json_dicts,
    json_field,
    json_object_of,
    parse_json_document,
    parse_protobuf_as,
    rewrite_hex_id,
)

__all__ = ["DecodeError", "DecodedLogs", "decode_logs_json", "decode_logs_protobuf"]


@dataclass(frozen=True, slots=True)
class DecodedLogs:
    """What one request held: the rows to store, and how many records were rejected and why."""

    rows: LogRows
    rejected: int = 0
    error_message: str = ""


def decode_logs_protobuf(body: bytes) -> DecodedLogs:
    """The rows of a binary protobuf `ExportLogsServiceRequest`; `DecodeError` if it is not one."""
    return to_log_rows(parse_protobuf_as(body, ExportLogsServiceRequest()))


def decode_logs_json(body: bytes | str) -> DecodedLogs:
    """The rows of an OTLP/JSON `ExportLogsServiceRequest` (hex ids); `DecodeError` if it is not one."""
    document = json_object_of(body, "ExportLogsServiceRequest")
    rejections = Rejections("log record")
    for resource_logs in json_dicts(json_field(document, "resourceLogs", "resource_logs")):
        for scope_logs in json_dicts(json_field(resource_logs, "scopeLogs", "scope_logs")):
            records = json_field(scope_logs, "logRecords", "log_records")
            if not isinstance(records, list):
                continue  # left for the protobuf parser to refuse
            kept: list[Any] = []
            for record in records:
                # Both rewritten (no short circuit): a kept record needs both ids in base64.
                trace_hex = not isinstance(record, dict) or rewrite_hex_id(record, "traceId", "trace_id")
                span_hex = not isinstance(record, dict) or rewrite_hex_id(record, "spanId", "span_id")
                if trace_hex and span_hex:
                    kept.append(record)
                else:
                    # A non-hex id would become empty, which for a log record means "outside any trace":
                    # it would lose its run silently. Rejected and counted instead, as a wrong length is.
                    rejections.add(Rejected("trace_id and span_id must be hex in OTLP/JSON"))
            records[:] = kept
    request = parse_json_document(document, ExportLogsServiceRequest())
    return to_log_rows(request, rejections)


def to_log_rows(request: ExportLogsServiceRequest, rejections: Rejections | None = None) -> DecodedLogs:
    """The rows of a parsed request; records with malformed ids are left out and counted (in
    `rejections`, which may hold records left out before parsing)."""
    builder = LogRowBuilder(capture_redactor())
    rejections = rejections or Rejections("log record")
    for resource_logs in request.resource_logs:
        resource = attribute_values(resource_logs.resource.attributes)
        service = resource.get("service.name")
        resource_json = builder.resource_json(resource)
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            for record in scope_logs.log_records:
                try:
                    _add(builder, record, service if isinstance(service, str) else None, resource_json, scope)
                except Exception as exc:  # a record we cannot read costs only itself, never the request
                    rejections.add(exc)
    return DecodedLogs(builder.rows(), rejections.count, rejections.message)


def _add(
    builder: LogRowBuilder, record: PbLogRecord, service: str | None, resource_json: str | None, scope: Any
) -> None:
    builder.add(
        time_ns=record.time_unix_nano or None,
        observed_ns=record.observed_time_unix_nano or None,
        trace_id=_hex_id(record.trace_id, 16, "trace_id"),
        span_id=_hex_id(record.span_id, 8, "span_id"),
        severity_number=record.severity_number or None,
        severity_text=record.severity_text or None,
        body=decode_any_value(record.body) if record.HasField("body") else None,
        attributes=attribute_values(record.attributes),
        event_name=getattr(record, "event_name", "") or None,
        dropped_attributes=record.dropped_attributes_count,
        service_name=service,
        resource_json=resource_json,
        scope_name=scope.name or None,
        scope_version=scope.version or None,
    )


def _hex_id(raw: bytes, size: int, what: str) -> str | None:
    """An id as hex text; None when absent or all zeros (a record outside any trace)."""
    if not raw or not any(raw):
        return None
    if len(raw) != size:
        raise Rejected(f"{what} must be {size} bytes or empty, got {len(raw)}")
    return raw.hex()
