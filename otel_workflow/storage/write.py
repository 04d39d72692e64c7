"""`SpanWriteSink`: what the background writer calls to convert finished spans and store a batch.

One write cycle is one transaction: the live rows of spans still running, the finished spans (their
events, links and the derived executions/steps/log rows, `schema.derive_statements`), the interrupted
marks at shutdown, and the deletion of the live rows of executions the writer dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.ingest.convert import ConvertedSpans, SpanBatch, SpanConverter, running_rows, tables_of
from otel_workflow.ingest.logrows import LogRows
from otel_workflow.ingest.sink import RetryLater
from otel_workflow.model.errors import StoreBusy
from otel_workflow.storage.connection import is_lock_conflict
from otel_workflow.storage.database import Database
from otel_workflow.storage.schema import derive_statements, ensure_schema

logger = logging.getLogger("otel_workflow")

# Errors raised because of what a row holds, not because of the file or the machine: by the database,
# or by Python and Arrow on the way to it (a timestamp past year 9999, a number too large).
_DATA_ERRORS: Final = (
    duckdb.DataError,
    duckdb.IntegrityError,
    duckdb.InvalidInputException,
    OverflowError,
    ValueError,
)


_CONVERT_SLICE: Final = 4096


class SpanWriteSink:
    """The writer's `BatchSink` for one database: conversion with `converter`, writes through `database`.

    `count_failed_live_rows` is told how many live rows could not be converted, `count_rejected_logs`
    how many log records the database refused (the writer's drop counter, set once the writer exists).
    """

    def __init__(self, database: Database, converter: SpanConverter) -> None:
        self.database = database
        self.converter = converter
        self.count_failed_live_rows: Callable[[int], None] = lambda _count: None
        self.count_rejected_logs: Callable[[int], None] = lambda _count: None

    def release(self) -> None:
        self.database.release_held()

    def idle(self, seconds: float) -> bool:
        return self.database.idle(seconds)

    def convert(self, spans: Sequence[ReadableSpan]) -> tuple[list[ConvertedSpans], int]:
        """The spans converted, leaving out (and counting) the ones that cannot be converted."""
        parts: list[ConvertedSpans] = []
        # In slices: the Python objects made while converting (row tuples, strings) are several times
        # the Arrow result, and a slice's are freed before the next one's are made.
        for first in range(0, len(spans), _CONVERT_SLICE):
            self._convert_parts(spans[first : first + _CONVERT_SLICE], parts)
        # The converter also leaves out spans without a context: they count as rejected too.
        converted = sum(part.count for part in parts)
        return [part for part in parts if part.count], len(spans) - converted

    def write(
        self,
        finished: Sequence[ConvertedSpans],
        running: Sequence[weakref.ref[ReadableSpan]],
        *,
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None],
        logs: Sequence[LogRows] = (),
    ) -> int:
        """One transaction: live rows, finished spans, log records, interrupted marks, dropped
        executions' live rows. Returns how many spans were rejected (see `write_rows`)."""
        return self.write_rows(
            finished, self.running_table(running), final=final, forget=forget, commit=commit, logs=logs
        )

    def write_rows(
        self,
        finished: Sequence[ConvertedSpans],
        live: pa.Table | None,
        *,
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None],
        logs: Sequence[LogRows] = (),
    ) -> int:
        """`write` with the live rows already made (`running_table`): what a writer process receives.

        Returns how many spans were rejected. Should the database refuse the batch because of what
        some span holds (a constraint, a value out of range), the batch is halved until the span is
        alone, so that it alone is rejected. Log records are then written on their own after the spans
        (their rows are made to be storable: refused, they are counted as rejected).
        """
        try:
            self._write_once(finished, live, final, forget, commit, logs=logs)
            return 0
        except _DATA_ERRORS:
            if logs:
                rejected = self.write_rows(finished, live, final=final, forget=forget, commit=commit)
                self._write_logs_alone(logs, commit)
                return rejected
            if not finished:
                raise
            logger.debug("otel-workflow: the database refused a batch; looking for the span", exc_info=True)
        if len(finished) == 1 and finished[0].count == 1:
            return 1 + self.write_rows((), live, final=final, forget=forget, commit=commit)
        if len(finished) > 1:
            middle = len(finished) // 2
            first, rest = finished[:middle], finished[middle:]
        else:
            halves = finished[0].tables().halves()
            first, rest = [ConvertedSpans.of(halves[0])], [ConvertedSpans.of(halves[1])]
        rejected = self.write_rows(first, live, final=False, forget=forget, commit=commit)
        return rejected + self.write_rows(rest, None, final=final, forget=(), commit=commit)

    def _write_logs_alone(
        self, logs: Sequence[LogRows], commit: Callable[[Callable[[], object]], None]
    ) -> None:
        try:
            self._write_once((), None, False, (), commit, logs=logs)
        except _DATA_ERRORS:
            logger.debug("otel-workflow: the database refused a batch of log records", exc_info=True)
            self.count_rejected_logs(sum(rows.count for rows in logs))

    def _write_once(
        self,
        finished: Sequence[ConvertedSpans],
        live: pa.Table | None,
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None],
        *,
        logs: Sequence[LogRows] = (),
    ) -> None:
        batch = tables_of(finished) if finished else None
        log_rows = pa.concat_tables([rows.table for rows in logs]) if logs else None
        if batch is None and live is None and log_rows is None and not final and not forget:
            return
        # The file was deleted while we ran: DuckDB makes a new, empty one, which needs the schema.
        database = self.database
        recreate = not database.in_memory and not os.path.exists(database.path)
        try:
            with database.writer_connection(keep=not final) as connection:
                if recreate:
                    ensure_schema(connection)
                # The statements go to DuckDB in one script: each call lets go of the GIL and must take it
                # back, which waits up to a switch interval (5 ms) while the application runs Python.
                connection.execute("BEGIN TRANSACTION")
                try:
                    script: list[str] = []
                    if live is not None:
                        connection.register("_running_batch", live)
                        # Both values are ours (a UUID and a number): safe to write into the statement.
                        script.append(
                            "INSERT INTO running_spans "
                            f"SELECT *, '{database.writer_id}', {os.getpid()}, NULL FROM _running_batch"
                        )
                    if log_rows is not None:
                        # Registered before `insert_finished`, whose check leaves a result open.
                        connection.register("_log_batch", log_rows)
                        script.append("INSERT INTO log_records SELECT * FROM _log_batch")
                    if batch is not None:
                        script += insert_finished(connection, batch)
                    if script:
                        connection.execute(";\n".join(script))
                    for name in ("_running_batch", "_log_batch", *_BATCH_VIEWS):
                        connection.unregister(name)
                    if forget:
                        # Executions the writer dropped: their live rows must not show them running forever.
                        connection.execute(
                            "DELETE FROM running_spans WHERE writer_id = ? AND execution_id IN "
                            "(SELECT unnest(?::VARCHAR[]))",
                            [database.writer_id, sorted(set(forget))],
                        )
                    if final:
                        connection.execute(
                            "UPDATE running_spans SET interrupted_at = now() "
                            "WHERE writer_id = ? AND interrupted_at IS NULL",
                            [database.writer_id],
                        )
                    commit(lambda: connection.execute("COMMIT"))
                except BaseException:
                    with contextlib.suppress(duckdb.Error):
                        connection.execute("ROLLBACK")
                    raise
        except StoreBusy as exc:
            raise RetryLater("the database file is held by another process") from exc
        except duckdb.Error as exc:
            if is_lock_conflict(exc):
                raise RetryLater("the database file is held by another process") from exc
            raise

    def _convert_parts(self, spans: Sequence[ReadableSpan], parts: list[ConvertedSpans]) -> None:
        # One malformed span must not cost the others their place: halve until it is alone.
        try:
            parts.append(self.converter.convert(spans))
        except Exception:
            if len(spans) == 1:
                logger.debug("otel-workflow rejected a span it could not convert", exc_info=True)
                return
            middle = len(spans) // 2
            self._convert_parts(spans[:middle], parts)
            self._convert_parts(spans[middle:], parts)

    def running_table(self, started: Sequence[weakref.ref[ReadableSpan]]) -> pa.Table | None:
        """Live rows for the spans that are still running (an ended one is in this or a coming batch)."""
        running = [span for ref in started if (span := ref()) is not None and span.end_time is None]
        parts, failed = self.convert(running)
        if failed:
            self.count_failed_live_rows(failed)
        return running_rows(tables_of(parts).spans) if parts else None


def insert_finished(connection: duckdb.DuckDBPyConnection, batch: SpanBatch) -> list[str]:
    """Register the batch's tables (`_BATCH_VIEWS`) and return the statements that store what is new."""
    spans, events, links = batch.spans, batch.events, batch.links
    if pc.count_distinct(spans.column("span_id")).as_py() < spans.num_rows:
        # The same span twice in one batch (exported twice before the writer ran): keep one of each.
        spans = _distinct(connection, spans, "trace_id, span_id")
        events = _distinct(connection, events, "trace_id, span_id, event_index")
        links = _distinct(connection, links, "trace_id, span_id, link_index")
    bounds = pc.min_max(spans.column("start_time"))
    # A re-exported span has the same start time: bounding the check by the batch's start times lets
    # DuckDB skip row groups by their min/max instead of reading every stored span id. As epoch seconds,
    # widened by a second and clamped to what a timestamp can hold: the bounds only prune, and a clock
    # far off (year 10000) must not fail the batch. Numbers: safe to write into the statements.
    low = _epoch_bound(bounds["min"].cast(pa.int64()).as_py(), -1.0)
    high = _epoch_bound(bounds["max"].cast(pa.int64()).as_py(), 1.0)
    stored = (
        f"SELECT 1 FROM spans s WHERE s.start_time BETWEEN to_timestamp({low!r}) AND to_timestamp({high!r}) "
        "AND s.span_id = b.span_id AND s.trace_id = b.trace_id"
    )
    connection.register("_span_batch", spans)
    connection.register("_event_batch", events)
    connection.register("_link_batch", links)
    found = connection.execute(f"SELECT EXISTS (SELECT 1 FROM _span_batch b WHERE EXISTS ({stored}))")
    row = found.fetchone()
    script: list[str] = []
    if row is not None and not row[0]:
        # The usual case, every span new: straight from the Arrow batch, without a copy.
        source = "_span_batch"
    else:
        source = "_new_spans"
        script.append(
            "CREATE OR REPLACE TEMP TABLE _new_spans AS "
            f"SELECT b.* FROM _span_batch b WHERE NOT EXISTS ({stored})"
        )
    script.append(f"INSERT INTO spans SELECT * FROM {source}")
    script += derive_statements(source)
    for table, view, name in ((events, "_event_batch", "span_events"), (links, "_link_batch", "span_links")):
        if table.num_rows == 0:
            continue
        if source == "_span_batch":
            script.append(f"INSERT INTO {name} SELECT * FROM {view}")
        else:
            script.append(
                f"INSERT INTO {name} SELECT c.* FROM {view} c SEMI JOIN _new_spans n "
                "ON n.span_id = c.span_id AND n.trace_id = c.trace_id"
            )
    if source == "_new_spans":
        script.append("DROP TABLE _new_spans")
    script.append(
        "DELETE FROM running_spans r USING _span_batch e "
        "WHERE r.span_id = e.span_id AND r.trace_id = e.trace_id"
    )
    return script


# What `insert_finished` registers, unregistered after its statements ran.
_BATCH_VIEWS: Final = ("_span_batch", "_event_batch", "_link_batch")

_EPOCH_RANGE_S: Final = (-62_135_596_800.0, 253_402_300_799.0)  # years 1 to 9999


def _epoch_bound(microseconds: int | None, widen_s: float) -> float:
    seconds = (microseconds or 0) / 1e6 + widen_s
    return min(max(seconds, _EPOCH_RANGE_S[0]), _EPOCH_RANGE_S[1])


def _distinct(connection: duckdb.DuckDBPyConnection, table: pa.Table, key: str) -> pa.Table:
    if table.num_rows == 0:
        return table
    connection.register("_with_duplicates", table)
    distinct: pa.Table = connection.sql(
        f"SELECT DISTINCT ON ({key}) * FROM _with_duplicates"
    ).to_arrow_table()
    connection.unregister("_with_duplicates")
    return distinct
