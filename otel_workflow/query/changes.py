"""The change cursor: a short text that moves whenever what the pages show may have changed.

A page polls it (`GET /api/changes`, once a second) and reads its lists again only when it moved,
as Phoenix and otel-desktop-viewer do, instead of downloading the whole list every second.
"""

from __future__ import annotations

from typing import Final

import duckdb

__all__ = ["change_cursor"]

# Every write of the writer changes one of these: a batch adds spans (and removes the live rows of the
# spans it stores), a started execution or step adds a live row, a clean shutdown marks live rows
# interrupted. A prune removes spans. Counts and a maximum are answered from DuckDB's row groups
# without reading the span columns (benchmarks/queries.py: "change cursor").
_CURSOR: Final = """
SELECT (SELECT count(*) FROM spans),
       count(*), count(interrupted_at), max(start_time)
FROM running_spans
"""


def change_cursor(connection: duckdb.DuckDBPyConnection) -> str:
    """A text equal to the previous one only if no span was stored, started, interrupted or pruned since.

    Opaque to callers: compare it, do not parse it. (A prune and the storing of exactly as many spans
    between two reads would leave it unchanged; the next write moves it.)
    """
    row = connection.execute(_CURSOR).fetchone()
    assert row is not None  # an aggregate without GROUP BY has one row
    spans, live, interrupted, latest_start = row
    latest = latest_start.timestamp() if latest_start is not None else 0.0
    return f"{spans}.{live}.{interrupted}.{latest:.6f}"
