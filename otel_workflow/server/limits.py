"""The collector's bounds (`ReceiverLimits`): what the receiver, the read API and `serve()` read them from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from otel_workflow.query import readonly

__all__ = ["ReceiverLimits"]

_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """The receiver's bounds; each one keeps a misbehaving or hostile client from hurting the rest.

    - `max_body_bytes`: a request body as sent (compressed or not); larger gets 413.
    - `max_decompressed_bytes`: a body after gzip/deflate; larger gets 413 (gzip bombs stop here).
    - `max_concurrent_ingest`: requests read and decoded at once, which bounds memory to about
      this many bodies; `ingest_wait_s`: how long a request waits for a slot before 429.
    - `max_connections`: open connections (the new one included) and requests in progress at
      which uvicorn answers 503 (its `limit_concurrency`).
    - `body_timeout_s`: a body must arrive within this time (slow senders get 408).
    - `queue_high_water`: ingest answers 503 once the store's write queue holds this fraction
      of its bound, well before the store itself would have to drop spans.
    - `retry_after_s`: the `Retry-After` of 429 and 503 answers.
    - `max_queued_spans`: the bound of the write queue of the store that `serve()` opens.
    - `sql_rows`, `max_sql_rows`: the rows `/api/sql` returns without a `limit`, and the largest
      `limit` it takes; `max_sql_bytes`: about the most Arrow data of one answer (wide rows stop
      the page earlier; the answer says `truncated`).
    - `sql_timeout_s`: the time limit of one `/api/sql` query; `sql_memory_limit`: the memory
      limit of its DuckDB instance, for the store that `serve()` opens (see `readonly`).
    - `max_page`: the largest `limit` of the listing routes.
    """

    max_body_bytes: int = 20 * _MIB
    max_decompressed_bytes: int = 20 * _MIB
    max_concurrent_ingest: int = 4
    ingest_wait_s: float = 2.0
    max_connections: int = 128
    body_timeout_s: float = 30.0
    queue_high_water: float = 0.5
    retry_after_s: int = 1
    max_queued_spans: int = 200_000
    sql_rows: int = readonly.HTTP_ROWS
    max_sql_rows: int = readonly.HTTP_MAX_ROWS
    max_sql_bytes: int = 16 * _MIB
    sql_timeout_s: float = readonly.HTTP_TIMEOUT_S
    sql_memory_limit: str = readonly.SqlLimits().memory_limit
    max_page: int = 10_000
