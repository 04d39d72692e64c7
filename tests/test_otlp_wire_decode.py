"""The C protobuf parser (`_native/otlpwire.c`) gives the spans of the upb path, the reference.

`decode_protobuf(body)` reads the bytes in C where the module was built; `native=False` takes the upb
path. Both must agree on every body: the same spans (every field, private ones included, since the C
converter reads those), the same rejections, or a `DecodeError` from both. Bodies come from the
benchmark's SDK spans, from generated messages, and from a generator of raw wire bytes that repeats
fields, reorders them, mixes in unknown fields, groups and wrong wire types, and from hostile input.
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import Link, SpanContext
from opentelemetry.trace.status import Status as SdkStatus

from otel_workflow.otlp import decode
from otel_workflow.otlp.decode import DecodedTraces, DecodeError, decode_protobuf

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.skipif(
    decode._otlpwire is None and not os.environ.get("OTEL_WORKFLOW_REQUIRE_NATIVE"),
    reason="otel_workflow._native.otlpwire was not built (no C compiler at install)",
)

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN_ID = bytes.fromhex("b7ad6b7169203331")


# -- comparing the two paths -----------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A comparable form of a decoded value: every object's fields, with types (True is not 1)."""
    if isinstance(value, SpanContext):
        return ("SpanContext", [plain(item) for item in value])
    if isinstance(value, Resource):
        return ("Resource", plain(dict(value.attributes)), value.schema_url)
    if isinstance(value, SdkScope):  # slots, no __dict__
        return ("Scope", value.name, value.version, value.schema_url, plain(value.attributes))
    if isinstance(value, Mapping):  # dicts, TraceState, the SDK's BoundedAttributes (which hold a lock)
        return (type(value).__name__, [(plain(key), plain(item)) for key, item in value.items()])
    if isinstance(value, ReadableSpan | Event | Link | SdkStatus):
        return (type(value).__name__, {name: plain(item) for name, item in vars(value).items()})
    if isinstance(value, list | tuple):
        return (type(value).__name__, [plain(item) for item in value])
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))  # NaN equals NaN here, -0.0 is not 0.0
    return (type(value).__name__, value)


def public(span: ReadableSpan) -> dict[str, Any]:
    """What readers of the span see through its properties."""
    return {
        name: plain(getattr(span, name))
        for name in (
            "name",
            "context",
            "parent",
            "kind",
            "attributes",
            "events",
            "links",
            "resource",
            "instrumentation_scope",
            "start_time",
            "end_time",
            "dropped_attributes",
            "dropped_events",
            "dropped_links",
        )
    } | {"status": (span.status.status_code, span.status.description)}


def outcome(body: bytes, *, native: bool) -> DecodedTraces | type[DecodeError]:
    """The decoded request, or DecodeError; any other exception fails the test."""
    try:
        return decode_protobuf(body, native=native)
    except DecodeError:
        return DecodeError


def snapshot(result: DecodedTraces | type[DecodeError]) -> Any:
    if not isinstance(result, DecodedTraces):
        return result
    spans = [(type(span), plain(span), public(span)) for span in result.spans]
    return spans, result.rejected, result.error_message


def assert_same(body: bytes) -> DecodedTraces | type[DecodeError]:
    """The C path's result equals the reference's (or both raise DecodeError); the C one is returned."""
    native = outcome(body, native=True)
    assert snapshot(native) == snapshot(outcome(body, native=False))
    return native


def test_the_c_parser_is_used_where_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # .ci/run sets OTEL_WORKFLOW_REQUIRE_NATIVE: a build that silently fell back to upb must not pass.
    if decode._otlpwire is None:
        if os.environ.get("OTEL_WORKFLOW_REQUIRE_NATIVE"):
            pytest.fail("the C parser (otel_workflow._native.otlpwire) was not built")
        pytest.skip("the C parser (otel_workflow._native.otlpwire) was not built")
    body = _request(_span())

    def no_upb(request: ExportTraceServiceRequest) -> DecodedTraces:
        raise AssertionError("the upb path was taken")

    monkeypatch.setattr(decode, "to_readable_spans", no_upb)
    assert len(decode_protobuf(body).spans) == 1
    # Without the module (an install without a compiler), the upb path does the work.
    monkeypatch.undo()
    monkeypatch.setattr(decode, "_otlpwire", None)
    assert len(decode_protobuf(body).spans) == 1


# -- well-formed requests --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_bodies() -> list[bytes]:
    """The benchmark's requests (benchmarks/ingest.py: SDK spans with 10 attributes and 1 event)."""
    spec = importlib.util.spec_from_file_location("ingest_benchmark", BENCHMARKS / "ingest.py")
    assert spec is not None and spec.loader is not None
    ingest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ingest)
    return [encode_spans(batch).SerializeToString() for batch in ingest.batches(ingest.make_spans(600))]


def test_the_benchmark_spans_decode_the_same(benchmark_bodies: list[bytes]) -> None:
    for body in benchmark_bodies:
        decoded = assert_same(body)
        assert isinstance(decoded, DecodedTraces) and decoded.rejected == 0 and decoded.spans


def test_a_known_resource_is_the_same_object(benchmark_bodies: list[bytes]) -> None:
    # The converter describes a resource once per object: the cache must work on the C path too.
    first, second = (decode_protobuf(body).spans[0] for body in benchmark_bodies[:2])
    assert first.resource is second.resource


def _span(**fields: Any) -> Span:
    return Span(**{"trace_id": TRACE_ID, "span_id": SPAN_ID, "name": "op", **fields})


def _request(
    *spans: Span, resource: PbResource | None = None, scope: InstrumentationScope | None = None
) -> bytes:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=list(spans))])
        ]
    ).SerializeToString()


@pytest.mark.parametrize(
    "span",
    [
        _span(trace_id=b""),
        _span(trace_id=bytes(16)),
        _span(trace_id=TRACE_ID[:15]),
        _span(span_id=bytes(8)),
        _span(span_id=SPAN_ID + b"\x01"),
        _span(parent_span_id=bytes(8)),
        _span(parent_span_id=bytes(3)),
        _span(parent_span_id=b"\x01\x02"),
        _span(parent_span_id=SPAN_ID, flags=0x301),
        _span(parent_span_id=SPAN_ID, flags=0x201),
        _span(flags=0xFFFFFFFF, trace_state="a=1, b=2,bad,=x"),
        _span(trace_state="Invalid Key=1"),
        _span(status=Status(code=2, message="it broke")),
        _span(status=Status(code=1, message="ignored")),
        _span(status=Status(code=7, message="unknown")),
        _span(kind=5, dropped_attributes_count=3, dropped_events_count=4, dropped_links_count=2**32 - 1),
        _span(kind=-3),
        _span(
            links=[
                Span.Link(trace_id=TRACE_ID, span_id=SPAN_ID, flags=0x300, trace_state="k=v"),
                Span.Link(trace_id=bytes(16), span_id=bytes(8)),
                Span.Link(trace_id=TRACE_ID, span_id=SPAN_ID[:7]),
                Span.Link(trace_id=b"", span_id=SPAN_ID),
            ]
        ),
        _span(events=[Span.Event(name="e", time_unix_nano=2**64 - 1), Span.Event()]),
    ],
)
def test_odd_spans_decode_the_same(span: Span) -> None:
    assert_same(_request(span, _span(name="kept")))


def test_resource_and_scope_attributes_decode_the_same() -> None:
    values = [
        AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="a", value=AnyValue(int_value=1))])),
        AnyValue(bytes_value=b"\x00\xff"),
        AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="x")])),
        AnyValue(array_value=ArrayValue(values=[AnyValue(bool_value=True)])),
        AnyValue(),
    ]
    pairs = [KeyValue(key=f"k{index}", value=value) for index, value in enumerate(values)]
    body = _request(
        _span(),
        resource=PbResource(attributes=pairs, dropped_attributes_count=2),
        scope=InstrumentationScope(name="lib", version="1.0", attributes=pairs),
    )
    assert_same(body)


# -- generated messages ----------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
_KEYS = st.sampled_from(["", "a", "b", "k.é", "\x00", "日本"])
_SCALARS = st.one_of(
    st.builds(AnyValue),
    st.builds(AnyValue, string_value=_TEXT),
    st.builds(AnyValue, bool_value=st.booleans()),
    st.builds(AnyValue, int_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(AnyValue, double_value=st.floats()),
    st.builds(AnyValue, bytes_value=st.binary(max_size=7)),
    st.builds(AnyValue, string_value_strindex=st.integers(-5, 5)),
)


def _nested(children: st.SearchStrategy[AnyValue]) -> st.SearchStrategy[AnyValue]:
    pairs = st.lists(st.builds(KeyValue, key=_KEYS, value=children), max_size=3)
    return st.one_of(
        st.builds(AnyValue, array_value=st.builds(ArrayValue, values=st.lists(children, max_size=3))),
        st.builds(AnyValue, kvlist_value=st.builds(KeyValueList, values=pairs)),
    )


_VALUES = st.recursive(_SCALARS, _nested, max_leaves=8)
_ATTRIBUTES = st.lists(st.builds(KeyValue, key=_KEYS, value=_VALUES), max_size=4)
_TRACE_STATES = st.sampled_from(["", "a=1", "a=1,b=2", " k=v , x=y ", "bad", "A=B", "a=1,a=2", "k=v=w"])
_TRACE_IDS = st.one_of(st.just(TRACE_ID), st.just(bytes(16)), st.binary(max_size=17))
_SPAN_IDS = st.one_of(st.just(SPAN_ID), st.just(bytes(8)), st.binary(max_size=9))
_UINT32 = st.integers(0, 2**32 - 1)

_GENERATED_SPANS = st.builds(
    Span,
    trace_id=st.one_of(st.just(TRACE_ID), _TRACE_IDS),
    span_id=st.one_of(st.just(SPAN_ID), _SPAN_IDS),
    parent_span_id=st.one_of(st.just(b""), _SPAN_IDS),
    trace_state=_TRACE_STATES,
    name=_TEXT,
    kind=st.integers(-(2**31), 2**31 - 1),
    flags=_UINT32,
    start_time_unix_nano=st.integers(0, 2**64 - 1),
    end_time_unix_nano=st.integers(0, 2**64 - 1),
    attributes=_ATTRIBUTES,
    dropped_attributes_count=_UINT32,
    events=st.lists(
        st.builds(Span.Event, name=_TEXT, time_unix_nano=st.integers(0, 2**64 - 1), attributes=_ATTRIBUTES),
        max_size=2,
    ),
    dropped_events_count=_UINT32,
    links=st.lists(
        st.builds(
            Span.Link,
            trace_id=_TRACE_IDS,
            span_id=_SPAN_IDS,
            trace_state=_TRACE_STATES,
            attributes=_ATTRIBUTES,
            flags=_UINT32,
        ),
        max_size=2,
    ),
    dropped_links_count=_UINT32,
    status=st.builds(Status, code=st.integers(-1, 3), message=_TEXT),
)
_SCOPES = st.builds(
    InstrumentationScope, name=_TEXT, version=_TEXT, attributes=_ATTRIBUTES, dropped_attributes_count=_UINT32
)
_REQUESTS = st.builds(
    ExportTraceServiceRequest,
    resource_spans=st.lists(
        st.builds(
            ResourceSpans,
            resource=st.builds(PbResource, attributes=_ATTRIBUTES, dropped_attributes_count=_UINT32),
            scope_spans=st.lists(
                st.builds(
                    ScopeSpans,
                    scope=_SCOPES,
                    spans=st.lists(_GENERATED_SPANS, max_size=3),
                    schema_url=_TEXT,
                ),
                max_size=2,
            ),
            schema_url=_TEXT,
        ),
        max_size=2,
    ),
)

_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(_REQUESTS)
def test_generated_requests_decode_the_same(request: ExportTraceServiceRequest) -> None:
    body = request.SerializeToString()
    assert isinstance(assert_same(body), DecodedTraces)
    # Every byte flipped, at a few places: the same result or a DecodeError from both.
    for position in range(0, len(body), max(1, len(body) // 6)):
        assert_same(body[:position] + bytes([body[position] ^ 0xFF]) + body[position + 1 :])


# -- raw wire bytes: repeated, reordered, unknown and mistyped fields ------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


# Each message's known fields: number -> what its payload is (a message name, or a scalar kind).
_SCHEMA: dict[str, dict[int, str]] = {
    "request": {1: "resource_spans"},
    "resource_spans": {1: "resource", 2: "scope_spans", 3: "string"},
    "scope_spans": {1: "scope", 2: "span", 3: "string"},
    "resource": {1: "key_value", 2: "varint"},
    "scope": {1: "string", 2: "string", 3: "key_value", 4: "varint"},
    "span": {
        1: "trace_id",
        2: "span_id",
        3: "trace_state",
        4: "span_id",
        5: "string",
        6: "varint",
        7: "fixed64",
        8: "fixed64",
        9: "key_value",
        10: "varint",
        11: "event",
        12: "varint",
        13: "link",
        14: "varint",
        15: "status",
        16: "fixed32",
    },
    "event": {1: "fixed64", 2: "string", 3: "key_value", 4: "varint"},
    "link": {1: "trace_id", 2: "span_id", 3: "trace_state", 4: "key_value", 5: "varint", 6: "fixed32"},
    "status": {2: "string", 3: "varint"},
    "key_value": {1: "key", 2: "any_value", 3: "varint"},
    "any_value": {
        1: "string",
        2: "varint",
        3: "varint",
        4: "fixed64",
        5: "array",
        6: "kvlist",
        7: "bytes",
        8: "varint",
    },
    "array": {1: "any_value"},
    "kvlist": {1: "key_value"},
}
_WIRE_TYPES = {"varint": 0, "fixed64": 1, "fixed32": 5}
# Spans and links start with valid ids (which their random fields may replace), so most are kept.
_VALID_IDS = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
_FIRST_FIELDS = {"span": _VALID_IDS, "link": _VALID_IDS}


@st.composite
def scalar_payload(draw: st.DrawFn, kind: str) -> bytes:
    """The encoded value of a scalar field, after its tag."""
    if kind == "varint":
        value = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)))
        encoded = varint(value)
        if draw(st.integers(0, 9)) == 0 and len(encoded) < 10:  # an overlong encoding, still valid
            encoded = bytes(byte | 0x80 for byte in encoded) + b"\x00"
        return encoded
    if kind in ("fixed64", "fixed32"):
        return draw(st.binary(min_size=8 if kind == "fixed64" else 4, max_size=8 if kind == "fixed64" else 4))
    if kind == "trace_id":
        raw = draw(st.one_of(st.just(TRACE_ID), st.just(bytes(16)), st.binary(max_size=17)))
    elif kind == "span_id":
        raw = draw(st.one_of(st.just(SPAN_ID), st.just(bytes(8)), st.binary(max_size=9)))
    elif kind == "trace_state":
        raw = draw(_TRACE_STATES).encode()
    elif kind == "key":
        raw = draw(_KEYS).encode()
    elif kind == "bytes":
        raw = draw(st.binary(max_size=5))
    elif draw(st.integers(0, 29)) == 0:  # a string now and then not UTF-8, which upb refuses
        raw = draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\x80"]))
    else:
        raw = draw(_TEXT).encode()
    return varint(len(raw)) + raw


@st.composite
def unknown_field(draw: st.DrawFn, depth: int) -> bytes:
    """A field the reader must skip: an unknown number, or a group (wire types 3/4)."""
    field = draw(st.sampled_from([17, 20, 99, 1000, 2**29 - 1]))
    wire_type = draw(st.sampled_from([0, 1, 2, 3, 5]))
    if wire_type == 3:
        inner = b"".join(draw(st.lists(unknown_field(depth - 1), max_size=2))) if depth > 0 else b""
        return tag(field, 3) + inner + tag(field, 4)
    if wire_type == 2:
        return length_delimited(field, draw(st.binary(max_size=4)))
    return tag(field, wire_type) + draw(scalar_payload({0: "varint", 1: "fixed64", 5: "fixed32"}[wire_type]))


@st.composite
def wire_message(draw: st.DrawFn, name: str, depth: int) -> bytes:
    """A message's fields in any order, repeated, with unknown ones and known ones of another wire type."""
    fields = _SCHEMA[name]
    parts = [_FIRST_FIELDS.get(name, b"")]
    for _ in range(draw(st.integers(0, 6 if depth > 0 else 2))):
        choice = draw(st.integers(0, 14))
        number = draw(st.sampled_from(sorted(fields)))
        kind = fields[number]
        if choice == 0:
            parts.append(draw(unknown_field(2)))
        elif choice == 1:  # a known number with another wire type: an unknown field to upb
            wire_type = draw(st.sampled_from([0, 1, 2, 5]))
            other = {0: "varint", 1: "fixed64", 2: "bytes", 5: "fixed32"}[wire_type]
            if _WIRE_TYPES.get(kind, 2) != wire_type:
                parts.append(tag(number, wire_type) + draw(scalar_payload(other)))
        elif kind in _SCHEMA:
            payload = draw(wire_message(kind, depth - 1)) if depth > 0 else b""
            parts.append(length_delimited(number, payload))
        else:
            parts.append(tag(number, _WIRE_TYPES.get(kind, 2)) + draw(scalar_payload(kind)))
    return b"".join(parts)


def _wire_request(depth: int) -> st.SearchStrategy[bytes]:
    spans = st.lists(wire_message("span", depth), min_size=1, max_size=3)
    scope_spans = st.tuples(wire_message("scope", 2), spans).map(
        lambda parts: length_delimited(1, parts[0]) + b"".join(length_delimited(2, span) for span in parts[1])
    )
    resource_spans = st.tuples(wire_message("resource", 3), st.lists(scope_spans, max_size=2)).map(
        lambda parts: length_delimited(1, parts[0]) + b"".join(length_delimited(2, ss) for ss in parts[1])
    )
    return st.one_of(
        st.lists(resource_spans, max_size=2).map(
            lambda items: b"".join(length_delimited(1, rs) for rs in items)
        ),
        wire_message("request", depth + 3),
    )


@_SETTINGS
@given(_wire_request(5))
def test_raw_wire_requests_decode_the_same(body: bytes) -> None:
    assert_same(body)


@_SETTINGS
@given(
    st.lists(st.sampled_from(sorted(_SCHEMA)), min_size=1, max_size=1).flatmap(
        lambda names: wire_message(names[0], 4)
    )
)
def test_any_message_as_a_span_decodes_the_same(payload: bytes) -> None:
    # Payloads of every message type in the span's place: mismatched shapes must agree too.
    assert_same(length_delimited(1, length_delimited(2, length_delimited(2, payload))))


# -- hostile input ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_decode_the_same(body: bytes) -> None:
    assert_same(body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_inside_a_span_decode_the_same(payload: bytes) -> None:
    ids = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    assert_same(length_delimited(1, length_delimited(2, length_delimited(2, ids + payload))))


@pytest.fixture(scope="module")
def small_body() -> bytes:
    resource = PbResource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="svc"))])
    span = _span(
        parent_span_id=SPAN_ID[::-1],
        attributes=[
            KeyValue(key="s", value=AnyValue(string_value="é")),
            KeyValue(key="a", value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=-1)]))),
            KeyValue(key="d", value=AnyValue(double_value=1.5)),
        ],
        events=[
            Span.Event(
                name="e", time_unix_nano=5, attributes=[KeyValue(key="b", value=AnyValue(bool_value=True))]
            )
        ],
        links=[Span.Link(trace_id=TRACE_ID, span_id=SPAN_ID, trace_state="a=b")],
        status=Status(code=2, message="no"),
        flags=0x301,
    )
    return _request(span, _span(name="second"), resource=resource, scope=InstrumentationScope(name="lib"))


def test_every_truncation_decodes_the_same(small_body: bytes) -> None:
    for end in range(len(small_body)):
        assert_same(small_body[:end])


def test_every_single_byte_mutation_decodes_the_same(small_body: bytes) -> None:
    for position in range(len(small_body)):
        for byte in {0x00, 0x7F, 0x80, 0xFF, small_body[position] ^ 0x01, small_body[position] ^ 0x08}:
            assert_same(small_body[:position] + bytes([byte]) + small_body[position + 1 :])


def _nested_arrays(levels: int, leaf: bytes = b"") -> bytes:
    value = leaf
    for _ in range(levels):
        value = length_delimited(5, length_delimited(1, value))  # AnyValue.array_value -> ArrayValue.values
    return value


def _nested_kvlists(levels: int) -> bytes:
    value = b""
    for _ in range(levels):  # AnyValue.kvlist_value -> KeyValueList.values -> KeyValue.value
        value = length_delimited(
            6, length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))
        )
    return value


def _groups(levels: int) -> bytes:
    return tag(9, 3) * levels + tag(9, 4) * levels


def _in_span_attribute(value: bytes) -> bytes:
    # request -> resource_spans -> scope_spans -> span -> attribute -> AnyValue: 5 levels
    span = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    span += length_delimited(9, length_delimited(1, b"k") + length_delimited(2, value))
    return length_delimited(1, length_delimited(2, length_delimited(2, span)))


def _in_event_attribute(value: bytes) -> bytes:
    # ... -> span -> event -> attribute -> AnyValue: 6 levels
    span = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    span += length_delimited(11, length_delimited(3, length_delimited(1, b"k") + length_delimited(2, value)))
    return length_delimited(1, length_delimited(2, length_delimited(2, span)))


def _in_resource_attribute(value: bytes) -> bytes:
    # request -> resource_spans -> resource -> attribute -> AnyValue: 4 levels
    resource = length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))
    span = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    return length_delimited(1, length_delimited(1, resource) + length_delimited(2, length_delimited(2, span)))


def _in_scope_attribute(value: bytes) -> bytes:
    # request -> resource_spans -> scope_spans -> scope -> attribute -> AnyValue: 5 levels
    scope = length_delimited(3, length_delimited(1, b"k") + length_delimited(2, value))
    span = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    return length_delimited(1, length_delimited(2, length_delimited(1, scope) + length_delimited(2, span)))


@pytest.mark.parametrize(
    ("place", "levels"),
    [
        (_in_span_attribute, 5),
        (_in_event_attribute, 6),
        (_in_resource_attribute, 4),
        (_in_scope_attribute, 5),
    ],
    ids=["span", "event", "resource", "scope"],
)
def test_nesting_up_to_the_limit_is_accepted_and_beyond_it_refused(
    place: Callable[[bytes], bytes], levels: int
) -> None:
    limit = 100 - levels  # upb's limit: 100 levels of messages (and groups) below the request
    for extra in range(limit - 3, limit + 3):
        for value in (
            _nested_arrays(extra // 2, b"" if extra % 2 == 0 else length_delimited(5, b"")),
            _groups(extra),
        ):
            result = assert_same(place(value))
            if extra <= limit:
                assert isinstance(result, DecodedTraces), extra
            else:
                assert result is DecodeError, extra
    assert assert_same(place(_nested_kvlists((limit - 1) // 3))) is not DecodeError
    assert assert_same(place(_nested_kvlists(limit // 3 + 1))) is DecodeError
    assert assert_same(place(_nested_arrays(5000))) is DecodeError


@pytest.mark.parametrize(
    "payload",
    [
        tag(5, 2) + b"\xff\xff\xff\xff\x0f",
        tag(5, 2) + b"\xff\xff\xff\xff\x7f",
        tag(5, 2) + b"\x80\x80\x80\x80\x80\x00",
        tag(5, 2) + b"\x80\x80\x80\x80\x00",
        tag(99, 2) + b"\xff\xff\xff\xff\x0f",
        tag(99, 2) + b"\x80\x80\x80\x80\x00",
        tag(99, 2) + b"\x80\x80\x80\x80\x80\x00",
        tag(9, 2) + b"\x05" + length_delimited(1, b"k"),
        tag(6, 0) + b"\xff" * 9 + b"\x01",
        tag(6, 0) + b"\xff" * 9 + b"\x7f",
        tag(6, 0) + b"\xff" * 10 + b"\x01",
        tag(6, 0) + b"\x80" * 9,
        b"\xf8\xff\xff\xff\x0f\x00",
        b"\xf8\xff\xff\xff\x10\x00",
        b"\x98\x80\x80\x80\x00\x05",
        b"\x98\x80\x80\x80\x80\x00\x05",
        b"\x00\x00",
        b"\x02\x00",
        tag(99, 4),
        tag(99, 3),
        tag(99, 3) + tag(98, 4),
        tag(99, 6) + b"\x00",
        tag(99, 7) + b"\x00",
        tag(16, 5) + b"\x01\x02",
        tag(7, 1) + b"\x01",
        tag(15, 3) + tag(15, 4),
    ],
)
def test_malformed_wire_fields_decode_the_same(payload: bytes) -> None:
    span = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID) + payload
    assert_same(length_delimited(1, length_delimited(2, length_delimited(2, span))))
    assert_same(payload)


@pytest.mark.parametrize(
    "text", [b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"a\xe2\x82", b"\xf0\x9f\x98\x80"]
)
def test_utf8_is_checked_in_every_string_field(text: bytes) -> None:
    ids = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    attribute = length_delimited(1, b"k") + length_delimited(2, length_delimited(1, text))
    spans = [
        ids + length_delimited(5, text),  # name
        ids + length_delimited(3, text),  # trace_state
        ids + length_delimited(5, text) + length_delimited(5, b"ok"),  # overwritten, still checked
        ids + length_delimited(9, length_delimited(1, text)),  # attribute key
        ids + length_delimited(9, attribute),  # string value
        ids + length_delimited(15, length_delimited(2, text)),  # status message
        ids + length_delimited(11, length_delimited(2, text)),  # event name
        ids + length_delimited(13, length_delimited(3, text)),  # link trace_state
        ids + length_delimited(9, length_delimited(1, b"k") + length_delimited(2, length_delimited(7, text))),
    ]
    for span in spans:
        assert_same(length_delimited(1, length_delimited(2, length_delimited(2, span))))
    assert_same(length_delimited(1, length_delimited(3, text)))  # resource schema_url
    assert_same(length_delimited(1, length_delimited(2, length_delimited(3, text))))  # scope schema_url
    assert_same(length_delimited(1, length_delimited(2, length_delimited(1, length_delimited(1, text)))))
    assert_same(length_delimited(1, length_delimited(1, length_delimited(1, attribute))))


def test_repeated_singular_fields_merge_as_protobuf_does() -> None:
    ids = length_delimited(1, TRACE_ID) + length_delimited(2, SPAN_ID)
    first = length_delimited(5, length_delimited(1, length_delimited(3, b"x")))  # array [ "x" ]
    second = length_delimited(5, length_delimited(1, tag(3, 0) + b"\x07"))  # array [ 7 ]
    spans = [
        ids
        + length_delimited(
            9, length_delimited(1, b"k") + length_delimited(2, first) + length_delimited(2, second)
        ),
        ids
        + length_delimited(
            9, length_delimited(1, b"k") + length_delimited(2, first + length_delimited(1, b"s") + second)
        ),
        ids + length_delimited(15, tag(3, 0) + b"\x02") + length_delimited(15, length_delimited(2, b"why")),
        ids + length_delimited(5, b"one") + length_delimited(5, b"two") + length_delimited(1, bytes(16)),
    ]
    for span in spans:
        assert_same(length_delimited(1, length_delimited(2, length_delimited(2, span))))
    # ResourceSpans.resource -> Resource.attributes -> KeyValue, given in two parts
    resource = [
        length_delimited(
            1, length_delimited(1, length_delimited(1, key) + length_delimited(2, length_delimited(1, b"v")))
        )
        for key in (b"a", b"b")
    ]
    scope = length_delimited(1, length_delimited(1, b"lib")) + length_delimited(1, length_delimited(2, b"1"))
    body = length_delimited(
        1, resource[0] + length_delimited(2, scope + length_delimited(2, ids)) + resource[1]
    )
    decoded = assert_same(body)
    assert isinstance(decoded, DecodedTraces)
    assert set(decoded.spans[0].resource.attributes) == {"a", "b"}


def test_a_body_of_any_buffer_type_decodes() -> None:
    body = _request(_span())
    assert snapshot(decode_protobuf(bytearray(body))) == snapshot(outcome(body, native=False))
    assert snapshot(decode_protobuf(memoryview(body))) == snapshot(outcome(body, native=False))


def test_nan_and_signed_zero_doubles_keep_their_bits() -> None:
    for value in (math.nan, -0.0, math.inf, 5e-324):
        assert_same(_request(_span(attributes=[KeyValue(key="d", value=AnyValue(double_value=value))])))
