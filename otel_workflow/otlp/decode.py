"""OTLP trace requests (protobuf or JSON) decoded into the SDK's `ReadableSpan` objects.

The collector hands what it receives to `TraceStore.submit_spans`, the very
call the in-process exporter makes, so spans that arrive over OTLP go through
the one conversion (`rows.SpanConverter`) and give the same `spans`,
`workflow_executions`, `execution_steps` and `execution_logs` rows as spans
exported in-process. This module only rebuilds the SDK objects: `Resource`,
`InstrumentationScope`, `SpanContext` (with trace flags and remote bit),
parent, kind, `Status`, `Event`, `Link`, times and dropped counts.

Input is untrusted. `decode_protobuf` and `decode_json` raise `DecodeError`
for a body that is not an `ExportTraceServiceRequest`, and nothing else; a
request that decodes but holds spans with invalid ids is accepted without
them, and they are counted (`DecodedTraces.rejected`) for the OTLP partial
success response (which `encode` writes).

Protobuf takes one of two paths with the same result. The reference parses
the body with upb (`parse_protobuf`) and walks the generated messages
(`to_readable_spans`); it is what JSON requests, installs without a C compiler
and `decode_protobuf(body, native=False)` use. Where `_native/otlpwire.c` was
built, `decode_protobuf` reads the wire bytes there instead and gets back the
spans built (about five times faster: walking upb's objects from Python made
one Python object per attribute and value). The C parser accepts and refuses
exactly what upb does (tests/test_otlp_wire_decode.py compares the two on
generated and hostile bodies); it leaves resources and scopes, one per group,
to upb and the functions below, and ids that reject a span to `_id`, so the
messages and the resource cache are shared.

Attribute values keep their OTLP shape where the SDK's own types cannot hold
them (other SDKs send maps and byte strings): `kvlist_value` becomes a dict,
`array_value` a tuple (the SDK's sequence type), `bytes_value` a base64 string
(its OTLP/JSON form), so they are stored as JSON, not lost. Resource and scope
attributes go through the SDK's validation, which accepts only primitives and
sequences of them, so their maps, byte strings and mixed arrays are stored as
JSON text.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.trace.status import Status, StatusCode

try:
    from otel_workflow._native import otlpwire as _otlpwire
except ImportError:  # installed where no C compiler was found: the upb path does the same work
    _otlpwire = None  # type: ignore[assignment]

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")

__all__ = [
    "MAX_REASONS",
    "DecodeError",
    "DecodedTraces",
    "ReceivedSpan",
    "Rejected",
    "Rejections",
    "attribute_values",
    "decode_any_value",
    "decode_json",
    "decode_protobuf",
    "json_dicts",
    "json_field",
    "json_object_of",
    "parse_json",
    "parse_json_document",
    "parse_protobuf",
    "parse_protobuf_as",
    "rewrite_hex_id",
    "short_error",
    "to_readable_spans",
]

# OTLP's SpanKind (trace.proto) -> the SDK's; 0 (UNSPECIFIED) and unknown values are INTERNAL,
# which is what the SDK itself defaults to.
_KINDS: Final = {
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}
_STATUS: Final = {1: StatusCode.OK, 2: StatusCode.ERROR}

# Span.flags / Link.flags (trace.proto): bits 0-7 are the W3C trace flags; bit 8 says whether bit 9
# (the parent or linked context is remote) is known.
_TRACE_FLAGS_MASK: Final = 0xFF
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200

# How many reasons for rejected spans the partial success message names (one per distinct reason).
MAX_REASONS: Final = 5

# Resources repeat in every request from the same process: one SDK object per distinct resource lets
# the converter describe it once (it caches by identity). Bounded, so a client cannot grow it.
_RESOURCE_CACHE_SIZE: Final = 256


class DecodeError(ValueError):
    """The body is not an OTLP `ExportTraceServiceRequest` in the encoding it claims (HTTP 400)."""


class ReceivedSpan(ReadableSpan):
    """A `ReadableSpan` rebuilt from OTLP, carrying the dropped counts the sender reported.

    The SDK's `ReadableSpan` derives its dropped counts from its own bounded
    containers; a span that crossed the wire has the sender's numbers instead.
    """

    def __init__(
        self,
        *,
        dropped_attributes: int = 0,
        dropped_events: int = 0,
        dropped_links: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._received_dropped = (dropped_attributes, dropped_events, dropped_links)

    @property
    def dropped_attributes(self) -> int:
        return self._received_dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._received_dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._received_dropped[2]


@dataclass(frozen=True, slots=True)
class DecodedTraces:
    """What one request held: the spans to store, and how many were rejected and why."""

    spans: list[ReadableSpan]
    rejected: int = 0
    error_message: str = ""


# -- parsing ---------------------------------------------------------------------------------------


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """The request in a binary protobuf body; `DecodeError` if it is not one."""
    return parse_protobuf_as(body, ExportTraceServiceRequest())


def parse_protobuf_as(body: bytes, request: _M) -> _M:
    """`request` parsed from a binary protobuf body; `DecodeError` if the body is not that message."""
    try:
        request.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError, and whatever else a hostile body may provoke
        name = request.DESCRIPTOR.name
        raise DecodeError(f"the body is not a protobuf {name}: {short_error(exc)}") from exc
    return request


def parse_json(body: bytes | str) -> ExportTraceServiceRequest:
    """The request in an OTLP/JSON body; `DecodeError` if it is not one.

    OTLP/JSON is the protobuf JSON mapping with OTLP's differences: trace and
    span ids are hex (not base64), enums are integers (names are accepted too),
    and unknown fields are ignored, as the specification requires of receivers.
    Keys may be lowerCamelCase or the proto's snake_case.
    """
    document = json_object_of(body, "ExportTraceServiceRequest")
    _hex_ids_to_base64(document)
    return parse_json_document(document, ExportTraceServiceRequest())


def json_object_of(body: bytes | str, what: str) -> dict[str, Any]:
    """The JSON object of an OTLP/JSON body; `DecodeError` if it is not JSON or not an object."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 as well as bad JSON
        raise DecodeError(f"the body is not JSON: {short_error(exc)}") from exc
    if not isinstance(document, dict):
        raise DecodeError(f"the body is not an OTLP/JSON {what}: expected a JSON object")
    return document


def parse_json_document(document: dict[str, Any], request: _M) -> _M:
    """`request` filled from an OTLP/JSON document whose ids are base64 already; `DecodeError` if the
    document is not that message."""
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except Exception as exc:  # ParseError mostly; the parser documents no complete list: a bad body is a 400
        name = request.DESCRIPTOR.name
        raise DecodeError(f"the body is not an OTLP/JSON {name}: {short_error(exc)}") from exc
    return request


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """Rewrite OTLP/JSON's hex ids into the base64 the protobuf JSON parser expects (in place).

    An id that is not valid hex becomes empty, so that its span is rejected by id
    validation (and counted) instead of failing the whole request.
    """
    for resource_spans in json_dicts(json_field(document, "resourceSpans", "resource_spans")):
        for scope_spans in json_dicts(json_field(resource_spans, "scopeSpans", "scope_spans")):
            for span in json_dicts(json_field(scope_spans, "spans")):
                rewrite_hex_id(span, "traceId", "trace_id")
                rewrite_hex_id(span, "spanId", "span_id")
                rewrite_hex_id(span, "parentSpanId", "parent_span_id")
                for link in json_dicts(json_field(span, "links")):
                    rewrite_hex_id(link, "traceId", "trace_id")
                    rewrite_hex_id(link, "spanId", "span_id")


def json_field(obj: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    return None


def json_dicts(value: Any) -> Iterable[dict[str, Any]]:
    # Anything not shaped as expected is left for the protobuf parser to refuse.
    if isinstance(value, list):
        return (item for item in value if isinstance(item, dict))
    return ()


def rewrite_hex_id(obj: dict[str, Any], *names: str) -> bool:
    """Rewrite the hex id under any of `names` into base64 (in place); False if one was not hex.

    A non-hex id becomes empty. Spans need not look at the answer (an empty id rejects its span
    anyway); log records must, since for them an empty id means "outside any trace".
    """
    all_hex = True
    for name in names:
        value = obj.get(name)
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b""
                all_hex = False
            obj[name] = base64.b64encode(raw).decode("ascii")
    return all_hex


def short_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


# -- conversion ------------------------------------------------------------------------------------


def decode_protobuf(body: bytes, *, native: bool = True) -> DecodedTraces:
    """Spans of a binary protobuf `ExportTraceServiceRequest`; `DecodeError` if it is not one.

    The C parser reads the body where it was built; `native=False` (or no C module) takes the upb
    path, the reference it is tested against.
    """
    if native and _otlpwire is not None:
        return _decode_wire(body)
    return to_readable_spans(parse_protobuf(body))


def decode_json(body: bytes | str) -> DecodedTraces:
    """Spans of an OTLP/JSON `ExportTraceServiceRequest`; `DecodeError` if it is not one."""
    return to_readable_spans(parse_json(body))


def to_readable_spans(request: ExportTraceServiceRequest) -> DecodedTraces:
    """The SDK spans of a parsed request; spans with invalid ids are left out and counted."""
    return _collected(_pb_groups(request), _span)


def _pb_groups(request: ExportTraceServiceRequest) -> Iterator[tuple[Resource, SdkScope, Iterable[PbSpan]]]:
    for resource_spans in request.resource_spans:
        resource = _resource(resource_spans.resource, resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            yield resource, _scope(scope_spans.scope, scope_spans.schema_url), scope_spans.spans


def _collected(
    groups: Iterable[tuple[Resource, SdkScope, Iterable[_T]]],
    build: Callable[[_T, Resource, SdkScope], ReceivedSpan],
) -> DecodedTraces:
    """The spans `build` makes of each group's items; those it rejects are counted, with their reasons."""
    spans: list[ReadableSpan] = []
    rejections = Rejections("span")
    for resource, scope, items in groups:
        for item in items:
            try:
                spans.append(build(item, resource, scope))
            except Exception as exc:  # a span we cannot rebuild costs only itself, never the request
                rejections.add(exc)
    return DecodedTraces(spans, rejections.count, rejections.message)


class Rejected(Exception):
    """This item of a request (a span, a log record) is invalid (the message says why); the rest of the
    request is kept."""


class Rejections:
    """The items a request's decoding left out: how many, and why (each reason once; the first
    `MAX_REASONS` make the message of the partial success)."""

    def __init__(self, item: str) -> None:
        self.count = 0
        self._item = item
        self._reasons: dict[str, None] = {}

    def add(self, exc: Exception) -> None:
        """One item left out: a `Rejected` says which rule it broke, anything else that we could not
        rebuild it."""
        self.count += 1
        reason = (
            str(exc)
            if isinstance(exc, Rejected)
            else f"{self._item} could not be decoded: {short_error(exc)}"
        )
        self._reasons.setdefault(reason)

    @property
    def message(self) -> str:
        return "; ".join(list(self._reasons)[:MAX_REASONS])


def _id(raw: bytes, size: int, what: str) -> int:
    if len(raw) != size:
        raise Rejected(f"{what} must be {size} bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if value == 0:
        raise Rejected(f"{what} is all zeros (invalid)")
    return value


def _span(span: PbSpan, resource: Resource, scope: SdkScope) -> ReceivedSpan:
    trace_id = _id(span.trace_id, 16, "trace_id")
    span_id = _id(span.span_id, 8, "span_id")
    flags = span.flags
    trace_state = _trace_state(span.trace_state)
    context = SpanContext(
        trace_id,
        span_id,
        is_remote=False,
        trace_flags=TraceFlags(flags & _TRACE_FLAGS_MASK),
        trace_state=trace_state,
    )
    parent: SpanContext | None = None
    raw_parent = span.parent_span_id
    # An all-zero parent id is how some SDKs write "no parent".
    if raw_parent and any(raw_parent):
        parent = SpanContext(
            trace_id,
            _id(raw_parent, 8, "parent_span_id"),
            is_remote=_is_remote(flags),
            trace_flags=TraceFlags(flags & _TRACE_FLAGS_MASK),
        )
    events = [
        Event(event.name, attribute_values(event.attributes), timestamp=event.time_unix_nano)
        for event in span.events
    ]
    links: list[Link] = []
    invalid_links = 0
    for link in span.links:
        if len(link.trace_id) != 16 or len(link.span_id) != 8:
            # An unusable link is counted as dropped, as the SDK counts links it could not keep.
            invalid_links += 1
            continue
        linked = SpanContext(
            int.from_bytes(link.trace_id, "big"),
            int.from_bytes(link.span_id, "big"),
            is_remote=_is_remote(link.flags),
            trace_flags=TraceFlags(link.flags & _TRACE_FLAGS_MASK),
            trace_state=_trace_state(link.trace_state),
        )
        links.append(Link(linked, attribute_values(link.attributes)))
    code = _STATUS.get(span.status.code, StatusCode.UNSET)
    # The SDK keeps a description only on ERROR (and warns otherwise): do as it does, without the warning.
    description = span.status.message if code is StatusCode.ERROR and span.status.message else None
    return ReceivedSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attribute_values(span.attributes),
        events=events,
        links=links,
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=Status(code, description),
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
        dropped_attributes=span.dropped_attributes_count,
        dropped_events=span.dropped_events_count,
        dropped_links=span.dropped_links_count + invalid_links,
    )


def _is_remote(flags: int) -> bool:
    return bool(flags & _HAS_IS_REMOTE) and bool(flags & _IS_REMOTE)


_EMPTY_TRACE_STATE: Final = TraceState()


def _trace_state(header: str) -> TraceState:
    if not header:
        return _EMPTY_TRACE_STATE
    entries: list[tuple[str, str]] = []
    for member in header.split(","):
        key, sep, value = member.strip().partition("=")
        if sep and key and value:
            entries.append((key, value))
    try:
        # TraceState validates keys and values; an invalid header is not worth losing the span for.
        return TraceState(entries)
    except Exception:
        return _EMPTY_TRACE_STATE


def decode_any_value(value: AnyValue) -> Any:
    """The Python value of an `AnyValue`, in the shapes the module docstring gives."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return tuple(decode_any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return attribute_values(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def attribute_values(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    # A repeated key keeps its last value, as setting an SDK attribute twice does.
    return {pair.key: decode_any_value(pair.value) for pair in pairs}


def _primitive(value: Any) -> Any:
    """A value the SDK's attribute validation keeps: primitives, homogeneous sequences; else JSON text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
        return value
    if (
        isinstance(value, tuple)
        and value
        and len({type(item) for item in value}) == 1
        and isinstance(value[0], bool | int | float)
    ):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _primitive_attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    attributes = {key: _primitive(value) for key, value in attribute_values(pairs).items()}
    return {key: value for key, value in attributes.items() if value is not None}


_resources: dict[bytes | tuple[bytes, str], Resource] = {}


def _resource(resource: PbResource, schema_url: str) -> Resource:
    try:
        key = resource.SerializeToString(deterministic=True) + b"\x00" + schema_url.encode("utf-8")
    except Exception:  # the cache is an optimisation: a resource it cannot key is built fresh
        key = b""
    return _cached_resource(key, schema_url, lambda: resource)


def _cached_resource(
    key: bytes | tuple[bytes, str], schema_url: str, resource: Callable[[], PbResource]
) -> Resource:
    """The SDK resource under `key` (an empty key is not cached), built from `resource()` if new."""
    found = _resources.get(key) if key else None
    if found is not None:
        return found
    built = Resource(_primitive_attributes(resource().attributes), schema_url or None)
    if key:
        if len(_resources) >= _RESOURCE_CACHE_SIZE:
            _resources.clear()
        _resources[key] = built
    return built


def _scope(scope: InstrumentationScope, schema_url: str) -> SdkScope:
    # Unset proto3 strings arrive as "": the SDK has None for an absent version or schema URL.
    return SdkScope(
        scope.name,
        scope.version or None,
        schema_url or None,
        _primitive_attributes(scope.attributes) or None,
    )


# -- the C parser's values -------------------------------------------------------------------------


def _decode_wire(body: bytes) -> DecodedTraces:
    """`decode_protobuf` through `_native/otlpwire.c`: the same spans, built from plain values."""
    try:
        groups = _otlpwire.parse(body)
    except _otlpwire.WireError as exc:
        raise DecodeError(f"the body is not a protobuf ExportTraceServiceRequest: {exc}") from exc
    return _collected(_wire_groups(groups), _wire_span)


def _wire_groups(
    groups: list[_otlpwire.ResourceGroup],
) -> Iterator[tuple[Resource, SdkScope, Iterable[_otlpwire.SpanOrRejection]]]:
    for resource_raw, resource_schema_url, scope_groups in groups:
        resource = _wire_resource(resource_raw, resource_schema_url)
        for scope_raw, scope_schema_url, spans in scope_groups:
            scope = _embedded(scope_raw, 1, 2, 1).resource_spans[0].scope_spans[0].scope
            yield resource, _scope(scope, scope_schema_url), spans


def _wire_resource(raw: bytes, schema_url: str) -> Resource:
    # Keyed by the bytes sent: a key is cached only once upb has parsed those bytes (at the same depth).
    def parsed() -> PbResource:
        return _embedded(raw, 1, 1).resource_spans[0].resource

    return _cached_resource((raw, schema_url), schema_url, parsed)


def _embedded(raw: bytes, *path: int) -> ExportTraceServiceRequest:
    """A request holding the message `raw` at `path` (field numbers from the request down), parsed by upb.

    The C parser leaves resources and scopes to upb, which checks them (UTF-8, nesting) at the depth
    they have in the request, as the reference path does.
    """
    for field in reversed(path):
        raw = _length_delimited(field, raw)
    return parse_protobuf(raw)


def _length_delimited(field: int, payload: bytes) -> bytes:
    tag = bytes([field << 3 | 2])
    size = len(payload)
    prefix = bytearray()
    while size > 0x7F:
        prefix.append(size & 0x7F | 0x80)
        size >>= 7
    prefix.append(size)
    return tag + bytes(prefix) + payload


def _wire_span(item: _otlpwire.SpanOrRejection, resource: Resource, scope: SdkScope) -> ReceivedSpan:
    """The span the C parser built, given its group's resource and scope; or why it was rejected."""
    if isinstance(item, ReceivedSpan):
        item._resource = resource
        item._instrumentation_scope = scope
        return item
    if isinstance(item, Exception):
        raise item
    raw, size, what = item
    _id(raw, size, what)  # raises Rejected: the C parser returns only ids that fail its checks
    raise Rejected(f"{what} is invalid")


def _configure_wire() -> None:
    """Give the C parser the SDK's classes and values it builds spans of, as `_span` builds them."""
    if _otlpwire is None:
        return
    _otlpwire.configure(
        ReceivedSpan,
        SpanContext,
        Event,
        Link,
        Status,
        tuple(TraceFlags(flags) for flags in range(256)),
        tuple(_KINDS.get(kind, SpanKind.INTERNAL) for kind in range(6)),
        (StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR),
        _trace_state,
        _EMPTY_TRACE_STATE,
        DEFAULT_TRACE_STATE,
    )


_configure_wire()
