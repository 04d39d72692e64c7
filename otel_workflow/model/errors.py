"""The errors the package raises to its callers (all exported from `otel_workflow`).

Here, below every layer, so that the storage, the read side, the CLI and the server raise and catch
the same types, and `problems` can say what each means to a user in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AmbiguousExecutionId",
    "ExecutionLookupError",
    "ExecutionNotFound",
    "QueryLimitExceeded",
    "ReadOnlyViolation",
    "SandboxRefusal",
    "SpanNotFound",
    "StoreBusy",
    "StoreError",
    "TraceNotFound",
]


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why and what to do."""


class StoreBusy(StoreError):
    """Another process held the database file for longer than the timeout; trying again may work."""


class ExecutionLookupError(LookupError):
    """An execution id or prefix that does not name exactly one execution."""


class ExecutionNotFound(ExecutionLookupError):
    """No execution has this id or an id starting with it."""


class AmbiguousExecutionId(ExecutionLookupError):
    """Several executions start with this prefix; `candidates` holds a few of them."""

    def __init__(self, message: str, candidates: Sequence[str]) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


class TraceNotFound(LookupError):
    """No span, ended or running, has this trace id."""


class SpanNotFound(LookupError):
    """The trace has no span, ended or running, with this span id."""


class ReadOnlyViolation(ValueError):
    """A statement given to a read-only query would write, read files, load code or change settings."""


class SandboxRefusal(ReadOnlyViolation):
    """DuckDB's sandbox settings refused what a query tried (a file, a setting, a write)."""


class QueryLimitExceeded(RuntimeError):
    """A sandboxed query ran past its time limit (and was interrupted) or its memory limit."""
