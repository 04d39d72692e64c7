"""Application logs into DuckDB: the OpenTelemetry logs signal's exporter, processor and logging handler.

Which parts of OpenTelemetry Python 1.45 this stands on, and why:

- The logs SDK (`opentelemetry.sdk._logs`) is still underscore-private, but it is the only one: the
  `LoggerProvider`, the processor interface and `LogRecordExporter` come from there.
- `DuckDBLogExporter` is a `LogRecordExporter` for setups of one's own, behind the SDK's
  `BatchLogRecordProcessor`. That processor drops the record's context (records reach the exporter
  without it), so trace and span ids are read from the record itself.
- `DuckDBLogRecordProcessor` is what `configure()` uses: it hands each record to the store's writer
  queue at once (a lock and an append), where the writer's converter thread makes rows of it. The
  batch processor in front of the exporter would be a second queue whose drops we could not count.
- `WorkflowLogHandler` is our `logging.Handler`. The SDK's `LoggingHandler` is deprecated (in
  favour of `opentelemetry-instrumentation-logging`'s), and neither guards the application: a record
  whose message cannot be formatted raises out of `emit` into the code that logged it. Ours never
  raises, skips the records of otel-workflow and OpenTelemetry themselves (no feedback loop), and
  redacts the body and attributes by the I/O capture rules before any exporter sees them, so a
  secret reaches neither the file nor OTLP.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry._logs import LoggerProvider as APILoggerProvider
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger_provider
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from otel_workflow.ingest.logrows import MAX_DEPTH, MAX_TEXT_CHARS, REDACTED_MARK
from otel_workflow.instrument.capture.flag import capture_redactor
from otel_workflow.instrument.capture.redaction import REDACTED, Redactor
from otel_workflow.sdk.storeowner import StoreOwner, flush_store
from otel_workflow.storage.store import TraceStore

__all__ = ["DuckDBLogExporter", "DuckDBLogRecordProcessor", "WorkflowLogHandler"]

logger = logging.getLogger("otel_workflow")

# Loggers whose records the handler leaves out: ours and OpenTelemetry's own, whose warnings (an
# exporter that failed, a queue that is full) would otherwise be exported by the pipeline they are about.
_OWN_LOGGERS: Final = ("otel_workflow", "opentelemetry")

# The attributes of every `logging.LogRecord`: what is left in its `__dict__` is the caller's `extra`.
_RECORD_FIELDS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}

# Python levels to OpenTelemetry severity numbers: each level starts its range of four.
_SEVERITY_STEPS: Final = (
    (logging.CRITICAL, SeverityNumber.FATAL),
    (logging.ERROR, SeverityNumber.ERROR),
    (logging.WARNING, SeverityNumber.WARN),
    (logging.INFO, SeverityNumber.INFO),
    (logging.DEBUG, SeverityNumber.DEBUG),
)
# The spec's short names where Python's differ.
_SEVERITY_TEXT: Final = {"WARNING": "WARN", "CRITICAL": "FATAL"}


class DuckDBLogExporter(StoreOwner, LogRecordExporter):
    """Stores log records in the `log_records` table of a `TraceStore` (or a database path).

    Records emitted while an execution or step span was current appear in `execution_logs` with
    that execution and step. `export()` hands the batch to the store's writer and returns; none of
    the methods raises into the SDK. What the store cannot take is counted (`store.dropped_logs`).
    """

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        accepted = self._submit(lambda: self.store.submit_log_records(batch), "log records")
        return LogRecordExportResult.SUCCESS if accepted else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        """Write what is queued; close the store if this exporter opened it. Idempotent; never raises."""

        def release() -> None:
            if self._owns_store:
                self.store.close()
            else:
                self.store.flush(self.store.shutdown_wait())

        self._stop(release, "otel-workflow could not shut down its log exporter cleanly")


class DuckDBLogRecordProcessor(LogRecordProcessor):
    """Hands each emitted record to the store's writer queue (no second queue, no thread of its own).

    The application thread takes a lock and appends; rows are made on the writer's converter thread.
    Beyond the store's `max_queued_logs` records are dropped and counted. Never raises.
    """

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self._shutdown = False

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        if self._shutdown:
            return
        try:
            self.store.submit_log_records((log_record,))
        except Exception:  # a tracer must not crash its host
            logger.debug("otel-workflow could not queue a log record", exc_info=True)

    def shutdown(self) -> None:
        """Stop taking records and write what is queued (bounded by the store's shutdown timeout)."""
        if self._shutdown:
            return
        self._shutdown = True
        self.force_flush()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return flush_store(self.store, timeout_millis)


class WorkflowLogHandler(logging.Handler):
    """A `logging.Handler` that emits records as OpenTelemetry log records (redacted, never raising).

    The body is the formatted message (or the handler's formatter's output); the attributes are the
    record's `extra`, its code location (`code.file.path`, `code.function.name`, `code.line.number`)
    and, with `exc_info`, `exception.type`, `exception.message` and `exception.stacktrace`; the
    logger's name is the instrumentation scope. Emitted in the current context, so a record logged
    inside a step carries that step's trace and span ids. `redactor` defaults to the I/O capture
    policy's (`configure_capture`). Records it could not emit are counted in `failed`.
    """

    # Set while this context emits: a record logged on the way (by the SDK) is not emitted again.
    _emitting: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_workflow_emitting", default=False)

    def __init__(
        self,
        level: int = logging.INFO,
        *,
        logger_provider: APILoggerProvider | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        super().__init__(level=level)
        self._provider = logger_provider
        self._redactor = redactor
        self._loggers: dict[str, Any] = {}
        self._failed_lock = threading.Lock()
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_OWN_LOGGERS) or self._emitting.get():
            return
        token = self._emitting.set(True)
        try:
            self._logger(record.name).emit(self._translate(record))
        except Exception:  # never into the application; counted, and said once
            self._count_failure()
        finally:
            self._emitting.reset(token)

    def flush(self) -> None:
        """Nothing to do here: the processors flush (`LoggerProvider.force_flush`)."""

    def _logger(self, name: str) -> Any:
        found = self._loggers.get(name)
        if found is None:
            provider = self._provider or get_logger_provider()
            found = provider.get_logger(name or "root")
            if len(self._loggers) < 10_000:  # bounded: logger names can come from data
                self._loggers[name] = found
        return found

    def _translate(self, record: logging.LogRecord) -> LogRecord:
        redactor = self._redactor or capture_redactor()
        attributes: dict[str, Any] = {
            key: _redacted(redactor, key, value, 0)
            for key, value in vars(record).items()
            if key not in _RECORD_FIELDS
        }
        attributes["code.file.path"] = record.pathname
        attributes["code.function.name"] = record.funcName
        attributes["code.line.number"] = record.lineno
        if record.exc_info and record.exc_info[0] is not None:
            kind, error, trace_back = record.exc_info
            attributes["exception.type"] = kind.__name__
            attributes["exception.message"] = redactor.scrub_text(_safe_str(error))
            attributes["exception.stacktrace"] = redactor.scrub_text(_stack(kind, error, trace_back))
        body = self._message(record)
        translated = LogRecord(
            timestamp=int(record.created * 1e9),
            context=otel_context.get_current(),
            severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
            severity_number=_severity(record.levelno),
            body=redactor.scrub_text(body[:MAX_TEXT_CHARS]) + ("…" if len(body) > MAX_TEXT_CHARS else ""),
            attributes=attributes,
        )
        # The writer then only bounds the record (`ingest.logrows`), it does not redact it again.
        setattr(translated, REDACTED_MARK, True)
        return translated

    def _message(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record) if self.formatter else record.getMessage()
        except Exception as exc:  # a format string that does not fit its arguments, an unprintable arg
            return (
                f"{_safe_str(record.msg)} (the message could not be formatted with its arguments: "
                f"{type(exc).__name__})"
            )[:MAX_TEXT_CHARS]

    def _count_failure(self) -> None:
        with self._failed_lock:
            self.failed += 1
            first = self.failed == 1
        if first:
            logger.warning(
                "otel-workflow could not emit a log record (further failures are counted in "
                "WorkflowLogHandler.failed, not logged)",
                exc_info=True,
            )


def _redacted(redactor: Redactor, key: str, value: Any, depth: int) -> Any:
    """`value` with the capture policy's redaction applied (and objects as text): what may leave the
    process. Bounding is left to the writer, which does it for every record, ours or not."""
    if key and redactor.redact_field(key, value):
        return REDACTED
    kind = type(value)
    if kind is str:
        return redactor.scrub_text(value)
    if kind is int:
        return REDACTED if redactor.is_card_number(value) else value
    if value is None or kind is float or kind is bool or kind is bytes:
        return value
    if depth < MAX_DEPTH and isinstance(value, Mapping):
        return {
            str(item_key): _redacted(redactor, item_key if isinstance(item_key, str) else "", item, depth + 1)
            for item_key, item in value.items()
        }
    if depth < MAX_DEPTH and isinstance(value, list | tuple):
        return [_redacted(redactor, "", item, depth + 1) for item in value]
    return redactor.scrub_text(_safe_str(value))[:MAX_TEXT_CHARS]


def _severity(levelno: int) -> SeverityNumber:
    for start, severity in _SEVERITY_STEPS:
        if levelno >= start:
            # Levels between two named ones take the numbers after the lower one's (up to three).
            return SeverityNumber(severity.value + min((levelno - start) // 3, 3))
    return SeverityNumber.TRACE


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _stack(kind: Any, error: Any, trace_back: Any) -> str:
    try:
        return "".join(traceback.format_exception(kind, error, trace_back))
    except Exception:
        return f"<the stack trace of {getattr(kind, '__name__', 'the exception')} could not be formatted>"
