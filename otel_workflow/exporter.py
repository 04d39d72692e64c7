"""`DuckDBSpanExporter`: the SpanExporter that stores finished spans in a `TraceStore`.

Use it behind the SDK's `BatchSpanProcessor`, like any exporter. `export()`
hands the batch to the store's background writer and returns; it never raises
into the SDK. A batch the store cannot accept (queue full, after shutdown) is
reported as FAILURE and counted by the store, which logs drops once per
interval rather than once per span.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_workflow.store import DEFAULT_DB_PATH, TraceStore

logger = logging.getLogger("otel_workflow")


class DuckDBSpanExporter(SpanExporter):
    """Exports spans into DuckDB tables (`spans`, `span_events`, `span_links` and the derived views)."""

    def __init__(self, store: TraceStore | str | os.PathLike[str] = DEFAULT_DB_PATH) -> None:
        self._owns_store = not isinstance(store, TraceStore)
        self.store = store if isinstance(store, TraceStore) else TraceStore(store)
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            accepted = self.store.submit_spans(spans)
        except Exception:  # the SDK must never see an exception from us
            logger.exception("otel-workflow could not queue %d spans", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if accepted else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.store.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Write what is queued and stop writing; close the store if this exporter opened it."""
        if self._shutdown:
            return
        self._shutdown = True
        if self._owns_store:
            self.store.close()
        else:
            self.store.close_writer()
