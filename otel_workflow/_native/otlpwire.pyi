"""Types of the protobuf parser (`_native/otlpwire.c`); `otel_workflow.otlp.decode` is its only caller."""

from collections.abc import Callable
from typing import Any

MAX_DEPTH: int

class WireError(ValueError):
    """The bytes are not a protobuf ExportTraceServiceRequest (the message says where they fail)."""

# A span of the request: the ReceivedSpan built (its _resource and _instrumentation_scope left None,
# for the caller to set), or why it is rejected: (id bytes, expected size, id name) for an invalid
# id, or the exception building it raised.
SpanOrRejection = Any | tuple[bytes, int, str] | Exception
# (scope bytes, schema_url, spans) within (resource bytes, schema_url, scope groups); the bytes are
# the message's fields (all its occurrences concatenated), not parsed.
ScopeGroup = tuple[bytes, str, list[SpanOrRejection]]
ResourceGroup = tuple[bytes, str, list[ScopeGroup]]

def configure(
    span: type,
    context: type,
    event: type,
    link: type,
    status: type,
    trace_flags: tuple[Any, ...],
    kinds: tuple[Any, ...],
    status_codes: tuple[Any, ...],
    trace_state: Callable[[str], Any],
    empty_trace_state: Any,
    default_trace_state: Any,
) -> None: ...
def parse(body: bytes) -> list[ResourceGroup]: ...
