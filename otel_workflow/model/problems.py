"""What an error means to the person who asked: one message, an HTTP status, a CLI exit code.

The CLI and the server both turn errors into answers through `problem_of`, so a refused query or an
unknown execution id reads the same in a terminal and in JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb

from otel_workflow.model.errors import (
    AmbiguousExecutionId,
    ExecutionLookupError,
    QueryLimitExceeded,
    ReadOnlyViolation,
    SandboxRefusal,
    SpanNotFound,
    StoreError,
    TraceNotFound,
)

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "Problem", "problem_of"]

#: The command could not do its work (no database, unknown execution, a database error).
EXIT_FAILED = 1
#: Bad arguments (click's convention), a refused statement among them.
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """An error as an answer: `message`, `http_status`, `exit_code`; `fields` go into a JSON answer
    beside the message (`kind`: `refused` or `limit` for the SQL sandbox; `candidates` of an ambiguous id)."""

    message: str
    http_status: int
    exit_code: int
    fields: Mapping[str, Any] = field(default_factory=dict)


def problem_of(exc: BaseException) -> Problem | None:
    """The answer for an error the read side raises; None for anything else (a bug: let it raise)."""
    text = str(exc).strip() or type(exc).__name__
    # Subclasses before the classes they extend.
    if isinstance(exc, AmbiguousExecutionId):
        return Problem(text, 409, EXIT_FAILED, {"candidates": exc.candidates})
    if isinstance(exc, ExecutionLookupError | TraceNotFound | SpanNotFound):
        return Problem(text, 404, EXIT_FAILED)
    if isinstance(exc, SandboxRefusal):
        return Problem(text, 403, EXIT_USAGE, {"kind": "refused"})
    if isinstance(exc, ReadOnlyViolation):
        return Problem(text, 400, EXIT_USAGE, {"kind": "refused"})
    if isinstance(exc, QueryLimitExceeded):
        return Problem(text, 422, EXIT_FAILED, {"kind": "limit"})
    if isinstance(exc, StoreError):
        return Problem(text, 503, EXIT_FAILED)
    if isinstance(exc, duckdb.Error):
        return Problem(f"database error: {text}", 400, EXIT_FAILED)
    if isinstance(exc, ValueError | NotADirectoryError | IsADirectoryError):
        return Problem(text, 400, EXIT_USAGE)
    return None
