"""otel-workflow: OpenTelemetry spans as the record of every workflow run, queryable in DuckDB."""

from otel_workflow._version import __version__
from otel_workflow.capture import (
    CapturePolicy,
    capture_io,
    capture_refused_count,
    configure_capture,
    io_capture_enabled,
)
from otel_workflow.config import WorkflowTelemetry, configure
from otel_workflow.exporter import DuckDBSpanExporter
from otel_workflow.model.records import (
    ExecutionDetail,
    ExecutionRow,
    LogRow,
    PruneReport,
    StepRow,
    StepStats,
    WorkflowStats,
)
from otel_workflow.processor import WorkflowSpanProcessor
from otel_workflow.queries import AmbiguousExecutionId, ExecutionNotFound
from otel_workflow.readonly import QueryLimitExceeded, ReadOnlyViolation, SandboxRefusal, SqlLimits
from otel_workflow.store import StoreError, TraceStore
from otel_workflow.tracer import Execution, Step, WorkflowTracer

__all__ = [
    "AmbiguousExecutionId",
    "CapturePolicy",
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
