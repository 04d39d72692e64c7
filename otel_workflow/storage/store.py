"""`TraceStore`: the DuckDB database of spans, its single writer, and its read side.

A facade: the connections are `database.Database`'s, the writes `write.SpanWriteSink`'s (run by
`ingest.writer.BackgroundWriter` on its thread), the reads `query`'s, and SQL from outside runs in
`query.readonly`'s sandbox.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.ingest.convert import SpanConverter, prepare_conversion
from otel_workflow.ingest.drops import REJECTED
from otel_workflow.ingest.live import LiveRowGate
from otel_workflow.ingest.logrows import LogRows
from otel_workflow.ingest.writer import BackgroundWriter
from otel_workflow.model.errors import StoreError
from otel_workflow.model.records import (
    DurationArg,
    ExecutionDetail,
    ExecutionFilter,
    ExecutionRow,
    LogRow,
    PruneReport,
    SpanDetail,
    SpanLine,
    StatsSeries,
    StepRow,
    StepStats,
    TableInfo,
    TimeArg,
    WorkflowStats,
)
from otel_workflow.query import changes as changes_query
from otel_workflow.query import executions as executions_query
from otel_workflow.query import logs as logs_query
from otel_workflow.query import readonly
from otel_workflow.query import stats as stats_query
from otel_workflow.query import tables as tables_query
from otel_workflow.query import traces as traces_query
from otel_workflow.query.timeparse import cutoff
from otel_workflow.storage import prune
from otel_workflow.storage.database import MEMORY, Database
from otel_workflow.storage.schema import rebuild_derived
from otel_workflow.storage.write import SpanWriteSink
from otel_workflow.storage.writerprocess import ProcessWriteSink

DEFAULT_DB_PATH = "otel_workflow.duckdb"
# A queued span is a live SDK object of 2-3 KB: 50,000 of them bound the queue near 150 MB
# (benchmarks/memory.py measured 525 MB of RSS with a 200,000 bound and a writer that could not keep up).
DEFAULT_MAX_QUEUED_SPANS = 50_000
# A queued log record is an Arrow row of a few hundred bytes: 20,000 bound them near 10 MB.
DEFAULT_MAX_QUEUED_LOGS = 20_000
_T = TypeVar("_T")

__all__ = ["DEFAULT_DB_PATH", "DEFAULT_MAX_QUEUED_LOGS", "DEFAULT_MAX_QUEUED_SPANS", "TraceStore"]


class TraceStore:
    """The DuckDB database of spans: schema, batched ingestion through one writer, and queries.

    `TraceStore("traces.duckdb")` opens or creates the file; `read_only=True` opens
    an existing file for queries only. Ingestion is asynchronous: `submit_spans`
    and `live_rows.submit` enqueue and return at once; `flush()` waits for the writer.

    `max_queued_spans` bounds the memory the write queue may use (see `ingest.admission` for
    which spans go first when it is full); `max_queued_logs` bounds the log records waiting, apart
    from spans; `lock_timeout_s` is how long opening waits for another process's lock;
    `shutdown_timeout_s` bounds all shutdown
    steps together (`close`, the exporter's `shutdown`, the exit hook);
    `drop_log_interval_s` is how often, at most, drops are logged.

    `writer_process=True` has a child process hold the file and run the DuckDB statements
    (`storage.writerprocess`): this process only converts spans and hands the rows over, so the
    DuckDB client no longer competes with the application for its GIL. Needs a database file.

    SQL from outside (`read_sql`, and `sql`/`arrow` of a read-only store) runs in the
    sandbox of `readonly`: it sees this database and nothing else, under `sql_limits`
    (time limit 30 s, memory limit 1 GB by default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_DB_PATH,
        *,
        read_only: bool = False,
        max_queued_spans: int = DEFAULT_MAX_QUEUED_SPANS,
        max_queued_logs: int = DEFAULT_MAX_QUEUED_LOGS,
        flush_interval_s: float = 0.5,
        lock_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 10.0,
        drop_log_interval_s: float = 60.0,
        sql_limits: readonly.SqlLimits | None = None,
        writer_process: bool = False,
    ) -> None:
        self.path = self.resolve_path(path)
        self.read_only = read_only
        self.sql_limits = sql_limits or readonly.SqlLimits()
        self._closed = False
        self._database = Database(self.path, read_only=read_only, lock_timeout_s=lock_timeout_s)
        local = SpanWriteSink(self._database, SpanConverter())
        self._process_sink: ProcessWriteSink | None = None
        if writer_process and not read_only:
            if self._database.in_memory:
                raise StoreError(
                    "writer_process=True needs a database file: an in-memory database lives in this process"
                )
            self._process_sink = ProcessWriteSink(local)
        self._writer = BackgroundWriter(
            self._process_sink or local,
            max_queued=max_queued_spans,
            max_queued_logs=max_queued_logs,
            flush_interval_s=flush_interval_s,
            label=self.path,
            drop_log_interval_s=drop_log_interval_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )
        local.count_failed_live_rows = self._writer.drops.add_live_rows
        local.count_rejected_logs = functools.partial(self._writer.drops.add_logs, reason=REJECTED)
        if self._process_sink is not None:
            self._process_sink.start()
        if not read_only:
            if not local.converter.native:
                prepare_conversion()
            # Flush at exit without closing: the TracerProvider's exit hook may still export after this.
            atexit.register(_flush_at_exit, weakref.ref(self))

    @staticmethod
    def resolve_path(path: str | os.PathLike[str]) -> str:
        """The `path` a store of `path` has: absolute, `~` expanded (`:memory:` as it is)."""
        return MEMORY if str(path) == MEMORY else str(Path(path).expanduser().absolute())

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for this package's own trusted reads (export), held for the `with` block only.

        Read-only on a read-only store; not the sandbox: SQL from outside goes to `read_sql`.
        """
        with self._database.connect(read_only=self.read_only) as connection:
            yield connection

    # -- write side ------------------------------------------------------------------------------

    def submit_spans(self, spans: Sequence[ReadableSpan]) -> bool:
        """Queue finished spans for writing. False (and counted) when they had to be dropped."""
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        return self._writer.submit_spans(spans)

    def submit_logs(self, rows: LogRows) -> bool:
        """Queue converted log records (`ingest.logrows`) for writing. False (and counted) when they had
        to be dropped: at most `max_queued_logs` wait, apart from the spans."""
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        return self._writer.submit_logs(rows)

    def submit_log_records(self, records: Sequence[Any]) -> bool:
        """Queue the OpenTelemetry SDK's log records (`ReadableLogRecord`/`ReadWriteLogRecord`): the
        caller only appends them; the writer's converter thread makes rows of them. False (and
        counted) when some had to be dropped."""
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        return self._writer.submit_log_records(records)

    @property
    def dropped_logs(self) -> int:
        """Log records dropped since this store was opened (queue full, write failed, shutdown,
        rejected); logged with the span drops, at most once per interval."""
        return self._writer.drops.logs_total

    @property
    def dropped_logs_by_reason(self) -> dict[str, int]:
        """`dropped_logs` by reason, as `dropped_by_reason`."""
        return dict(self._writer.drops.logs_by_reason)

    @property
    def live_rows(self) -> LiveRowGate:
        """Where execution and step spans that just started are queued for their live rows.

        The writer builds a row only if the span is still running when it writes: a step that ends
        within the write interval costs nothing here, and the application thread does no conversion.
        """
        if self.read_only:
            raise StoreError(
                "this TraceStore was opened read-only: it takes no live rows (give WorkflowSpanProcessor the "
                "store its DuckDBSpanExporter writes to, or no store at all)"
            )
        return self._writer.live_rows

    @property
    def dropped_spans(self) -> int:
        """Finished spans dropped since this store was opened: queue full, write failed (disk full,
        damaged file), malformed, or not written by the shutdown timeout. Also the metric
        `otel_workflow.spans.dropped`, by reason, and a log warning at most once per interval."""
        return self._writer.drops.total

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """`dropped_spans` by reason: `queue_full`, `write_failed`, `shutdown`, `rejected`."""
        return dict(self._writer.drops.by_reason)

    @property
    def queued(self) -> int:
        """Span records accepted and not yet written."""
        return self._writer.queued

    @property
    def queued_logs(self) -> int:
        """Log records accepted and not yet written."""
        return self._writer.queued_logs

    @property
    def max_queued_logs(self) -> int:
        """The bound of the log records waiting (apart from the spans')."""
        return self._writer.max_queued_logs

    @property
    def max_queued_spans(self) -> int:
        """The bound of the write queue (live rows and finished spans together)."""
        return self._writer.max_queued

    @property
    def writer_pid(self) -> int | None:
        """The pid of the writer process while one runs (`writer_process=True`), else None."""
        return None if self._process_sink is None else self._process_sink.writer_pid

    def wait_for_writer_process(self) -> bool:
        """With `writer_process=True`: wait until the writer process has started (it imports DuckDB
        first); False if it could not start and this process writes instead. True at once without one."""
        return self._process_sink is None or self._process_sink.wait_ready()

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written. False if the timeout passed first."""
        return self._writer.flush(timeout_s)

    def shutdown_wait(self, timeout_s: float | None = None) -> float:
        """How long a shutdown step may still wait: all steps together take at most
        `shutdown_timeout_s`, counted from the first (`timeout_s`, if shorter, shortens it)."""
        return self._writer.shutdown_wait(timeout_s)

    def close_writer(self, timeout_s: float | None = None) -> bool:
        """Write what is queued, mark spans that never ended as interrupted, stop the writer thread.

        Bounded: together with the other shutdown steps it waits at most `shutdown_timeout_s`
        (or `timeout_s` if shorter). What is not written by then is counted in `dropped_spans`;
        the return value is then False. Idempotent.
        """
        if self.read_only:
            return True
        closed = self._writer.close(self._writer.shutdown_wait(timeout_s))
        if self._process_sink is not None:
            # Given up on (the writer hangs in it): killed, so that nothing of it outlives the store.
            self._process_sink.close(kill=not closed)
        return closed

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and release the database (bounded as `close_writer`). Idempotent."""
        if self._closed:
            return
        self.close_writer(timeout_s)
        self._closed = True
        self._database.close()

    def rebuild_derived(self) -> None:
        """Recompute the `executions` and `steps` tables from the raw spans, in one transaction.

        They are kept up to date at ingest; this is for a database whose derived rows were
        lost or written by an older version. Flushes queued spans first.
        """
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        self.flush()
        with self._database.connect(read_only=False) as connection:
            connection.execute("BEGIN TRANSACTION")
            try:
                rebuild_derived(connection)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    # -- read side -------------------------------------------------------------------------------

    def sql(
        self, query: str, params: Sequence[Any] | None = None, *, timeout_s: float | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a query and return its rows as tuples.

        On a read-only store this is `read_sql`'s sandbox (one reading statement, this database
        only, `sql_limits`). On a writable store it is your own code's SQL on a connection that
        can do anything, interrupted after `timeout_s` if given: give SQL from elsewhere to `read_sql`.
        """
        if self.read_only:
            return self._sandbox_run(query, params, timeout_s, _fetch_rows)
        with self._database.connect(read_only=False) as connection:
            if timeout_s is None:
                return connection.execute(query, params).fetchall()
            with readonly.time_limited(connection, self.sql_limits.with_timeout(timeout_s)):
                return connection.execute(query, params).fetchall()

    def arrow(
        self, query: str, params: Sequence[Any] | None = None, *, timeout_s: float | None = None
    ) -> pa.Table:
        """`sql()` as an Arrow table (for pandas: `.to_pandas()`, polars: `pl.from_arrow`)."""
        if self.read_only:
            return self._sandbox_run(query, params, timeout_s, _fetch_arrow)
        with self._database.connect(read_only=False) as connection:
            if timeout_s is None:
                return _fetch_arrow(connection.sql(query, params=params))
            with readonly.time_limited(connection, self.sql_limits.with_timeout(timeout_s)):
                return _fetch_arrow(connection.sql(query, params=params))

    def read_sql(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> pa.Table:
        """Run one statement that only reads (SELECT, WITH, FROM, SHOW, DESCRIBE, EXPLAIN) into Arrow.

        The SQL sandbox, whatever mode this store was opened in: what `otel-workflow sql` and
        `/api/sql` run. Statements that are not reads are refused with `ReadOnlyViolation`
        before they reach the database; files, URLs, extensions, settings and writes with
        `SandboxRefusal` (a `ReadOnlyViolation`) by DuckDB itself. Past `timeout_s` (default
        `sql_limits.timeout_s`) or the memory limit, `QueryLimitExceeded`.
        """
        return self._sandbox_run(query, params, timeout_s, _fetch_arrow)

    def read_sql_page(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        max_rows: int,
        max_bytes: int = 16 * 1024 * 1024,
        timeout_s: float | None = None,
    ) -> readonly.SqlPage:
        """`read_sql` stopping after `max_rows` rows or about `max_bytes` (`truncated`: rows were cut)."""
        page = functools.partial(readonly.read_page, max_rows=max_rows, max_bytes=max_bytes)
        return self._sandbox_run(query, params, timeout_s, page)

    def _sandbox_run(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None,
        timeout_s: float | None,
        fetch: Callable[[duckdb.DuckDBPyRelation], _T],
    ) -> _T:
        statement = readonly.check_read_only(query)
        limits = self.sql_limits.with_timeout(timeout_s)
        with (
            self._database.sandboxed(readonly.sandbox_config(limits)) as connection,
            readonly.time_limited(connection, limits),
        ):
            return fetch(connection.sql(statement, params=params))

    def df(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """`arrow()` as a pandas DataFrame; needs pandas (`pip install pandas`), imported only here."""
        _require_module("pandas", "TraceStore.df()")
        return self.arrow(query, params).to_pandas()

    def pl(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """`arrow()` as a polars DataFrame; needs polars (`pip install polars`), imported only here."""
        polars = _require_module("polars", "TraceStore.pl()")
        return polars.from_arrow(self.arrow(query, params))

    def executions(
        self,
        where: ExecutionFilter | None = None,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | Sequence[str] | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        triggered_by: str | None = None,
        error_contains: str | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[ExecutionRow]:
        """Executions matching every given filter, newest first.

        The filter is `where` (an `ExecutionFilter`) or the keyword arguments, which replace the
        conditions of `where` they give. `status` and `workflow_id` take one value or several;
        `since` / `until` bound the start time (a datetime, a timedelta or text like `"1h"`, `"7d"`
        or an ISO timestamp); `error_contains` matches the error message without regard to case;
        `limit=None` returns all.
        """
        given: dict[str, Any] = {
            "status": status,
            "workflow_id": workflow_id,
            "since": since,
            "until": until,
            "triggered_by": triggered_by,
            "error_contains": error_contains,
        }
        conditions = dataclasses.replace(
            where or ExecutionFilter(), **{name: value for name, value in given.items() if value is not None}
        )
        with self.connection() as connection:
            return executions_query.list_executions(connection, conditions, limit=limit, offset=offset)

    def resolve_execution_id(self, id_or_prefix: str) -> str:
        """The full id of the execution whose id is, or uniquely starts with, `id_or_prefix`.

        Raises `ExecutionNotFound` or `AmbiguousExecutionId` (both `LookupError`).
        """
        with self.connection() as connection:
            return executions_query.resolve_execution_id(connection, id_or_prefix)

    def execution(self, id_or_prefix: str) -> ExecutionDetail:
        """One execution (by id or unique id prefix) with its steps and the waterfall of its spans."""
        with self.connection() as connection:
            return executions_query.get_execution(connection, id_or_prefix)

    def steps(self, execution_id: str) -> list[StepRow]:
        """The steps of one execution (exact id) in start order."""
        with self.connection() as connection:
            return executions_query.list_steps(connection, execution_id)

    def logs(
        self,
        execution_id: str | None = None,
        *,
        level: str | Sequence[str] | None = None,
        step_id: str | None = None,
        step_name: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        limit: int | None = None,
    ) -> list[LogRow]:
        """Log rows in time order: of one execution (id or unique prefix), or of all.

        `level` keeps only rows of that level or levels (`info`, `error`,
        `warning`, `event`, ...); `step_id` those of one step (its span id),
        `step_name` those of the steps of that name;
        `since` / `until` bound the row time. The rows of one execution are those
        of its time window, widened by 5 minutes for clock skew, as its waterfall.
        """
        with self.connection() as connection:
            found = window = None
            if execution_id is not None:
                found = executions_query.resolve_execution_id(connection, execution_id)
                window = executions_query.execution_window(connection, found)
            return logs_query.list_logs(
                connection,
                found,
                level=level,
                step_id=step_id,
                step_name=step_name,
                since=since,
                until=until,
                limit=limit,
                within=window,
            )

    def trace(self, trace_id: str) -> list[SpanLine]:
        """Every span of a trace, workflow or not, ended or running, as waterfall lines (depth first).

        Raises `TraceNotFound` (a `LookupError`) when no span has the id, ValueError when it is not
        32 hexadecimal digits.
        """
        with self.connection() as connection:
            return traces_query.get_trace(connection, trace_id)

    def span(self, trace_id: str, span_id: str) -> SpanDetail:
        """One span with its attributes, resource, events and links (a running one: its live row).

        Raises `SpanNotFound` (a `LookupError`), or ValueError for ids that are not hexadecimal.
        """
        with self.connection() as connection:
            return traces_query.get_span(connection, trace_id, span_id)

    def change_cursor(self) -> str:
        """A short text that changes whenever a span is stored, started, interrupted or pruned: poll it
        and read again only when it moved."""
        with self.connection() as connection:
            return changes_query.change_cursor(connection)

    def tables(self) -> list[TableInfo]:
        """The tables and views of the database with their columns (what `read_sql` can query)."""
        with self.connection() as connection:
            return tables_query.list_tables(connection)

    def step_stats(
        self,
        *,
        workflow_id: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        sort: str = "p95",
    ) -> list[StepStats]:
        """Per workflow and step: count, failures, failure rate, p50/p95/p99/max duration.

        Over the ended steps that started in the window; `sort` is one of
        `name`, `count`, `failures`, `p50`, `p95` (default), `p99`, `max`.
        """
        with self.connection() as connection:
            return stats_query.step_stats(
                connection, workflow_id=workflow_id, since=since, until=until, sort=sort
            )

    def workflow_stats(
        self,
        *,
        workflow_id: str | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        sort: str = "p95",
    ) -> list[WorkflowStats]:
        """Per workflow: executions ended and running, failures, duration percentiles (as `step_stats`)."""
        with self.connection() as connection:
            return stats_query.workflow_stats(
                connection, workflow_id=workflow_id, since=since, until=until, sort=sort
            )

    def step_series(
        self,
        *,
        since: TimeArg = None,
        until: TimeArg = None,
        workflow_id: str | None = None,
        step_name: str | None = None,
        buckets: int = 60,
    ) -> StatsSeries:
        """Ended steps over time: per bucket of a round width, count, failures, p50/p95/p99.

        The window defaults to the 24 hours before now; `buckets` (1-500) is the most buckets wanted
        and sets their width (`query.stats.series_bucket_width`).
        """
        with self.connection() as connection:
            return stats_query.step_series(
                connection,
                since=since,
                until=until,
                workflow_id=workflow_id,
                step_name=step_name,
                buckets=buckets,
            )

    def prune(self, older_than: DurationArg, *, dry_run: bool = False) -> PruneReport:
        """Delete the traces in which nothing happened for `older_than` (`"7d"`, a timedelta).

        Spans, their events and links, and live rows go together in one
        transaction, and with them the executions, steps and logs derived from
        them; the report counts each. `dry_run=True` counts without deleting.
        The one read-side method that writes: the store must not be read-only.
        """
        if self.read_only:
            raise StoreError("prune deletes rows: open the TraceStore without read_only=True")
        before = cutoff(older_than)
        with self._database.connect(read_only=False) as connection:
            return prune.prune(connection, before, dry_run=dry_run)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"TraceStore({self.path!r}, {mode})"


def _fetch_rows(relation: duckdb.DuckDBPyRelation) -> list[tuple[Any, ...]]:
    return relation.fetchall()


def _fetch_arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    table: pa.Table = relation.to_arrow_table()
    return table


def _require_module(module: str, feature: str) -> Any:
    """Import an optional library (pandas, polars) only when a feature needs it, or say how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{feature} needs {module}, which is not installed: pip install {module}") from exc


def _flush_at_exit(ref: weakref.ref[TraceStore]) -> None:
    # Interpreter exit starts the shutdown budget: this flush and the close that the TracerProvider's
    # own exit hook may run after it share `shutdown_timeout_s`, so a stuck lock cannot hang the exit.
    store = ref()
    if store is not None and not store._closed and not store.read_only:
        store.flush(timeout_s=store._writer.shutdown_wait(None))
