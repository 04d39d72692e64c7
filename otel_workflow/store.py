"""`TraceStore`: the DuckDB database of spans, its single writer, and its read side.

DuckDB lets one process hold a database file for writing, and a process
cannot open a file another process holds. So the writer holds the file only
for the length of one write cycle (one transaction per batch) and readers
hold it only for one query; both retry briefly when they meet the other's
lock. A CLI or notebook can therefore read while the application writes, and
neither ever fails with a lock error. An in-memory store (`":memory:"`) keeps
one connection for its lifetime, since closing it would lose the data.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.rows import RunningRecord, SpanBatch, SpanConverter, running_table
from otel_workflow.schema import SchemaVersionError, ensure_schema
from otel_workflow.writer import BackgroundWriter, RetryLater

logger = logging.getLogger("otel_workflow")

DEFAULT_DB_PATH = "otel_workflow.duckdb"
MEMORY = ":memory:"

__all__ = ["DEFAULT_DB_PATH", "ExecutionRow", "SchemaVersionError", "StepRow", "StoreError", "TraceStore"]


# DuckDB shares one database instance among a process's connections to a file and tears it down
# when the last one closes. Opening while another thread tears down (the writer ending its cycle
# as a reader starts) was seen to yield a connection without the Python Arrow scan. Opening and
# closing are therefore serialised per process; queries themselves run in parallel.
_instance_lock = threading.Lock()


def _reset_instance_lock() -> None:
    global _instance_lock  # noqa: PLW0603 - a lock held by a thread that does not exist in the child
    _instance_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_instance_lock)


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why and what to do."""


def _is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    """One row of `workflow_executions`."""

    id: str
    workflow_id: str | None
    status: str
    trigger_type: str | None
    triggered_by: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    error_message: str | None
    current_step: str | None
    trace_id: str
    service_name: str | None


@dataclass(frozen=True, slots=True)
class StepRow:
    """One row of `execution_steps`."""

    id: str
    execution_id: str
    step_name: str
    step_type: str | None
    status: str
    sequence_num: int | None
    parent_step_id: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    error_message: str | None
    input_data: str | None
    output_data: str | None


_EXECUTION_COLUMNS = ", ".join(f.name for f in ExecutionRow.__dataclass_fields__.values())
_STEP_COLUMNS = ", ".join(f.name for f in StepRow.__dataclass_fields__.values())


class TraceStore:
    """The DuckDB database of spans: schema, batched ingestion through one writer, and queries.

    `TraceStore("traces.duckdb")` opens or creates the file; `read_only=True` opens
    an existing file for queries only. Ingestion is asynchronous: `submit_spans`
    and `submit_running` enqueue and return at once; `flush()` waits for the writer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_DB_PATH,
        *,
        read_only: bool = False,
        max_queued_spans: int = 200_000,
        flush_interval_s: float = 0.5,
        lock_timeout_s: float = 10.0,
    ) -> None:
        self.path = MEMORY if str(path) == MEMORY else str(Path(path).expanduser().absolute())
        self.read_only = read_only
        self._lock_timeout_s = lock_timeout_s
        self._memory: duckdb.DuckDBPyConnection | None = None
        self._memory_lock = threading.Lock()
        self._closed = False
        self._writer_id = str(uuid.uuid4())
        self._converter = SpanConverter()
        if self.path == MEMORY:
            if read_only:
                raise StoreError("an in-memory database cannot be opened read-only: it would always be empty")
            self._memory = duckdb.connect(MEMORY)
            ensure_schema(self._memory)
        elif read_only:
            if not Path(self.path).exists():
                raise StoreError(
                    f"no database at {self.path}: run your traced application or `otel-workflow demo` first"
                )
        else:
            self._prepare_file()
        self._writer = BackgroundWriter(
            _StoreSink(self), max_queued=max_queued_spans, flush_interval_s=flush_interval_s
        )
        if not read_only:
            # Flush at exit without closing: the TracerProvider's exit hook may still export after this.
            atexit.register(_flush_at_exit, weakref.ref(self))

    def _prepare_file(self) -> None:
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise StoreError(f"cannot create the database {self.path}: the folder {folder} does not exist")
        try:
            with self._connect(read_only=False) as connection:
                ensure_schema(connection)
        except SchemaVersionError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc

    # -- connections ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(
        self, *, read_only: bool, timeout_s: float | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held only for the `with` block; waits out another process's lock briefly."""
        if self._memory is not None:
            with self._memory_lock:
                cursor = self._memory.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            return
        connection = self._open_file(read_only, self._lock_timeout_s if timeout_s is None else timeout_s)
        try:
            yield connection
        finally:
            with _instance_lock:
                connection.close()

    def _open_file(self, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                with _instance_lock:
                    return duckdb.connect(self.path, read_only=read_only)
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise
                if read_only and "different configuration" in str(exc):
                    # This process already has the file open for writing: share that instance.
                    with _instance_lock:
                        return duckdb.connect(self.path)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    # -- write side ------------------------------------------------------------------------------

    def submit_spans(self, spans: Sequence[ReadableSpan]) -> bool:
        """Queue finished spans for writing. False (and counted) when they had to be dropped."""
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        return self._writer.submit_spans(spans)

    def submit_running(self, record: RunningRecord) -> bool:
        """Queue the live row of an execution or step that just started."""
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        return self._writer.submit_running(record)

    @property
    def dropped_spans(self) -> int:
        """Span records dropped since this store was opened (queue full, write failed, after shutdown)."""
        return self._writer.drops.total

    @property
    def queued(self) -> int:
        """Span records accepted and not yet written."""
        return self._writer.queued

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written. False if the timeout passed first."""
        return self._writer.flush(timeout_s)

    def close_writer(self, timeout_s: float | None = 30.0) -> bool:
        """Write what is queued, mark spans that never ended as interrupted, stop the writer thread."""
        if self.read_only:
            return True
        return self._writer.close(timeout_s)

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Flush and release the database. Idempotent."""
        if self._closed:
            return
        self.close_writer(timeout_s)
        self._closed = True
        if self._memory is not None:
            with self._memory_lock:
                self._memory.close()

    def _write_batch(
        self, spans: Sequence[ReadableSpan], running: Sequence[RunningRecord], final: bool
    ) -> None:
        batch = self._converter.finished(spans) if spans else None
        ended = set(batch.spans.column("span_id").to_pylist()) if batch is not None else set()
        live = [r for r in running if r.span_id not in ended]
        if batch is None and not live and not final:
            return
        try:
            with self._connect(read_only=False, timeout_s=0.25) as connection:
                connection.execute("BEGIN TRANSACTION")
                try:
                    if live:
                        connection.register("_running_batch", running_table(live, self._writer_id))
                        connection.execute("INSERT INTO running_spans SELECT *, NULL FROM _running_batch")
                        connection.unregister("_running_batch")
                    if batch is not None:
                        _insert_finished(connection, batch)
                    if final:
                        connection.execute(
                            "UPDATE running_spans SET interrupted_at = now() "
                            "WHERE writer_id = ? AND interrupted_at IS NULL",
                            [self._writer_id],
                        )
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
        except duckdb.Error as exc:
            if _is_lock_conflict(exc):
                raise RetryLater("the database file is held by another process") from exc
            raise

    # -- read side -------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query and return its rows as tuples."""
        with self._connect(read_only=self.read_only) as connection:
            return connection.execute(query, params).fetchall()

    def arrow(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run a query and return an Arrow table (for pandas: `.to_pandas()`, polars: `pl.from_arrow`)."""
        with self._connect(read_only=self.read_only) as connection:
            table: pa.Table = connection.sql(query, params=params).to_arrow_table()
            return table

    def executions(
        self, *, status: str | None = None, workflow_id: str | None = None, limit: int = 50
    ) -> list[ExecutionRow]:
        """Executions, newest first."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.sql(
            f"SELECT {_EXECUTION_COLUMNS} FROM workflow_executions {clause} ORDER BY started_at DESC LIMIT ?",
            [*params, limit],
        )
        return [ExecutionRow(*row) for row in rows]

    def steps(self, execution_id: str) -> list[StepRow]:
        """The steps of one execution in start order."""
        rows = self.sql(
            f"SELECT {_STEP_COLUMNS} FROM execution_steps WHERE execution_id = ? "
            "ORDER BY started_at, sequence_num",
            [execution_id],
        )
        return [StepRow(*row) for row in rows]

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"TraceStore({self.path!r}, {mode})"


def _insert_finished(connection: duckdb.DuckDBPyConnection, batch: SpanBatch) -> None:
    spans, events, links = batch.spans, batch.events, batch.links
    if len(set(spans.column("span_id").to_pylist())) < spans.num_rows:
        # The same span twice in one batch (exported twice before the writer ran): keep one of each.
        spans = _distinct(connection, spans, "trace_id, span_id")
        events = _distinct(connection, events, "trace_id, span_id, event_index")
        links = _distinct(connection, links, "trace_id, span_id, link_index")
    bounds = pc.min_max(spans.column("start_time"))
    connection.register("_span_batch", spans)
    # A re-exported span has the same start time: bounding the check by the batch's start times lets
    # DuckDB skip row groups by their min/max instead of reading every stored span id.
    inserted = connection.execute(
        """
        INSERT INTO spans SELECT b.* FROM _span_batch b
        WHERE NOT EXISTS (
            SELECT 1 FROM spans s
            WHERE s.start_time BETWEEN ? AND ? AND s.span_id = b.span_id AND s.trace_id = b.trace_id
        )
        """,
        [bounds["min"].as_py(), bounds["max"].as_py()],
    ).fetchone()
    connection.unregister("_span_batch")
    all_new = inserted is not None and inserted[0] == spans.num_rows
    for table, name, key in ((events, "span_events", "event_index"), (links, "span_links", "link_index")):
        if table.num_rows == 0:
            continue
        connection.register("_child_batch", table)
        if all_new:
            connection.execute(f"INSERT INTO {name} SELECT * FROM _child_batch")
        else:
            connection.execute(
                f"""
                INSERT INTO {name} SELECT c.* FROM _child_batch c
                WHERE NOT EXISTS (
                    SELECT 1 FROM {name} x
                    WHERE x.span_id = c.span_id AND x.trace_id = c.trace_id AND x.{key} = c.{key}
                )
                """
            )
        connection.unregister("_child_batch")
    connection.register("_ended", spans.select(["trace_id", "span_id"]))
    connection.execute(
        "DELETE FROM running_spans r USING _ended e WHERE r.span_id = e.span_id AND r.trace_id = e.trace_id"
    )
    connection.unregister("_ended")


def _distinct(connection: duckdb.DuckDBPyConnection, table: pa.Table, key: str) -> pa.Table:
    if table.num_rows == 0:
        return table
    connection.register("_with_duplicates", table)
    distinct: pa.Table = connection.sql(
        f"SELECT DISTINCT ON ({key}) * FROM _with_duplicates"
    ).to_arrow_table()
    connection.unregister("_with_duplicates")
    return distinct


class _StoreSink:
    """Adapts the writer's sink protocol to a store, without keeping the store alive."""

    def __init__(self, store: TraceStore) -> None:
        self._store = weakref.ref(store)

    def write(self, spans: Sequence[ReadableSpan], running: Sequence[RunningRecord], *, final: bool) -> None:
        store = self._store()
        if store is not None:
            store._write_batch(spans, running, final)


def _flush_at_exit(ref: weakref.ref[TraceStore]) -> None:
    store = ref()
    if store is not None and not store._closed:
        store.flush(timeout_s=10.0)
