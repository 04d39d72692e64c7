"""Log records (the OpenTelemetry logs signal) as `log_records` rows: bounded, redacted, always storable.

One builder for every way a record comes in: the SDK's records (`DuckDBLogExporter`, the
`configure()` pipeline) and OTLP log requests from other services (`otlp.decode`). Each record
becomes one row of `ingest.columns.LOG_RECORDS`:

- every text is cut to `MAX_TEXT_CHARS` (a note says how much was cut), a record keeps at most
  `MAX_ATTRIBUTES` attributes (the rest counted in `dropped_attributes`), nested values at most
  `MAX_DEPTH` deep;
- the I/O capture redaction rules apply (`instrument.capture.redaction`): the value under a key like
  `password` becomes `[REDACTED]`, and text shaped like a credential or a card number is scrubbed,
  in the body and the attributes;
- values JSON cannot hold become text (bytes as base64, objects by `str()`, which may fail: then a
  placeholder), and text that is not valid Unicode is repaired, so one record can never fail a batch.
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pyarrow as pa

from otel_workflow.ingest.columns import LOG_RECORDS_SCHEMA
from otel_workflow.instrument.capture.flag import capture_redactor
from otel_workflow.instrument.capture.redaction import REDACTED, Redactor

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_DEPTH",
    "MAX_TEXT_CHARS",
    "REDACTED_MARK",
    "LogRowBuilder",
    "LogRows",
    "RedactedValues",
    "add_sdk_records",
    "convert_sdk_records",
]

#: Set (True) on an API `LogRecord` whose body and attributes `WorkflowLogHandler` redacted already.
REDACTED_MARK: Final = "_otel_workflow_redacted"

MAX_TEXT_CHARS: Final = 32_768
MAX_ATTRIBUTES: Final = 128
MAX_DEPTH: Final = 8
# Items of one list or mapping inside a value (a body that is a huge list stays bounded too).
_MAX_ITEMS: Final = 1_000

_NANOS: Final = 1_000


@dataclass(frozen=True, slots=True)
class LogRows:
    """Converted log records queued for the writer: an Arrow table of `log_records` rows."""

    table: pa.Table

    @property
    def count(self) -> int:
        return int(self.table.num_rows)

    def owners(self) -> list[tuple[str | None, bool]]:
        """No execution owns a log record (the writer keeps executions whole only for spans)."""
        return []


class RedactedValues:
    """Values made storable and redacted: the rules of this module, for the builder and the handler."""

    def __init__(self, redactor: Redactor | None) -> None:
        self._redactor = redactor

    def attributes(self, attributes: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
        """At most `MAX_ATTRIBUTES` attributes, redacted; and how many were left out."""
        if not attributes:
            return {}, 0
        kept: dict[str, Any] = {}
        dropped = 0
        for key, value in attributes.items():
            if len(kept) >= MAX_ATTRIBUTES:
                dropped += 1
                continue
            name = _text(key if isinstance(key, str) else _printable(key), 256) or ""
            kept[name] = self._field(name, value, 0)
        return kept, dropped

    def value(self, value: Any) -> Any:
        """A body or any value as plain JSON data, redacted."""
        return self._value(value, 0)

    def _field(self, key: str, value: Any, depth: int) -> Any:
        redactor = self._redactor
        if redactor is not None and key and redactor.redact_field(key, value):
            return REDACTED
        return self._value(value, depth)

    def _value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self._scrub(_text(value, MAX_TEXT_CHARS) or "")
        if isinstance(value, int):
            if self._redactor is not None and self._redactor.is_card_number(value):
                return REDACTED
            # JSON readers lose integers past 2**63; keep the digits as text.
            return value if -(2**63) <= value < 2**63 else str(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value[: MAX_TEXT_CHARS * 3 // 4])
            return base64.b64encode(raw).decode("ascii")
        if depth >= MAX_DEPTH:
            return self._scrub(_text(_printable(value), MAX_TEXT_CHARS) or "")
        if isinstance(value, Mapping):
            return {
                (_text(key if isinstance(key, str) else _printable(key), 256) or ""): self._field(
                    key if isinstance(key, str) else "", item, depth + 1
                )
                for key, item in list(value.items())[:_MAX_ITEMS]
            }
        if isinstance(value, Sequence):
            return [self._value(item, depth + 1) for item in list(value[:_MAX_ITEMS])]
        return self._scrub(_text(_printable(value), MAX_TEXT_CHARS) or "")

    def _scrub(self, text: str) -> str:
        return text if self._redactor is None else self._redactor.scrub_text(text)


class LogRowBuilder:
    """Collects records as rows and makes the Arrow table of them (`rows()`). Not thread-safe."""

    def __init__(self, redactor: Redactor | None) -> None:
        self._values = RedactedValues(redactor)
        self._bounded = RedactedValues(None)  # for records already redacted (`add(redacted=True)`)
        self._columns: list[list[Any]] = [[] for _ in LOG_RECORDS_SCHEMA.names]
        # Ids: a random prefix per builder and a counter, unique across processes and batches.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._columns[0])

    def add(
        self,
        *,
        time_ns: int | None,
        observed_ns: int | None,
        trace_id: str | None,
        span_id: str | None,
        severity_number: int | None,
        severity_text: str | None,
        body: Any,
        attributes: Mapping[str, Any] | None,
        event_name: str | None,
        dropped_attributes: int,
        service_name: str | None,
        resource_json: str | None,
        scope_name: str | None,
        scope_version: str | None,
        redacted: bool = False,
    ) -> None:
        """One record. Ids are hex text (None for absent or all-zero); times are ns since the epoch
        (a record without a time takes its observed time, one without either the time of now).
        `redacted`: the body and attributes were redacted already (by `WorkflowLogHandler`): they
        are only bounded here."""
        values_of = self._bounded if redacted else self._values
        kept, dropped = values_of.attributes(attributes)
        when = time_ns or observed_ns or time.time_ns()
        self._next_id += 1
        values = (
            f"{self._id_prefix}{self._next_id:016x}",
            when // _NANOS,
            observed_ns // _NANOS if observed_ns else None,
            trace_id,
            span_id,
            severity_number,
            _text(severity_text, 64),
            None if body is None else _dumps(values_of.value(body)),
            _dumps(kept) if kept else None,
            _text(event_name, 256),
            dropped_attributes + dropped,
            _text(service_name, 256),
            resource_json,
            _text(scope_name, 256),
            _text(scope_version, 64),
        )
        for column, value in zip(self._columns, values, strict=True):
            column.append(value)

    def rows(self) -> LogRows:
        """The records added so far as one table (the builder is empty again afterwards)."""
        # Times are collected as integer microseconds: Arrow casts them to timestamps without Python objects.
        arrays = [
            pa.array(column, type=pa.int64()).cast(field.type)
            if pa.types.is_timestamp(field.type)
            else pa.array(column, type=field.type)
            for column, field in zip(self._columns, LOG_RECORDS_SCHEMA, strict=True)
        ]
        self._columns = [[] for _ in LOG_RECORDS_SCHEMA.names]
        return LogRows(pa.Table.from_arrays(arrays, schema=LOG_RECORDS_SCHEMA))

    def resource_json(self, attributes: Mapping[str, Any] | None) -> str | None:
        """A resource's attributes as the JSON text of the `resource_attributes` column (redacted)."""
        kept, _ = self._values.attributes(attributes)
        return _dumps(kept) if kept else None


def _text(value: str | None, limit: int) -> str | None:
    """`value` cut to `limit` characters, with a note of how many were cut; valid Unicode."""
    if value is None:
        return None
    if len(value) > limit:
        value = f"{value[:limit]}… [{len(value) - limit} characters cut]"
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (text decoded with surrogateescape): not storable
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _printable(value: object) -> str:
    try:
        return str(value)
    except Exception:  # an object whose __str__ raises must not fail the record
        return f"<unprintable {type(value).__name__}>"


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except (TypeError, ValueError):  # not reachable with `_value`'s output; never fail a record on it
        return orjson.dumps(_printable(value)).decode("utf-8")


# -- records of the OpenTelemetry SDK -----------------------------------------------------------------


def convert_sdk_records(records: Sequence[Any]) -> tuple[LogRows, int]:
    """The SDK's records as rows, redacted by the process-wide capture policy; and how many were left
    out because they could not be read."""
    builder = LogRowBuilder(capture_redactor())
    rejected = add_sdk_records(builder, records)
    return builder.rows(), rejected


def add_sdk_records(builder: LogRowBuilder, records: Sequence[Any]) -> int:
    """Add the SDK's records (`ReadableLogRecord` or `ReadWriteLogRecord`: both have `log_record`,
    `resource`, `instrumentation_scope`); returns how many could not be read at all (left out)."""
    resources: dict[int, tuple[str | None, str | None]] = {}
    rejected = 0
    for record in records:
        try:
            _add_sdk_record(builder, record, resources)
        except Exception:  # a record that is not one (a broken object from another processor)
            rejected += 1
    return rejected


def _add_sdk_record(
    builder: LogRowBuilder, record: Any, resources: dict[int, tuple[str | None, str | None]]
) -> None:
    log = record.log_record
    resource = record.resource
    known = resources.get(id(resource))
    if known is None:
        attributes = dict(resource.attributes) if resource is not None else {}
        service = attributes.get("service.name")
        known = resources[id(resource)] = (
            service if isinstance(service, str) else None,
            builder.resource_json(attributes),
        )
    scope = record.instrumentation_scope
    severity = log.severity_number
    builder.add(
        time_ns=log.timestamp,
        observed_ns=log.observed_timestamp,
        trace_id=format(log.trace_id, "032x") if log.trace_id else None,
        span_id=format(log.span_id, "016x") if log.span_id else None,
        severity_number=None if severity is None else int(severity.value),
        severity_text=log.severity_text,
        body=log.body,
        attributes=log.attributes,
        event_name=getattr(log, "event_name", None),
        dropped_attributes=int(getattr(record, "dropped_attributes", 0) or 0),
        service_name=known[0],
        resource_json=known[1],
        scope_name=scope.name if scope is not None else None,
        scope_version=scope.version if scope is not None else None,
        redacted=getattr(log, REDACTED_MARK, False),
    )
