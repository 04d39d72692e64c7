"""OTLP messages encoded: attribute values as OTLP/JSON, export responses, `google.rpc.Status`.

The other direction of `decode`, for what this package sends rather than receives:

- `any_value_json` and `key_values_json` write stored attribute values (JSON scalars,
  lists and objects) as OTLP/JSON `AnyValue` and `KeyValue` lists; `SPAN_KIND_NUMBERS`
  and `STATUS_CODE_NUMBERS` are the trace.proto enums of the names spans are stored with.
  The OTLP/JSON export builds its requests from these.
- `export_response_protobuf` and `export_response_json` are the `ExportTraceServiceResponse`
  the collector answers an ingest request with.
- `rpc_status_protobuf` and `rpc_status_json` are the `google.rpc.Status` that OTLP/HTTP
  error answers carry; over gRPC it is the status details, with `retry_info_protobuf` in them.

Pure Python: the export, which imports this module, works without the `collector` extra (which
brings opentelemetry-proto), so the few protobuf fields here are written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "SPAN_KIND_NUMBERS",
    "STATUS_CODE_NUMBERS",
    "any_value_json",
    "export_response_json",
    "export_response_protobuf",
    "key_values_json",
    "retry_info_protobuf",
    "rpc_status_json",
    "rpc_status_protobuf",
]

#: Span.SpanKind (trace.proto) by the name a stored span has (an unknown name is 0, UNSPECIFIED).
SPAN_KIND_NUMBERS: Final = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
#: Status.StatusCode (trace.proto) by the name a stored span has.
STATUS_CODE_NUMBERS: Final = {"UNSET": 0, "OK": 1, "ERROR": 2}


# -- OTLP/JSON values ------------------------------------------------------------------------------


def any_value_json(value: Any) -> dict[str, Any]:
    """A value as an OTLP/JSON `AnyValue`; `{}` (no value) for what has no OTLP type, such as None."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        # 64-bit integers are strings in the protobuf JSON mapping.
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [any_value_json(item) for item in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": key_values_json(value)}}
    return {}


def key_values_json(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Attributes as an OTLP/JSON `KeyValue` list, in their order."""
    return [{"key": key, "value": any_value_json(value)} for key, value in attributes.items()]


# -- protobuf, by hand -----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    # Only for counts and codes, which are never negative (a negative int64 takes ten bytes in protobuf).
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int_and_string(number: int, text: str) -> bytes:
    """A message {int = 1; string = 2;} as protobuf writes it: fields at their default value left out."""
    encoded = text.encode("utf-8")
    out = b""
    if number:
        out += b"\x08" + _varint(number)
    if encoded:
        out += b"\x12" + _varint(len(encoded)) + encoded
    return out


def _field(number: int, encoded: bytes) -> bytes:
    """A length-delimited field (a message, bytes or a string) `number`."""
    return _varint(number << 3 | 2) + _varint(len(encoded)) + encoded


_RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"

# -- responses -------------------------------------------------------------------------------------


def export_response_protobuf(rejected: int = 0, error_message: str = "") -> bytes:
    """The binary `ExportTraceServiceResponse` (or `ExportLogsServiceResponse`: the same fields at the
    same numbers); `partial_success` is set only when something was rejected."""
    if not (rejected or error_message):
        return b""
    # ExportTraceServiceResponse {ExportTracePartialSuccess partial_success = 1;}, and
    # ExportTracePartialSuccess {int64 rejected_spans = 1; string error_message = 2;}.
    partial = _int_and_string(rejected, error_message)
    return b"\x0a" + _varint(len(partial)) + partial


def export_response_json(
    rejected: int = 0, error_message: str = "", *, rejected_field: str = "rejectedSpans"
) -> dict[str, Any]:
    """The OTLP/JSON export response (int64 as a string, as the JSON mapping has it): of traces, or
    with `rejected_field="rejectedLogRecords"` of logs."""
    if not (rejected or error_message):
        return {}
    partial: dict[str, Any] = {rejected_field: str(rejected)}
    if error_message:
        partial["errorMessage"] = error_message
    return {"partialSuccess": partial}


def rpc_status_protobuf(code: int, message: str, retry_info: bytes | None = None) -> bytes:
    """The binary `google.rpc.Status` {int32 code = 1; string message = 2; repeated Any details = 3;},
    with `retry_info` (a `retry_info_protobuf`) as its one detail if given."""
    # Written by hand: three fields do not justify a dependency on googleapis-common-protos.
    out = _int_and_string(code, message)
    if retry_info is not None:
        # google.protobuf.Any {string type_url = 1; bytes value = 2;}
        detail = _field(1, _RETRY_INFO_TYPE.encode("ascii")) + _field(2, retry_info)
        out += _field(3, detail)
    return out


def retry_info_protobuf(delay_s: int) -> bytes:
    """The binary `google.rpc.RetryInfo` {Duration retry_delay = 1;}, Duration {int64 seconds = 1;}."""
    duration = b"\x08" + _varint(delay_s) if delay_s else b""
    return _field(1, duration)


def rpc_status_json(code: int, message: str) -> dict[str, Any]:
    """The JSON `google.rpc.Status` (no details)."""
    return {"code": code, "message": message}
