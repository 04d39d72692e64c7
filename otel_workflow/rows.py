"""Conversion of OpenTelemetry spans into Arrow batches shaped like the DuckDB tables.

One finished span becomes one `spans` row (with the promoted workflow columns),
one `span_events` row per event and one `span_links` row per link. A span that
has just started becomes one `running_spans` row. Nothing here raises on odd
input: values that JSON cannot hold are stored as text, and strings that are
not valid UTF-8 (lone surrogates) are stored with replacement characters.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pyarrow as pa
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span
from opentelemetry.trace import SpanKind, StatusCode

from otel_workflow import conventions as cv
from otel_workflow.text import utf8

_TS = pa.timestamp("us", tz="UTC")

_SPANS_FIELDS: list[pa.Field[Any]] = [
    pa.field("trace_id", pa.string()),
    pa.field("span_id", pa.string()),
    pa.field("parent_span_id", pa.string()),
    pa.field("name", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("start_time", _TS),
    pa.field("end_time", _TS),
    pa.field("duration_ms", pa.float64()),
    pa.field("status_code", pa.string()),
    pa.field("status_message", pa.string()),
    pa.field("service_name", pa.string()),
    pa.field("resource_attributes", pa.string()),
    pa.field("scope_name", pa.string()),
    pa.field("scope_version", pa.string()),
    pa.field("attributes", pa.string()),
    pa.field("dropped_attributes", pa.int32()),
    pa.field("dropped_events", pa.int32()),
    pa.field("dropped_links", pa.int32()),
    pa.field("workflow_role", pa.string()),
    pa.field("execution_id", pa.string()),
    pa.field("workflow_id", pa.string()),
    pa.field("step_name", pa.string()),
    pa.field("step_type", pa.string()),
    pa.field("step_sequence", pa.int64()),
    pa.field("parent_step_id", pa.string()),
    pa.field("workflow_status", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("trigger_type", pa.string()),
    pa.field("triggered_by", pa.string()),
    pa.field("config_version", pa.string()),
    pa.field("capture_io", pa.bool_()),
    pa.field("input_data", pa.string()),
    pa.field("output_data", pa.string()),
]
SPANS_SCHEMA = pa.schema(_SPANS_FIELDS)

_EVENTS_FIELDS: list[pa.Field[Any]] = [
    pa.field("trace_id", pa.string()),
    pa.field("span_id", pa.string()),
    pa.field("event_index", pa.int32()),
    pa.field("name", pa.string()),
    pa.field("timestamp", _TS),
    pa.field("attributes", pa.string()),
]
EVENTS_SCHEMA = pa.schema(_EVENTS_FIELDS)

_LINKS_FIELDS: list[pa.Field[Any]] = [
    pa.field("trace_id", pa.string()),
    pa.field("span_id", pa.string()),
    pa.field("link_index", pa.int32()),
    pa.field("linked_trace_id", pa.string()),
    pa.field("linked_span_id", pa.string()),
    pa.field("attributes", pa.string()),
]
LINKS_SCHEMA = pa.schema(_LINKS_FIELDS)

# A live row has the columns of `spans` that are known when a span starts, plus who wrote it.
_RUNNING_FIELDS: list[pa.Field[Any]] = [
    *(
        SPANS_SCHEMA.field(name)
        for name in (
            "trace_id",
            "span_id",
            "parent_span_id",
            "name",
            "start_time",
            "service_name",
            "workflow_role",
            "execution_id",
            "workflow_id",
            "step_name",
            "step_type",
            "step_sequence",
            "parent_step_id",
            "trigger_type",
            "triggered_by",
            "config_version",
            "capture_io",
        )
    ),
    pa.field("writer_id", pa.string()),
    pa.field("pid", pa.int64()),
]
RUNNING_SCHEMA = pa.schema(_RUNNING_FIELDS)

_WARM_UP_SCHEMA = pa.schema([pa.field("text", pa.string())])

_STATUS_NAMES = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}
# `SpanKind.name` is a descriptor call per access; a lookup is a fraction of it.
_KIND_NAMES = {kind: kind.name for kind in SpanKind}


_COMPACT = (",", ":")


def _json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return utf8(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {utf8(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return utf8(str(value))
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def plain_attributes(attributes: Any) -> Mapping[str, Any]:
    """The plain dict behind SDK attributes, for fast lookups and `json.dumps`.

    The SDK's `BoundedAttributes` is a Mapping whose every lookup runs Python code under a
    lock; on a finished span it no longer changes, so its inner `_dict` is read directly
    when it is there, with the public Mapping interface as the fallback.
    """
    if type(attributes) is dict:  # already plain (the common case on the hot path): no getattr miss
        return attributes
    if attributes is None:
        return {}
    inner = getattr(attributes, "_dict", None)
    if isinstance(inner, dict):
        return inner
    return attributes if isinstance(attributes, dict) else dict(attributes)


def span_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """A span's attributes as a plain dict (see `plain_attributes`)."""
    # ReadableSpan.attributes wraps them in a MappingProxyType, which hides `_dict`.
    return plain_attributes(getattr(span, "_attributes", None) or span.attributes)


def attributes_json(attributes: Mapping[str, Any] | None) -> str:
    """Attributes as a JSON object.

    The fast path is orjson (about 14x the standard library's `json.dumps` on typical attributes,
    which made JSON the largest cost of converting a span). It refuses what JSON cannot hold
    (lone surrogates, odd types); those take the safe path, which stores them as text.
    """
    if not attributes:
        return "{}"
    try:
        return orjson.dumps(plain_attributes(attributes)).decode()
    except (TypeError, ValueError):
        return json.dumps(_json_safe(attributes), ensure_ascii=False, allow_nan=False, separators=_COMPACT)


def hex_trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def hex_span_id(span_id: int) -> str:
    return f"{span_id:016x}"


@dataclass(slots=True)
class _ResourceInfo:
    service_name: str | None
    attributes_json: str


class _ResourceCache:
    """Resources are shared by all spans of a provider: describe each one once."""

    def __init__(self, limit: int = 64) -> None:
        self._by_id: dict[int, tuple[Resource, _ResourceInfo]] = {}
        self._limit = limit

    def get(self, resource: Resource | None) -> _ResourceInfo:
        if resource is None:
            return _ResourceInfo(None, "{}")
        hit = self._by_id.get(id(resource))
        if hit is not None and hit[0] is resource:
            return hit[1]
        attributes = resource.attributes
        name = attributes.get("service.name")
        info = _ResourceInfo(None if name is None else str(name), attributes_json(attributes))
        if len(self._by_id) >= self._limit:
            self._by_id.clear()
        self._by_id[id(resource)] = (resource, info)
        return info


def _error_message(span: ReadableSpan) -> str | None:
    if span.status.status_code is not StatusCode.ERROR:
        return None
    if span.status.description:
        return utf8(span.status.description)
    for event in reversed(span.events):
        if event.name == "exception" and event.attributes:
            kind = event.attributes.get("exception.type", "")
            message = event.attributes.get("exception.message", "")
            return utf8(f"{kind}: {message}" if kind and message else str(kind or message)) or None
    return None


def _workflow_status(declared: str | None, failed: bool) -> str:
    # Compensation is the outcome even of a step that failed; a step that failed after skip() failed.
    if declared == "compensated":
        return declared
    if failed:
        return "failed"
    return "skipped" if declared == "skipped" else "completed"


@dataclass(slots=True)
class SpanBatch:
    """Arrow tables for one batch of finished spans."""

    spans: pa.Table
    events: pa.Table
    links: pa.Table

    @property
    def span_count(self) -> int:
        return self.spans.num_rows


class SpanConverter:
    """Builds Arrow batches from SDK spans; reuses resource descriptions across batches."""

    def __init__(self) -> None:
        self._resources = _ResourceCache()

    def finished(self, spans: Iterable[ReadableSpan]) -> SpanBatch:
        # The hot loop of the writer (its Python time is GIL time taken from the application): each
        # value is read once, and text is not checked here but per column in `_array`.
        span_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        link_rows: list[tuple[Any, ...]] = []
        resources = self._resources
        for span in spans:
            context = span.context
            if context is None:
                continue
            trace_id = hex_trace_id(context.trace_id)
            span_id = hex_span_id(context.span_id)
            parent = span.parent
            attributes = span_attributes(span)
            name = span.name
            start = span.start_time or 0
            end = span.end_time
            if end is None:
                end = start
            status = span.status
            status_code = status.status_code
            resource = resources.get(span.resource)
            scope = span.instrumentation_scope
            found = cv.recognise(name, attributes)
            role = found.role
            failed = status_code is StatusCode.ERROR or found.declared_status == "failed"
            input_data = output_data = None
            # Without the public properties' copies (they copy twice, under a lock) where we know the class.
            sdk_span = type(span) in _SDK_SPAN_TYPES
            events = span._events if sdk_span else span.events
            if events:
                for index, event in enumerate(events):
                    event_name = event.name
                    event_attributes = plain_attributes(event.attributes)
                    if event_name in _IO_EVENTS:
                        payload = _io_payload(event_attributes)
                        if event_name == cv.IO_OUTPUT_EVENT:
                            output_data = payload
                        else:
                            input_data = payload
                    event_rows.append(
                        (
                            trace_id,
                            span_id,
                            index,
                            event_name,
                            event.timestamp // 1000,
                            attributes_json(event_attributes),
                        )
                    )
            links = span._links if sdk_span else span.links
            if links:
                for index, link in enumerate(links):
                    link_rows.append(
                        (
                            trace_id,
                            span_id,
                            index,
                            hex_trace_id(link.context.trace_id),
                            hex_span_id(link.context.span_id),
                            attributes_json(link.attributes),
                        )
                    )
            span_rows.append(
                (
                    trace_id,
                    span_id,
                    None if parent is None else hex_span_id(parent.span_id),
                    name,
                    _KIND_NAMES[span.kind],
                    start // 1000,
                    end // 1000,
                    (end - start) / 1e6,
                    _STATUS_NAMES[status_code],
                    status.description,
                    resource.service_name,
                    resource.attributes_json,
                    None if scope is None else scope.name,
                    None if scope is None else scope.version,
                    attributes_json(attributes),
                    span.dropped_attributes,
                    span.dropped_events,
                    span.dropped_links,
                    role,
                    found.execution_id,
                    found.workflow_id,
                    found.step_name,
                    found.step_type,
                    found.step_sequence,
                    found.parent_step_id,
                    None if role is None else _workflow_status(found.declared_status, failed),
                    _error_message(span) if failed else None,
                    found.trigger_type,
                    found.triggered_by,
                    found.config_version,
                    found.capture_io if role is not None else None,
                    input_data,
                    output_data,
                )
            )
        return SpanBatch(
            spans=_table(span_rows, SPANS_SCHEMA),
            events=_table(event_rows, EVENTS_SCHEMA),
            links=_table(link_rows, LINKS_SCHEMA),
        )


_IO_EVENTS: Final = frozenset((cv.IO_INPUT_EVENT, cv.EXECUTION_INPUT_EVENT, cv.IO_OUTPUT_EVENT))


# Classes whose `events`/`links` are known to be copies of `_events`/`_links` (a subclass may differ).
_SDK_SPAN_TYPES: Final = (ReadableSpan, Span)


def prepare_conversion() -> None:
    """Make pyarrow load what its first conversion of Python values loads, on the calling thread.

    That is its pandas support: hundreds of modules (about 50 MB) when pandas is installed. A store that
    writes calls this at set-up: in the writer thread, next to an application thread that keeps the GIL,
    every file the import reads cost a GIL hand-over, and the first write took seconds
    (benchmarks/memory.py, overload). A read-only store never converts, so it does not pay for it.
    """
    _table([("",)], _WARM_UP_SCHEMA)


def _io_payload(attributes: Mapping[str, Any]) -> str | None:
    payload = attributes.get(cv.IO_JSON)
    if payload is None:
        return None
    text = utf8(str(payload))
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        # Not from our tracer (which always writes JSON): keep it, as a JSON string.
        return orjson.dumps(text).decode()
    return text


def _table(rows: Sequence[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [_array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


def _array(values: Sequence[Any], kind: pa.DataType) -> pa.Array[Any]:
    try:
        return pa.array(values, type=kind)
    except UnicodeEncodeError:
        # A lone surrogate in some text (a service name, an attribute lifted into a column): only then
        # is the column cleaned value by value, so the common case pays nothing.
        return pa.array([utf8(v) if isinstance(v, str) else v for v in values], type=kind)


@dataclass(frozen=True, slots=True)
class RunningRecord:
    """What the processor knows of an execution or step span when it starts."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_time_us: int
    service_name: str | None
    found: cv.Recognised

    @classmethod
    def of(cls, span: ReadableSpan) -> RunningRecord | None:
        context = span.context
        if context is None:
            return None
        attributes = span_attributes(span)
        name = utf8(span.name)
        found = cv.recognise(name, attributes)
        if found.role is None:
            return None
        resource = span.resource
        service = None if resource is None else resource.attributes.get("service.name")
        return cls(
            trace_id=hex_trace_id(context.trace_id),
            span_id=hex_span_id(context.span_id),
            parent_span_id=None if span.parent is None else hex_span_id(span.parent.span_id),
            name=name,
            start_time_us=(span.start_time or 0) // 1000,
            service_name=None if service is None else str(service),
            found=found,
        )


def running_table(records: Sequence[RunningRecord], writer_id: str) -> pa.Table:
    pid = os.getpid()
    rows = [
        (
            r.trace_id,
            r.span_id,
            r.parent_span_id,
            r.name,
            r.start_time_us,
            r.service_name,
            r.found.role,
            r.found.execution_id,
            r.found.workflow_id,
            r.found.step_name,
            r.found.step_type,
            r.found.step_sequence,
            r.found.parent_step_id,
            r.found.trigger_type,
            r.found.triggered_by,
            r.found.config_version,
            r.found.capture_io,
            writer_id,
            pid,
        )
        for r in records
    ]
    return _table(rows, RUNNING_SCHEMA)
