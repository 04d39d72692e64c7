"""`Conditions`: the WHERE clause of a read-side query, built of SQL fragments and their `?` parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from otel_workflow.model.records import TimeArg
from otel_workflow.query.timeparse import time_window


class Conditions:
    """Conditions joined with AND, and their parameters in the order the fragments were added.

    A filter given as None (or as no values) adds nothing, so the callers pass their arguments as they
    come. Columns and fragments are SQL written in the code, never values.
    """

    def __init__(self) -> None:
        self.where: list[str] = []
        self.params: list[Any] = []

    def add(self, condition: str, *params: Any) -> None:
        """A condition as it is written, with the values of its `?`."""
        self.where.append(condition)
        self.params.extend(params)

    def window(self, column: str, since: TimeArg, until: TimeArg) -> None:
        """`column` in `[since, until)` (either end open when None); ValueError on an empty window."""
        conditions, params = time_window(column, since, until)
        self.where.extend(conditions)
        self.params.extend(params)

    def equal(self, column: str, value: Any) -> None:
        """`column = value`, unless `value` is None."""
        if value is not None:
            self.add(f"{column} = ?", value)

    def one_of(self, column: str, values: Sequence[Any]) -> None:
        """`column IN (values)`, unless there are none."""
        if values:
            self.add(f"{column} IN ({', '.join('?' for _ in values)})", *values)

    def sql(self) -> str:
        """`" WHERE a AND b"`, or "" without conditions."""
        return f" WHERE {' AND '.join(self.where)}" if self.where else ""
