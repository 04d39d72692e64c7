"""From a decoded-size OTLP body to queued rows, for every transport (OTLP/HTTP and OTLP/gRPC).

The receivers (`receiver` for HTTP, `grpc_receiver` for gRPC) own their wire: content types,
compression, headers or metadata, and how an answer is written. What a request means is decided
here, once: decoding (`otlp.decode` for traces, `otlp.logs` for logs), the per-request bound, the
check of the store's queue and the submit under one lock, the counters of `/api/status`, and the
partial success. An `Outcome` says what happened in transport-neutral words; each receiver maps it
to its status (HTTP 200/400/413/503, gRPC OK/INVALID_ARGUMENT/UNAVAILABLE).

`IngestSlots` are shared by both receivers: at most `max_concurrent_ingest` bodies are decoded at
once whichever way they came, which bounds the memory of decoding to about that many bodies.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from otel_workflow.ingest.logrows import LogRows
from otel_workflow.model.errors import StoreError
from otel_workflow.otlp.decode import DecodeError, decode_json, decode_protobuf
from otel_workflow.otlp.logs import decode_logs_json, decode_logs_protobuf
from otel_workflow.server.limits import ReceiverLimits
from otel_workflow.storage.store import TraceStore

__all__ = ["JSON", "PROTOBUF", "Counters", "IngestSlots", "Intake", "Outcome", "Result", "Signal"]

#: The two encodings of OTLP bodies (gRPC carries protobuf only).
PROTOBUF: Final = "protobuf"
JSON: Final = "json"


class Outcome(enum.Enum):
    """What became of a request, before any transport names it."""

    STORED = "stored"  #: queued for the writer (perhaps with some items rejected: `Result.rejected`)
    INVALID = "invalid"  #: the body does not decode as the request it claims to be
    TOO_MANY = "too_many"  #: more items in one request than the collector queues at once
    SATURATED = "saturated"  #: the store's queue is filling up (retry later)
    UNAVAILABLE = "unavailable"  #: the store is not accepting items, e.g. shutting down (retry later)


@dataclass(frozen=True, slots=True)
class Result:
    """An `Outcome`, the message that explains it, and the partial success of a stored request."""

    outcome: Outcome
    message: str = ""
    rejected: int = 0
    rejected_message: str = ""


@dataclass(frozen=True, slots=True)
class Signal:
    """How one OTLP signal (traces or logs) decodes, counts and enters the store."""

    #: what its items are called in messages ("spans", "log records")
    items: str
    #: the `partial_success` field of the OTLP/JSON answer ("rejectedSpans", "rejectedLogRecords")
    rejected_field: str
    decode: Callable[[bytes, str], Any]
    #: the decoded items, their count, and the call that submits them (False: the store refused)
    payload: Callable[[Any], Any]
    count: Callable[[Any], int]
    submit: Callable[[TraceStore, Any], bool]
    queued: Callable[[TraceStore], int]
    bound: Callable[[TraceStore], int]
    accepted_counter: str
    rejected_counter: str


def _decode_traces(body: bytes, kind: str) -> Any:
    return decode_protobuf(body) if kind == PROTOBUF else decode_json(body)


def _decode_logs(body: bytes, kind: str) -> Any:
    return decode_logs_protobuf(body) if kind == PROTOBUF else decode_logs_json(body)


def _submit_spans(store: TraceStore, spans: Sequence[Any]) -> bool:
    return store.submit_spans(spans) if spans else True


def _submit_logs(store: TraceStore, rows: LogRows) -> bool:
    return store.submit_logs(rows)


TRACES: Final = Signal(
    items="spans",
    rejected_field="rejectedSpans",
    decode=_decode_traces,
    payload=lambda decoded: decoded.spans,
    count=len,
    submit=_submit_spans,
    queued=lambda store: store.queued,
    bound=lambda store: store.max_queued_spans,
    accepted_counter="accepted_spans",
    rejected_counter="rejected_spans",
)
LOGS: Final = Signal(
    items="log records",
    rejected_field="rejectedLogRecords",
    decode=_decode_logs,
    payload=lambda decoded: decoded.rows,
    count=lambda rows: rows.count,
    submit=_submit_logs,
    queued=lambda store: store.queued_logs,
    bound=lambda store: store.max_queued_logs,
    accepted_counter="accepted_log_records",
    rejected_counter="rejected_log_records",
)


class Counters:
    """What the receivers did, for `/api/status`; updated from worker threads, hence the lock."""

    NAMES: Final = (
        "accepted_spans",
        "rejected_spans",
        "accepted_log_records",
        "rejected_log_records",
        "requests",
        "grpc_requests",
        "busy",
        "saturated",
        "invalid",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._values[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class IngestSlots:
    """At most `size` bodies read and decoded at once, across receivers and threads.

    A thread waits with `acquire(timeout)`; the HTTP receiver, on an event loop, polls `try_acquire`
    (waiting in a worker thread would take the threads the decoding itself needs).
    """

    def __init__(self, size: int) -> None:
        self._semaphore = threading.BoundedSemaphore(size)

    def try_acquire(self) -> bool:
        return self._semaphore.acquire(blocking=False)

    def acquire(self, timeout_s: float) -> bool:
        return self._semaphore.acquire(timeout=timeout_s)

    def release(self) -> None:
        self._semaphore.release()


class Intake:
    """Decoding, bounds and submitting for both receivers, around one store."""

    def __init__(self, store: TraceStore, limits: ReceiverLimits) -> None:
        self.store = store
        self.limits = limits
        self.slots = IngestSlots(limits.max_concurrent_ingest)
        self.counters = Counters()
        # Checking the queue and submitting happen under one lock, so concurrent requests cannot all
        # see room and together overfill it.
        self._submit_lock = threading.Lock()
        self._high_water = {
            signal.items: max(1, int(signal.bound(store) * limits.queue_high_water))
            for signal in (TRACES, LOGS)
        }

    def high_water(self, signal: Signal) -> int:
        """The queue length past which requests of `signal` are refused (a fraction of the store's bound)."""
        return self._high_water[signal.items]

    def behind(self, signal: Signal) -> bool:
        """Whether the writer is behind on `signal`'s queue: refuse before reading a body."""
        return signal.queued(self.store) >= self.high_water(signal)

    def store_body(self, signal: Signal, body: bytes, kind: str) -> Result:
        """Decode `body` (`PROTOBUF` or `JSON`), check the queue, submit; blocking (a worker thread's)."""
        counters = self.counters
        counters.add("requests", 1)
        try:
            decoded = signal.decode(body, kind)
        except DecodeError as exc:
            counters.add("invalid", 1)
            return Result(Outcome.INVALID, str(exc))
        payload = signal.payload(decoded)
        count = signal.count(payload)
        bound = self.high_water(signal)
        if count > bound:
            counters.add("invalid", 1)
            return Result(
                Outcome.TOO_MANY,
                f"{count} {signal.items} in one request is more than this collector queues at once "
                f"({bound}); send smaller batches",
            )
        with self._submit_lock:
            if count and signal.queued(self.store) + count > bound:
                return self.saturated()
            try:
                accepted = signal.submit(self.store, payload)
            except StoreError as exc:
                return Result(Outcome.UNAVAILABLE, f"the store is not accepting {signal.items}: {exc}")
        if not accepted:
            # Only at shutdown or past the store's own bound. The client retries the whole request; the
            # spans that were queued are not stored twice (the store skips spans it already has).
            return self.saturated()
        counters.add(signal.accepted_counter, count)
        counters.add(signal.rejected_counter, decoded.rejected)
        return Result(Outcome.STORED, rejected=decoded.rejected, rejected_message=decoded.error_message)

    def saturated(self) -> Result:
        self.counters.add("saturated", 1)
        return Result(Outcome.SATURATED, "the collector's write queue is full; retry later")

    def status(self) -> dict[str, Any]:
        """The document of `/api/status`: the store's queues and drops, and what the receivers did."""
        counts = self.counters.snapshot()
        store = self.store
        return {
            "database": store.path,
            "queued": store.queued,
            "queue_bound": store.max_queued_spans,
            "queue_high_water": self.high_water(TRACES),
            "dropped_spans": store.dropped_spans,
            "dropped_by_reason": store.dropped_by_reason,
            "accepted_spans": counts["accepted_spans"],
            "rejected_spans": counts["rejected_spans"],
            "queued_logs": store.queued_logs,
            "dropped_logs": store.dropped_logs,
            "accepted_log_records": counts["accepted_log_records"],
            "rejected_log_records": counts["rejected_log_records"],
            "requests": counts["requests"],
            "grpc_requests": counts["grpc_requests"],
            "refused": {
                "busy": counts["busy"],
                "saturated": counts["saturated"],
                "invalid": counts["invalid"],
            },
        }
