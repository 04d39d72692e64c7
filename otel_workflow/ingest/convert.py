"""Conversion of OpenTelemetry spans into Arrow batches shaped like the DuckDB tables.

One finished span becomes one `spans` row (with the promoted workflow columns),
one `span_events` row per event and one `span_links` row per link. A workflow span
that is still running becomes one `running_spans` row, cut from its `spans` row.
Nothing here raises on odd input: values that JSON cannot hold are stored as text,
and strings that are not valid UTF-8 (lone surrogates) are stored with replacement
characters.

The conversion runs in C (`_native/spanrows.c`, built at install where a compiler is found)
and in Python (`SpanConverter._python_batch`), which is the reference: both give the
same rows (tests/test_native_rows.py), and whatever the C code does not read (a span
class of another shape, an odd value) it hands to the Python loop. The rows have the
columns of `ingest.columns`, in its order (the C module's are checked against them when
it is configured, at import), and the workflow columns follow `model.conventions`
(which the C module is given, through `_native.rules`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from otel_workflow._native.rules import RECOGNITION
from otel_workflow.ingest.columns import (
    EVENTS_SCHEMA,
    LINKS_SCHEMA,
    RUNNING_COLUMNS,
    SPAN_EVENTS,
    SPAN_LINKS,
    SPANS,
    SPANS_SCHEMA,
)
from otel_workflow.model import conventions as cv
from otel_workflow.model.conventions import workflow_status
from otel_workflow.model.utf8 import utf8

try:
    from otel_workflow._native import spanrows as _spanrows
except ImportError:  # installed where no C compiler was found: the Python loop does the same work
    _spanrows = None  # type: ignore[assignment]

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
    # ReadableSpan.attributes wraps them in a MappingProxyType, which hides `_dict`. (No `or`: the
    # truth of BoundedAttributes is a Python-level __len__.)
    attributes = getattr(span, "_attributes", None)
    return plain_attributes(span.attributes if attributes is None else attributes)


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


class _ResourceInfo(NamedTuple):
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


@dataclass(slots=True)
class SpanBatch:
    """Arrow tables for one batch of finished spans."""

    spans: pa.Table
    events: pa.Table
    links: pa.Table

    @staticmethod
    def concat(batches: Sequence[SpanBatch]) -> SpanBatch:
        """One batch of all the rows of `batches` (at least one), in order."""
        if len(batches) == 1:
            return batches[0]
        return SpanBatch(
            spans=pa.concat_tables([batch.spans for batch in batches]),
            events=pa.concat_tables([batch.events for batch in batches]),
            links=pa.concat_tables([batch.links for batch in batches]),
        )

    def halves(self) -> tuple[SpanBatch, SpanBatch]:
        """The first half of the span rows and the rest, each with its spans' events and links."""
        middle = self.spans.num_rows // 2
        first, rest = self.spans.slice(0, middle), self.spans.slice(middle)
        return self._with_children(first), self._with_children(rest)

    def _with_children(self, spans: pa.Table) -> SpanBatch:
        keys = _span_keys(spans)
        return SpanBatch(
            spans=spans,
            events=self.events.filter(pc.is_in(_span_keys(self.events), value_set=keys)),
            links=self.links.filter(pc.is_in(_span_keys(self.links), value_set=keys)),
        )

    def owners(self) -> list[tuple[str | None, bool]]:
        """`owner_of` each span row: its execution, and whether it is that execution's own span."""
        roles = self.spans.column("workflow_role").to_pylist()
        return [
            (execution_id, execution_id is not None and role == cv.ROLE_EXECUTION)
            for execution_id, role in zip(self.spans.column("execution_id").to_pylist(), roles, strict=True)
        ]


def _span_keys(table: pa.Table) -> pa.Array[Any]:
    # A span id is unique within its trace only. Used where the database refused a batch: not fast.
    pairs = zip(table.column("trace_id").to_pylist(), table.column("span_id").to_pylist(), strict=True)
    return pa.array([f"{trace_id}:{span_id}" for trace_id, span_id in pairs], pa.string())


class ConvertedSpans:
    """Finished spans converted for the write queue, which then holds no span objects.

    Made by the writer's converter thread as soon as spans are exported, so that they go at once:
    span objects kept alive until the writer's next cycle made every garbage collection of the
    application walk them. What the C converter makes is handed to pyarrow later, by the writer,
    all of a cycle together (`tables_of`): pyarrow lets go of the GIL while it imports, and a thread
    that lets go of it waits up to a switch interval (5 ms) to get it back from a busy application.
    """

    __slots__ = ("_child_rows", "_made", "_tables", "count")

    def __init__(
        self,
        count: int,
        made: tuple[object, object, object] | None,
        tables: SpanBatch | None,
        child_rows: tuple[int, int] = (0, 0),
    ) -> None:
        self.count = count
        self._made = made
        self._tables = tables
        self._child_rows = child_rows  # events and links in `made`

    @classmethod
    def of(cls, tables: SpanBatch) -> ConvertedSpans:
        return cls(tables.spans.num_rows, None, tables)

    def owners(self) -> list[tuple[str | None, bool]]:
        """`owner_of` each span (read from the rows: the span objects are gone)."""
        return self.tables().owners()

    def tables(self) -> SpanBatch:
        """The Arrow tables (imported once: a retried write reads the same ones)."""
        if self._tables is None:
            _import([self])
        assert self._tables is not None
        return self._tables


def tables_of(parts: Sequence[ConvertedSpans]) -> SpanBatch:
    """All the rows of `parts` (at least one), in order, as one batch.

    What the C converter made goes to pyarrow as one stream per table (`_spanrows.stream`): imported
    part by part, each import let go of the GIL, and the writer waited a switch interval to take it
    back, hundreds of times per write cycle while the application was busy.
    """
    pending = [part for part in parts if part._made is not None]
    if pending and len(pending) == len(parts):
        return _import(pending)  # the usual case: the imported tables as they are
    if pending:
        _import(pending)
    return SpanBatch.concat([part.tables() for part in parts])


# A table's columns packed into a file by `pack_tables`: its rows, and for each column its null count and the
# (offset, length) of each of its Arrow buffers there (validity, of length 0 when there is none, then the
# string offsets and bytes, or the values).
PackedColumns = tuple[int, tuple[tuple[int, tuple[tuple[int, int], ...]], ...]]

TABLE_SCHEMAS: Final = (SPANS_SCHEMA, EVENTS_SCHEMA, LINKS_SCHEMA)


def packable(parts: Sequence[ConvertedSpans]) -> bool:
    """Whether `pack_tables` can take `parts`: all of them the C converter's rows as made (not converted
    in Python, not imported yet)."""
    return _spanrows is not None and bool(parts) and all(part._made is not None for part in parts)


def pack_tables(parts: Sequence[ConvertedSpans], fd: int) -> list[tuple[pa.Schema, PackedColumns]] | None:
    """Append the spans, events and links of `parts` to the file `fd`, column by column, as the C converter
    made them (`_spanrows.pack`: one call per table that lets go of the GIL once), without handing them to
    pyarrow; each table's schema and where its columns went. None if the parts are not `packable` or a
    table cannot be packed: what was written then is to be discarded. Raises OSError."""
    made = [part._made for part in parts if part._made is not None]
    if not packable(parts) or len(made) != len(parts):
        return None
    packed: list[tuple[pa.Schema, PackedColumns]] = []
    for index, schema in enumerate(TABLE_SCHEMAS):
        table = _spanrows.pack([arrays[index] for arrays in made], len(schema), fd)
        if table is None:
            return None
        packed.append((schema, table))
    return packed


def _import(parts: Sequence[ConvertedSpans]) -> SpanBatch:
    """Hand what the C converter made for `parts` to pyarrow, one stream per table; each part keeps
    its own rows (zero-copy slices of the result), for a retry or for halving a batch."""
    made = [part._made for part in parts if part._made is not None]
    assert len(made) == len(parts)
    tables = []
    for index, schema in enumerate(TABLE_SCHEMAS):
        stream = _spanrows.stream([arrays[index] for arrays in made], schema.__arrow_c_schema__())
        tables.append(pa.RecordBatchReader._import_from_c_capsule(stream).read_all())
    offsets = [0, 0, 0]
    for part in parts:
        sizes = (part.count, *part._child_rows)
        part._tables = SpanBatch(*(table.slice(offsets[i], sizes[i]) for i, table in enumerate(tables)))
        part._made = None
        offsets = [offset + size for offset, size in zip(offsets, sizes, strict=True)]
    return SpanBatch(spans=tables[0], events=tables[1], links=tables[2])


class SpanConverter:
    """Builds Arrow batches from SDK spans; reuses resource descriptions across batches.

    `native=False` keeps to the Python loop (the reference the C converter is tested against).
    """

    def __init__(self, *, native: bool = True) -> None:
        self._resources = _ResourceCache()
        self.native = native and _spanrows is not None

    def finished(self, spans: Iterable[ReadableSpan]) -> SpanBatch:
        """Rows for `spans`; spans without a context are left out."""
        return self.convert(spans).tables()

    def convert(self, spans: Iterable[ReadableSpan]) -> ConvertedSpans:
        """Rows for `spans`, as `finished` gives them, with pyarrow's part left to `tables()`."""
        if self.native:
            listed = spans if type(spans) is list else list(spans)
            made = _native_made(listed, self._resources.get)
            if made is not None:
                return made
            spans = listed
        return ConvertedSpans.of(self._python_batch(spans))

    def _python_batch(self, spans: Iterable[ReadableSpan]) -> SpanBatch:
        # Each value is read once, and text is not checked here but per column in `_array`.
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
            failed = status_code is StatusCode.ERROR or found.declared_status == cv.STATUS_FAILED
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
                    None if role is None else workflow_status(found.declared_status, failed),
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


_IO_EVENTS: Final = cv.IO_EVENTS


# Classes whose `events`/`links` are known to be copies of `_events`/`_links` (a subclass may differ).
_SDK_SPAN_TYPES: Final = (ReadableSpan, Span)

# What the C converter reads through the private fields behind these public accessors.
_SPAN_ACCESSORS: Final = (
    "context",
    "name",
    "kind",
    "parent",
    "start_time",
    "end_time",
    "attributes",
    "events",
    "links",
    "resource",
    "status",
    "instrumentation_scope",
)
# Span classes the C converter reads (those that keep ReadableSpan's accessors), and those it does not.
_NATIVE_TYPES: set[type] = set()
_PYTHON_TYPES: set[type] = set()


def _admit(kind: object) -> bool:
    """Whether the C converter may read spans of class `kind` (decided once per class)."""
    if not isinstance(kind, type) or kind in _PYTHON_TYPES:
        return False
    if issubclass(kind, ReadableSpan) and all(
        getattr(kind, name, None) is getattr(ReadableSpan, name) for name in _SPAN_ACCESSORS
    ):
        _NATIVE_TYPES.add(kind)
        return True
    _PYTHON_TYPES.add(kind)
    return False


def owner_of(span: ReadableSpan) -> tuple[str | None, bool]:
    """The execution a finished span belongs to, and whether it is that execution's own span."""
    try:
        attributes = span_attributes(span)
        execution_id = cv.execution_id_of(attributes)
        if execution_id is None:
            return None, False
        return execution_id, cv.role_of(span.name, attributes) == cv.ROLE_EXECUTION
    except Exception:  # a malformed span belongs to no execution; the store rejects it later
        return None, False


def span_owners(spans: Sequence[ReadableSpan]) -> list[tuple[str | None, bool]]:
    """`owner_of` each span: in C where it reads the span's class (the writer asks it of every span)."""
    listed = spans if type(spans) is list else list(spans)
    if _spanrows is not None:
        try:
            found = _spanrows.owners(listed)
        except Exception:  # an odd value: Python tells, span by span
            pass
        else:
            if None not in found:
                return found  # type: ignore[return-value]  # no span left to Python
            return [
                owner_of(span) if owner is None else owner for span, owner in zip(listed, found, strict=True)
            ]
    return [owner_of(span) for span in listed]


def _native_made(
    spans: list[ReadableSpan], describe_resource: Callable[[Resource | None], _ResourceInfo]
) -> ConvertedSpans | None:
    """What the C converter made, or None where the Python loop must make it."""
    while True:
        try:
            spans_array, events_array, links_array, rows, event_rows, link_rows = _spanrows.finished(
                spans, _NATIVE_TYPES, describe_resource
            )
        except _spanrows.Unsupported as exc:
            if exc.args and _admit(exc.args[0]):
                continue  # a class seen for the first time, and readable: again, with it
            return None
        except Exception:
            # An odd value: the Python loop gives its rows, or the error that isolates the span.
            return None
        return ConvertedSpans(rows, (spans_array, events_array, links_array), None, (event_rows, link_rows))


class ColumnMismatch(RuntimeError):
    """The C converter builds other columns than `ingest.columns` names (a stale build)."""


def native_columns_mismatch(built: Sequence[Sequence[tuple[str, str]]]) -> str | None:
    """What differs between the columns the C converter builds (`spanrows.columns()`) and those of
    `ingest.columns`, or None if they agree: name and Arrow type of each, in order."""
    problems = []
    for table, columns in zip((SPANS, SPAN_EVENTS, SPAN_LINKS), built, strict=True):
        expected = [(column.name, str(column.arrow_type)) for column in table.columns]
        found = [tuple(column) for column in columns]
        for index in range(max(len(found), len(expected))):
            ours = found[index] if index < len(found) else None
            theirs = expected[index] if index < len(expected) else None
            if ours != theirs:
                problems.append(
                    f"{table.name} column {index + 1}: C builds {ours}, ingest/columns.py has {theirs}"
                )
                break
    return "; ".join(problems) or None


def native_settings() -> dict[str, Any]:
    """What the C converter is configured with besides the rules: the SDK's classes and constants,
    and the Python helpers it hands odd values to."""
    return {
        "status_error": StatusCode.ERROR,
        "status_names": _STATUS_NAMES,
        "kind_names": _KIND_NAMES,
        "bounded_list": BoundedList,
        "bounded_attributes": BoundedAttributes,
        "sdk_span_types": _SDK_SPAN_TYPES,
        "status_type": Status,
        "event_type": Event,
        "link_type": Link,
        "orjson_dumps": orjson.dumps,
        "attributes_json": attributes_json,
        "utf8": utf8,
        "io_payload": _io_payload,
        "error_message": _error_message,
        "sequence": cv.step_sequence,
        "declared_result": cv.declared_result,
        "scope_type": InstrumentationScope,
    }


def configure_native() -> None:
    """Check the C converter's columns against `ingest.columns` and configure it (once, at import)."""
    if _spanrows is None:
        return
    mismatch = native_columns_mismatch(_spanrows.columns())
    if mismatch is not None:
        raise ColumnMismatch(
            f"otel_workflow._native.spanrows does not match ingest/columns.py ({mismatch}): "
            "rebuild it (pip install -e .)"
        )
    _admit(ReadableSpan)
    _admit(Span)
    _spanrows.configure(native_settings(), RECOGNITION)


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


def running_rows(spans: pa.Table) -> pa.Table | None:
    """The `running_spans` columns of the workflow spans among converted `spans` (None if there are none)."""
    live = spans.filter(pc.is_valid(spans["workflow_role"])).select(RUNNING_COLUMNS)
    return live if live.num_rows else None


configure_native()
