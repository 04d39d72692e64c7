"""`configure()`: the one-call setup of provider, processor and DuckDB exporter."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from opentelemetry import _logs, trace

# The API exports no name for its placeholder provider (the logs API is still underscore-private).
from opentelemetry._logs._internal import ProxyLoggerProvider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from otel_workflow.sdk.exporter import DuckDBSpanExporter
from otel_workflow.sdk.logs import DuckDBLogRecordProcessor, WorkflowLogHandler
from otel_workflow.sdk.processor import WorkflowSpanProcessor
from otel_workflow.storage.store import DEFAULT_DB_PATH, DEFAULT_MAX_QUEUED_SPANS, TraceStore

DB_ENV = "OTEL_WORKFLOW_DB"

# Ended spans replace their `running` rows when the batch processor exports them; the SDK's default
# 5 s delay would show a finished step as running that long.
_EXPORT_DELAY_MS = 500


def default_db_path() -> str:
    """`$OTEL_WORKFLOW_DB`, or `otel_workflow.duckdb` in the current folder."""
    return os.environ.get(DB_ENV) or DEFAULT_DB_PATH


@dataclass
class WorkflowTelemetry:
    """What `configure()` set up; `shutdown()` flushes everything and releases the database."""

    tracer_provider: TracerProvider
    store: TraceStore
    processors: list[SpanProcessor] = field(default_factory=list)
    owns_provider: bool = False
    logger_provider: LoggerProvider | None = None
    log_handler: WorkflowLogHandler | None = None

    def shutdown(self) -> None:
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
        if self.owns_provider:
            self.tracer_provider.shutdown()
        else:
            for processor in self.processors:
                processor.shutdown()
        self.store.close()


def configure(
    db_path: str | os.PathLike[str] | None = None,
    *,
    service_name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    otlp: bool = False,
    logs: bool = True,
    log_level: int = logging.INFO,
    max_queued_spans: int = DEFAULT_MAX_QUEUED_SPANS,
    shutdown_timeout_s: float = 10.0,
    writer_process: bool = False,
) -> WorkflowTelemetry:
    """Store workflow spans in DuckDB at `db_path` (default: `default_db_path()`).

    With `tracer_provider=None` a provider is made (named `service_name`) and set
    as the global one unless another is already set. `otlp=True` also sends the
    spans to an OTLP endpoint configured by the standard `OTEL_EXPORTER_OTLP_*`
    variables (Jaeger, Tempo, a collector), and the log records too.

    With `logs=True` (the default) Python `logging` records of `log_level` and above (the handler's
    level: the loggers' own levels still apply) become log records: stored in `log_records`, and
    those logged inside a step or execution shown in `execution_logs` with it. The handler goes on
    the root logger; the logger provider is set as the global one unless another is already set.
    `max_queued_spans` bounds what waits
    for the database (beyond it spans are dropped and counted); `shutdown_timeout_s`
    bounds how long shutdown may take to write what is queued. `writer_process=True` runs DuckDB in
    a child process that alone holds the file (`TraceStore`'s option of the same name).
    """
    owns_provider = tracer_provider is None
    if tracer_provider is None:
        resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
        tracer_provider = TracerProvider(resource=resource)
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(tracer_provider)
    store = TraceStore(
        db_path if db_path is not None else default_db_path(),
        max_queued_spans=max_queued_spans,
        shutdown_timeout_s=shutdown_timeout_s,
        writer_process=writer_process,
    )
    processors: list[SpanProcessor] = [
        WorkflowSpanProcessor(store),
        BatchSpanProcessor(DuckDBSpanExporter(store), schedule_delay_millis=_EXPORT_DELAY_MS),
    ]
    if otlp:
        processors.append(BatchSpanProcessor(_otlp_exporter()))
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    telemetry = WorkflowTelemetry(tracer_provider, store, processors, owns_provider)
    if logs:
        telemetry.logger_provider = LoggerProvider(resource=tracer_provider.resource, shutdown_on_exit=False)
        telemetry.logger_provider.add_log_record_processor(DuckDBLogRecordProcessor(store))
        if otlp:
            telemetry.logger_provider.add_log_record_processor(BatchLogRecordProcessor(_otlp_log_exporter()))
        if isinstance(_logs.get_logger_provider(), ProxyLoggerProvider):
            _logs.set_logger_provider(telemetry.logger_provider)
        telemetry.log_handler = WorkflowLogHandler(log_level, logger_provider=telemetry.logger_provider)
        logging.getLogger().addHandler(telemetry.log_handler)
    return telemetry


def _otlp_log_exporter() -> LogRecordExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "configure(otlp=True) needs the OTLP exporter: pip install 'otel-workflow[otlp]'"
        ) from exc
    return OTLPLogExporter()


def _otlp_exporter() -> SpanExporter:
    try:
        # Imported here: the OTLP exporter is an optional extra.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "configure(otlp=True) needs the OTLP exporter: pip install 'otel-workflow[otlp]'"
        ) from exc
    return OTLPSpanExporter()
