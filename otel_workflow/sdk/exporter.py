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

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_workflow.sdk.storeowner import StoreOwner


class DuckDBSpanExporter(StoreOwner, SpanExporter):
    """Exports spans into DuckDB tables (`spans`, `span_events`, `span_links` and the derived views).

    `store` is a `TraceStore` to write through (left open on shutdown) or a database path (opened
    here, closed on shutdown; default `otel_workflow.duckdb`).
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        accepted = self._submit(lambda: self.store.submit_spans(spans), "spans")
        return SpanExportResult.SUCCESS if accepted else SpanExportResult.FAILURE

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Write what is queued and stop writing; close the store if this exporter opened it.

        Bounded by `timeout_millis` (the SDK's BatchSpanProcessor passes what is left of its
        own timeout) and by the store's `shutdown_timeout_s`. Idempotent; never raises.
        """

        def release() -> None:
            if self._owns_store:
                self.store.close(timeout_millis / 1000)
            else:
                self.store.close_writer(timeout_millis / 1000)

        self._stop(release, "otel-workflow could not shut down its exporter cleanly")
