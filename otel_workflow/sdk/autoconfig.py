"""Zero-code setup: the `workflow_duckdb` exporter and the hook that adds `WorkflowSpanProcessor`.

With the package installed next to `opentelemetry-distro`, an application is
traced into DuckDB without a line of code:

    OTEL_TRACES_EXPORTER=workflow_duckdb,otlp OTEL_WORKFLOW_DB=traces.duckdb \\
        opentelemetry-instrument python app.py

Two entry points of the package do it:

- `opentelemetry_traces_exporter` / `workflow_duckdb` -> `WorkflowDuckDBExporter`:
  the SDK's configurator builds it (with no arguments) for each name in
  `OTEL_TRACES_EXPORTER` and puts it behind a `BatchSpanProcessor`. It stores
  into `$OTEL_WORKFLOW_DB` (default `otel_workflow.duckdb` in the working folder).
- `opentelemetry_logs_exporter` / `workflow_duckdb` -> `WorkflowDuckDBLogExporter`
  (`OTEL_LOGS_EXPORTER=workflow_duckdb`, with `OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true`
  for the SDK's logging handler): log records into the same database, through the store of the
  `workflow_duckdb` span exporter of the process when there is one.
- `opentelemetry_post_instrument` / `otel_workflow` -> `post_instrument`:
  `opentelemetry-instrument` calls it once the provider and the exporters are
  set up. It adds `WorkflowSpanProcessor` to the global provider, so steps are
  numbered and stamped with their execution; sharing the store of a
  `workflow_duckdb` exporter of the same process, it also writes the live
  `running` rows. A process that only exports OTLP (to `otel-workflow serve`,
  say) gets the processor without a store. `OTEL_WORKFLOW_PROCESSOR=false`
  leaves the provider alone (for an application that adds the processor itself).

The batch processor the SDK puts in front of the exporter waits
`OTEL_BSP_SCHEDULE_DELAY` (5000 ms by default) between exports, and a finished
step shows as `running` until its span is written: 500 suits a live view.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_workflow.model.errors import StoreError
from otel_workflow.sdk.exporter import DuckDBSpanExporter
from otel_workflow.sdk.logs import DuckDBLogExporter
from otel_workflow.sdk.processor import WorkflowSpanProcessor
from otel_workflow.sdk.setup import DB_ENV, default_db_path
from otel_workflow.storage.store import TraceStore

__all__ = [
    "DB_ENV",
    "EXPORTER_NAME",
    "PROCESSOR_ENV",
    "WorkflowDuckDBExporter",
    "WorkflowDuckDBLogExporter",
    "install_processor",
    "post_instrument",
]

logger = logging.getLogger("otel_workflow")

#: The name to put in OTEL_TRACES_EXPORTER.
EXPORTER_NAME: Final = "workflow_duckdb"
#: `false` keeps `post_instrument` from adding WorkflowSpanProcessor.
PROCESSOR_ENV: Final = "OTEL_WORKFLOW_PROCESSOR"
_FALSE: Final = frozenset({"false", "0", "no", "off"})

# Stores of this process's `workflow_duckdb` exporters that are not shut down, oldest first: the
# processor's live rows go to the newest. Weak, so a forgotten exporter does not keep its store open.
_stores: list[weakref.ref[TraceStore]] = []
_stores_lock = threading.Lock()


class WorkflowDuckDBExporter(DuckDBSpanExporter):
    """`DuckDBSpanExporter` configured from the environment: the `workflow_duckdb` exporter.

    The SDK builds exporters named in `OTEL_TRACES_EXPORTER` with no arguments,
    so the database path comes from `$OTEL_WORKFLOW_DB` (default
    `otel_workflow.duckdb` in the working folder). A database that cannot be
    opened (folder missing, file damaged) is logged once as an error, and this
    exporter then refuses its batches instead of stopping the application's
    other exporters (the OTLP one) from being set up.
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None) -> None:
        path = db_path if db_path is not None else default_db_path()
        self.error: StoreError | None = None
        try:
            super().__init__(path)
        except StoreError as exc:
            self.error = exc
            self._shutdown = True
            logger.error("otel-workflow: the %s exporter stores nothing: %s", EXPORTER_NAME, exc)
            return
        with _stores_lock:
            _stores.append(weakref.ref(self.store))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.error is not None:
            return SpanExportResult.FAILURE
        return super().export(spans)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.error is not None:
            return True
        return super().force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        if self.error is not None:
            return
        with _stores_lock:
            _stores[:] = [ref for ref in _stores if ref() not in (None, self.store)]
        super().shutdown(timeout_millis)


class WorkflowDuckDBLogExporter(DuckDBLogExporter):
    """`DuckDBLogExporter` configured from the environment: the `workflow_duckdb` logs exporter.

    Built by the SDK with no arguments, after the span exporters: it writes through the store of this
    process's `workflow_duckdb` span exporter when that one stores into the same file (one writer per
    file and process), and opens `$OTEL_WORKFLOW_DB` itself otherwise. A database that cannot be
    opened is logged once; the exporter then refuses its batches.
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None) -> None:
        path = TraceStore.resolve_path(db_path if db_path is not None else default_db_path())
        shared = _exporter_store()
        self.error: StoreError | None = None
        if shared is not None and shared.path == path:
            super().__init__(shared)
            return
        try:
            super().__init__(path)
        except StoreError as exc:
            self.error = exc
            self._shutdown = True
            logger.error("otel-workflow: the %s log exporter stores nothing: %s", EXPORTER_NAME, exc)


def _exporter_store() -> TraceStore | None:
    """The store of this process's `workflow_duckdb` exporter, if it has a usable one."""
    with _stores_lock:
        stores = [store for store in (ref() for ref in _stores) if store is not None]
    return stores[-1] if stores else None


def install_processor(tracer_provider: TracerProvider | None = None) -> WorkflowSpanProcessor | None:
    """Add `WorkflowSpanProcessor` to `tracer_provider` (default: the global one) unless it has one.

    It shares the store of this process's `workflow_duckdb` exporter when there
    is one (live `running` rows), and has no store otherwise. Returns the
    processor, or None when the provider is not the SDK's (nothing configured
    it) or already has a WorkflowSpanProcessor.
    """
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        logger.debug("otel-workflow: the tracer provider is not the SDK's; WorkflowSpanProcessor not added")
        return None
    # `_active_span_processor` is the SDK's multi-processor; reading it is the only way to see what is there.
    existing = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
    if any(isinstance(processor, WorkflowSpanProcessor) for processor in existing):
        return None
    processor = WorkflowSpanProcessor(_exporter_store())
    provider.add_span_processor(processor)
    return processor


def post_instrument() -> None:
    """The `opentelemetry_post_instrument` hook: `install_processor()` unless `OTEL_WORKFLOW_PROCESSOR=false`.

    Never raises: `opentelemetry-instrument` would otherwise abandon the rest of
    its setup, and a tracing add-on must not cost the application its telemetry.
    """
    try:
        if os.environ.get(PROCESSOR_ENV, "true").strip().lower() in _FALSE:
            return
        install_processor()
    except Exception:
        logger.exception("otel-workflow could not add WorkflowSpanProcessor")
