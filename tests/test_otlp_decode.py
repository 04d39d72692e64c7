"""OTLP protobuf and JSON decoded into SDK spans: the same rows as the spans themselves, and no crash
on any input (property-based)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from collector_support import otlp_json, run_pipeline
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from otel_workflow import WorkflowSpanProcessor
from otel_workflow.ingest.convert import SpanConverter
from otel_workflow.otlp.decode import DecodeError, decode_json, decode_protobuf
from otel_workflow.otlp.encode import export_response_json, export_response_protobuf, rpc_status_protobuf

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN_ID = bytes.fromhex("b7ad6b7169203331")


@pytest.fixture(scope="module")
def sdk_spans() -> list[ReadableSpan]:
    """The spans of the test pipeline, as the SDK hands them to an exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "decode-test", "deployment.environment": "test"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(WorkflowSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    run_pipeline(provider, runs=2)
    provider.shutdown()
    return list(memory.get_finished_spans())


def converted(spans: list[ReadableSpan]) -> dict[str, list[dict[str, Any]]]:
    """The rows of the spans, in a fixed order (OTLP groups spans by resource and scope)."""
    batch = SpanConverter().finished(spans)

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["span_id"], row.get("event_index", 0), row.get("link_index", 0))

    return {
        "spans": sorted(batch.spans.to_pylist(), key=key),
        "events": sorted(batch.events.to_pylist(), key=key),
        "links": sorted(batch.links.to_pylist(), key=key),
    }


def test_protobuf_gives_the_rows_of_the_original_spans(sdk_spans: list[ReadableSpan]) -> None:
    body = encode_spans(sdk_spans).SerializeToString()
    decoded = decode_protobuf(body)
    assert decoded.rejected == 0 and decoded.error_message == ""
    assert converted(decoded.spans) == converted(sdk_spans)


def test_json_gives_the_rows_of_the_original_spans(sdk_spans: list[ReadableSpan]) -> None:
    decoded = decode_json(json.dumps(otlp_json(sdk_spans)).encode())
    assert decoded.rejected == 0
    assert converted(decoded.spans) == converted(sdk_spans)


def test_decoded_spans_are_sdk_spans_with_their_context(sdk_spans: list[ReadableSpan]) -> None:
    decoded = decode_protobuf(encode_spans(sdk_spans).SerializeToString())
    by_id = {span.context.span_id: span for span in decoded.spans if span.context is not None}
    for original in sdk_spans:
        assert original.context is not None
        span = by_id[original.context.span_id]
        assert isinstance(span, ReadableSpan)
        assert span.context is not None and span.context.trace_id == original.context.trace_id
        # (The SDK's OTLP encoder sends no trace flags, so there are none to compare here.)
        assert (span.parent and span.parent.span_id) == (original.parent and original.parent.span_id)
        assert span.kind is original.kind
        assert span.status.status_code is original.status.status_code
        assert span.status.description == original.status.description
        assert span.resource.attributes == original.resource.attributes
        assert span.instrumentation_scope == original.instrumentation_scope
        assert (span.start_time, span.end_time) == (original.start_time, original.end_time)
        assert [(e.name, e.timestamp) for e in span.events] == [
            (e.name, e.timestamp) for e in original.events
        ]
        assert [link.context.span_id for link in span.links] == [
            link.context.span_id for link in original.links
        ]


def test_json_accepts_snake_case_enum_names_numbers_and_ignores_unknown_fields() -> None:
    document = {
        "resource_spans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "go-svc"}}]},
                "scope_spans": [
                    {
                        "scope": {"name": "engine"},
                        "spans": [
                            {
                                "trace_id": TRACE_ID.hex().upper(),
                                "span_id": SPAN_ID.hex(),
                                "name": "workflow.execute",
                                "kind": "SPAN_KIND_SERVER",
                                "start_time_unix_nano": 1_700_000_000_000_000_000,
                                "endTimeUnixNano": "1700000000500000000",
                                "status": {"code": "STATUS_CODE_ERROR", "message": "it broke"},
                                "attributes": [{"key": "execution.id", "value": {"intValue": 7}}],
                                "someFutureField": {"x": 1},
                            }
                        ],
                    }
                ],
                "anotherFutureField": True,
            }
        ]
    }
    decoded = decode_json(json.dumps(document))
    [span] = decoded.spans
    assert span.context is not None and span.context.trace_id == int.from_bytes(TRACE_ID, "big")
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "it broke"
    assert span.end_time == 1_700_000_000_500_000_000
    assert dict(span.attributes or {}) == {"execution.id": 7}
    assert span.resource.attributes["service.name"] == "go-svc"


def _span(**fields: Any) -> Span:
    values: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "name": "s",
        "start_time_unix_nano": 1,
    }
    values.update(fields)
    return Span(**values)


def _request(*spans: Span, resource_attributes: list[KeyValue] | None = None) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": resource_attributes or []},
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )
    return request.SerializeToString()


def test_spans_with_invalid_ids_are_rejected_and_counted_the_rest_is_kept() -> None:
    body = _request(
        _span(name="good"),
        _span(name="short trace id", trace_id=b"\x01" * 8),
        _span(name="zero span id", span_id=b"\x00" * 8),
        _span(name="no ids", trace_id=b"", span_id=b""),
        _span(name="bad parent", parent_span_id=b"\x01\x02"),
    )
    decoded = decode_protobuf(body)
    assert [span.name for span in decoded.spans] == ["good"]
    assert decoded.rejected == 4
    assert "trace_id must be 16 bytes" in decoded.error_message
    assert "span_id is all zeros" in decoded.error_message


def test_json_ids_that_are_not_hex_reject_only_their_span() -> None:
    good = {"traceId": TRACE_ID.hex(), "spanId": SPAN_ID.hex(), "name": "good"}
    bad = {"traceId": "not hex at all", "spanId": SPAN_ID.hex(), "name": "bad"}
    decoded = decode_json(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}))
    assert [span.name for span in decoded.spans] == ["good"]
    assert decoded.rejected == 1


def test_values_the_sdk_cannot_hold_are_kept_as_json() -> None:
    nested = AnyValue(
        kvlist_value={"values": [KeyValue(key="a", value=AnyValue(int_value=1)), KeyValue(key="b", value={})]}
    )
    mixed = AnyValue(array_value={"values": [AnyValue(string_value="x"), AnyValue(int_value=2)]})
    body = _request(
        _span(
            attributes=[
                KeyValue(key="map", value=nested),
                KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x00\xff")),
                KeyValue(key="mixed", value=mixed),
                KeyValue(key="dup", value=AnyValue(int_value=1)),
                KeyValue(key="dup", value=AnyValue(int_value=2)),
            ],
            dropped_attributes_count=3,
            dropped_events_count=4,
            dropped_links_count=5,
        ),
        resource_attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value="svc")),
            KeyValue(key="host.labels", value=nested),
        ],
    )
    [span] = decode_protobuf(body).spans
    assert dict(span.attributes or {}) == {
        "map": {"a": 1, "b": None},
        "bytes": "AP8=",
        "mixed": ("x", 2),
        "dup": 2,
    }
    assert (span.dropped_attributes, span.dropped_events, span.dropped_links) == (3, 4, 5)
    assert span.resource.attributes["host.labels"] == '{"a":1,"b":null}'
    row = SpanConverter().finished([span]).spans.to_pylist()[0]
    assert json.loads(row["attributes"]) == {
        "map": {"a": 1, "b": None},
        "bytes": "AP8=",
        "mixed": ["x", 2],
        "dup": 2,
    }
    assert (row["dropped_attributes"], row["dropped_events"], row["dropped_links"]) == (3, 4, 5)


def test_remote_parent_and_trace_state_are_kept() -> None:
    body = _request(_span(parent_span_id=b"\x02" * 8, flags=0x301, trace_state="vendor=abc,other=1"))
    [span] = decode_protobuf(body).spans
    assert span.parent is not None and span.parent.is_remote
    assert span.context is not None and span.context.trace_state.get("vendor") == "abc"
    assert int(span.context.trace_flags) == 1


def test_the_responses_follow_the_otlp_encoding() -> None:
    assert export_response_protobuf() == b""
    parsed = ExportTraceServiceResponse.FromString(export_response_protobuf(3, "bad ids"))
    assert parsed.partial_success.rejected_spans == 3
    assert parsed.partial_success.error_message == "bad ids"
    assert export_response_json() == {}
    assert export_response_json(2, "x") == {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "x"}}


@given(rejected=st.integers(0, 2**63 - 1), message=st.text())
def test_the_hand_written_protobuf_is_what_protobuf_writes(rejected: int, message: str) -> None:
    expected = ExportTraceServiceResponse()
    if rejected or message:
        expected.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )
    assert export_response_protobuf(rejected, message) == expected.SerializeToString()
    code = rejected % 17  # the google.rpc.Code values
    assert (
        rpc_status_protobuf(code, message)
        == status_pb2.Status(code=code, message=message).SerializeToString()
    )


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05\x0a\x03"],
    ids=["garbage", "huge length", "truncated"],
)
def test_malformed_protobuf_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_protobuf(body)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"x"',
        b"\xff\xfe\x00",
        b'{"resourceSpans": 3}',
        b'{"resourceSpans": [{"scopeSpans": [1]}]}',
        b"[" * 100_000,
    ],
    ids=["truncated", "array", "string", "bad utf-8", "wrong type", "wrong item", "deep nesting"],
)
def test_malformed_json_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_json(body)


def test_deeply_nested_values_are_a_decode_error_not_a_crash() -> None:
    depth = 500
    value = '{"arrayValue": {"values": [' * depth + '{"stringValue": "leaf"}' + "]}}" * depth
    ids = f'"traceId": "{TRACE_ID.hex()}", "spanId": "{SPAN_ID.hex()}"'
    span = f'{{{ids}, "attributes": [{{"key": "k", "value": {value}}}]}}'
    with pytest.raises(DecodeError):
        decode_json('{"resourceSpans": [{"scopeSpans": [{"spans": [' + span + "]}]}]}")
    # The same nesting in protobuf (written by hand: the protobuf library refuses to build it).
    value_bytes = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(depth):
        value_bytes = _field(5, _field(1, value_bytes))  # AnyValue.array_value -> ArrayValue.values
    span_bytes = _span().SerializeToString() + _field(9, _field(1, b"k") + _field(2, value_bytes))
    with pytest.raises(DecodeError):
        decode_protobuf(_field(1, _field(2, _field(2, span_bytes))))  # resource_spans.scope_spans.spans


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size, length = bytearray(), len(payload)
    while True:
        size.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(size) + payload


# -- property-based: nothing but DecodeError, whatever arrives -------------------------------------

_FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_decode_errors(decode: Any, body: bytes | str) -> None:
    try:
        decoded = decode(body)
    except DecodeError:
        return
    # What decodes must convert into rows: the store would otherwise reject it later, uncounted here.
    SpanConverter().finished(decoded.spans)


@_FAST
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_protobuf_decoder(body: bytes) -> None:
    _only_decode_errors(decode_protobuf, body)


@_FAST
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_json_decoder(body: bytes) -> None:
    _only_decode_errors(decode_json, body)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)
_KEYS = st.sampled_from(
    [
        "resourceSpans",
        "scopeSpans",
        "spans",
        "traceId",
        "spanId",
        "parentSpanId",
        "name",
        "kind",
        "attributes",
        "key",
        "value",
        "stringValue",
        "intValue",
        "arrayValue",
        "kvlistValue",
        "values",
        "events",
        "links",
        "status",
        "code",
        "startTimeUnixNano",
        "resource",
        "scope",
    ]
)
# JSON shaped like OTLP (its keys, nested the way it nests) but with values of any type.
_OTLP_LIKE = st.recursive(
    _JSON_VALUES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=40,
)


@_FAST
@given(st.dictionaries(_KEYS, _OTLP_LIKE, max_size=3))
def test_otlp_shaped_json_of_any_values_never_crashes(document: dict[str, Any]) -> None:
    _only_decode_errors(decode_json, json.dumps(document))


_ANY_VALUE: st.SearchStrategy[AnyValue] = st.recursive(
    st.one_of(
        st.text(max_size=10).map(lambda v: AnyValue(string_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
        st.floats().map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=8).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value={"values": vs})),
        st.lists(st.tuples(st.text(max_size=5), inner), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value={"values": [KeyValue(key=k, value=v) for k, v in kvs]})
        ),
    ),
    max_leaves=10,
)
_ATTRIBUTES = st.lists(
    st.builds(
        KeyValue,
        key=st.sampled_from(
            [
                "workflow.execution.id",
                "workflow.step.sequence",
                "execution.id",
                "cicd.pipeline.run.id",
                "workflow.step.status",
                "workflow.capture_io",
                "x",
            ]
        ),
        value=_ANY_VALUE,
    ),
    max_size=5,
)
_SPANS = st.builds(
    Span,
    # Mostly valid ids (so that spans get through to the conversion), sometimes not.
    trace_id=st.one_of(st.just(TRACE_ID), st.binary(min_size=16, max_size=16), st.binary(max_size=17)),
    span_id=st.one_of(st.just(SPAN_ID), st.binary(min_size=8, max_size=8), st.binary(max_size=9)),
    parent_span_id=st.sampled_from([b"", SPAN_ID, b"\x00" * 8, b"\x01"]),
    name=st.sampled_from(["workflow.execute", "workflow.step.a", "x", ""]),
    kind=st.integers(0, 9),
    start_time_unix_nano=st.integers(0, 2**64 - 1),
    end_time_unix_nano=st.integers(0, 2**64 - 1),
    attributes=_ATTRIBUTES,
    status=st.builds(Status, code=st.integers(0, 5), message=st.text(max_size=5)),
    flags=st.integers(0, 2**32 - 1),
    trace_state=st.text(max_size=20),
    events=st.lists(
        st.builds(
            Span.Event,
            name=st.sampled_from(["exception", "workflow.step.input", "e"]),
            time_unix_nano=st.integers(0, 2**64 - 1),
            attributes=_ATTRIBUTES,
        ),
        max_size=2,
    ),
    links=st.lists(
        st.builds(Span.Link, trace_id=st.binary(max_size=17), span_id=st.binary(max_size=9)), max_size=2
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SPANS, max_size=6))
def test_any_well_formed_request_decodes_into_spans_or_counted_rejections(spans: list[Span]) -> None:
    body = _request(*spans)
    decoded = decode_protobuf(body)
    assert len(decoded.spans) + decoded.rejected == len(spans)
    SpanConverter().finished(decoded.spans)
    # Flipping bytes of a valid request gives a decode error or a request; never anything else.
    for position in range(0, len(body), max(1, len(body) // 8)):
        _only_decode_errors(
            decode_protobuf, body[:position] + bytes([body[position] ^ 0xFF]) + body[position + 1 :]
        )
