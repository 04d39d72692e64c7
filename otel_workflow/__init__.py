"""otel-workflow: OpenTelemetry spans as the record of every workflow run, queryable in DuckDB."""

from otel_workflow._version import __version__
from otel_workflow.instrument.capture.flag import (
    CapturePolicy,
    capture_io,
    capture_refused_count,
    configure_capture,
    io_capture_enabled,
)
from otel_workflow.instrument.tracer import Execution, Step, WorkflowTracer
from otel_workflow.model.errors import (
    AmbiguousExecutionId,
    ExecutionNotFound,
    QueryLimitExceeded,
    ReadOnlyViolation,
    SandboxRefusal,
    StoreError,
)
from otel_workflow.model.records import (
    ExecutionDetail,
    ExecutionRow,
    LogRow,
    PruneReport,
    StepRow,
    StepStats,
    WorkflowStats,
)
from otel_workflow.query.readonly import SqlLimits
from otel_workflow.sdk.exporter import DuckDBSpanExporter
from otel_workflow.sdk.logs import DuckDBLogExporter, DuckDBLogRecordProcessor, WorkflowLogHandler
from otel_workflow.sdk.processor import WorkflowSpanProcessor
from otel_workflow.sdk.setup import WorkflowTelemetry, configure
from otel_workflow.storage.store import TraceStore

__all__ = [
    "AmbiguousExecutionId",
    "CapturePolicy",
    "DuckDBLogExporter",
    "DuckDBLogRecordProcessor",
    "DuckDBSpanExporter",
    "Execution",
    "ExecutionDetail",
    "ExecutionNotFound",
    "ExecutionRow",
    "LogRow",
    "PruneReport",
    "QueryLimitExceeded",
    "ReadOnlyViolation",
    "SandboxRefusal",
    "SqlLimits",
    "Step",
    "StepRow",
    "StepStats",
    "StoreError",
    "TraceStore",
    "WorkflowLogHandler",
    "WorkflowSpanProcessor",
    "WorkflowStats",
    "WorkflowTelemetry",
    "WorkflowTracer",
    "__version__",
    "capture_io",
    "capture_refused_count",
    "configure",
    "configure_capture",
    "io_capture_enabled",
]
