"""`DuckDBSpanExporter`: the SpanExporter that stores finished spans in a `TraceStore`.

Use it behind the SDK's `BatchSpanProcessor`, like any exporter. `export()`
hands the batch to the store's background writer (its converter thread makes
Arrow rows of it at once, its writer thread does all the I/O) and returns;
none of its methods raises into the SDK. A batch the store cannot accept whole (queue
full, after shutdown) is reported as FAILURE and what was left out is counted
by the store, which logs drops once per interval rather than once per span.
`shutdown()` is bounded: it takes the time the BatchSpanProcessor passes it,
and at most the store's `shutdown_timeout_s`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_workflow.storage.store import DEFAULT_DB_PATH, TraceStore

logger = logging.getLogger("otel_workflow")


class DuckDBSpanExporter(SpanExporter):
    """Exports spans into DuckDB tables (`spans`, `span_events`, `span_links` and the derived views)."""

    def __init__(self, store: TraceStore | str | os.PathLike[str] = DEFAULT_DB_PATH) -> None:
        self._owns_store = not isinstance(store, TraceStore)
        self.store = store if isinstance(store, TraceStore) else TraceStore(store)
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            if self._shutdown:
                return SpanExportResult.FAILURE
            accepted = self.store.submit_spans(spans)
        except Exception:  # the SDK must never see an exception from us
            logger.exception("otel-workflow could not queue a batch of spans")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if accepted else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        try:
            return self.store.flush(timeout_millis / 1000)
        except Exception:
            logger.exception("otel-workflow could not flush")
            return False

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Write what is queued and stop writing; close the store if this exporter opened it.

        Bounded by `timeout_millis` (the SDK's BatchSpanProcessor passes what is left of its
        own timeout) and by the store's `shutdown_timeout_s`. Idempotent; never raises.
        """
        if self._shutdown:
            return
        self._shutdown = True
        try:
            if self._owns_store:
                self.store.close(timeout_millis / 1000)
            else:
                self.store.close_writer(timeout_millis / 1000)
        except Exception:
            logger.exception("otel-workflow could not shut down its exporter cleanly")
