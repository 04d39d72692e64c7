"""The background writer: one thread that takes queued work and hands it to the database in batches.

Producers only append to a bounded in-memory queue and return; they never wait
for I/O. The processor's `on_start` leaves a weak reference to the span at the
live-row gate (`ingest.live`); the exporter's `export` hands finished spans to a
converter thread, which turns them into Arrow rows at once (through the sink), so
that the queue holds no span objects. What a full queue takes is the overload
policy of `ingest.admission`, which keeps executions whole; what does not fit is
dropped and counted (`ingest.drops`: logged once per interval, never once per
span, and an OpenTelemetry metric).

A write that finds the database file held by another process is retried
with back-off, keeping its items (still within the bound). Any other failed
write (disk full, damaged file) drops its batch, counted, and the writer keeps
going, so writing resumes once the fault is gone; the executions of a lost
batch are dropped whole from then on, like those refused by the queue.

`close()` is bounded by its timeout: the thread gives up by itself at the
deadline, and what is not written by then is counted as dropped. At
interpreter exit, after the exit hooks of stores and providers have flushed or
closed, the thread is parked: a daemon thread still inside DuckDB when Python
finalises would take the process down with it.

After `fork()`, the child starts with an empty queue and a thread of its own;
it never touches the parent's state.

The sink is the writer's only way to the database (`ingest.sink.BatchSink`); it never calls back.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.ingest.admission import TRACKED_EXECUTIONS, Admission, Admitted
from otel_workflow.ingest.convert import span_owners
from otel_workflow.ingest.drops import QUEUE_FULL, REJECTED, SHUTDOWN, WRITE_FAILED, DropReporter, one_line
from otel_workflow.ingest.live import LiveRowGate
from otel_workflow.ingest.logrows import LogRows, convert_sdk_records
from otel_workflow.ingest.sink import Abandoned, BatchSink, FinishedSpans, RetryLater

logger = logging.getLogger("otel_workflow")

# How long close() waits past its timeout for the writer thread to give up by itself and leave DuckDB.
_CLOSE_GRACE_S: Final = 0.5


@dataclass(slots=True)
class _Queue:
    finished: list[FinishedSpans] = field(default_factory=list)
    running: list[weakref.ref[ReadableSpan]] = field(default_factory=list)
    # Spans in `finished`.
    spans: int = 0
    logs: list[LogRows] = field(default_factory=list)
    # Log records in `logs`.
    log_records: int = 0

    def __len__(self) -> int:
        return self.spans + len(self.running) + self.log_records

    def add(self, parts: Sequence[FinishedSpans]) -> None:
        self.finished.extend(parts)
        self.spans += sum(part.count for part in parts)

    def add_logs(self, rows: LogRows) -> None:
        self.logs.append(rows)
        self.log_records += rows.count

    def split(self, spans: int) -> tuple[_Queue, _Queue]:
        """The first parts, up to about `spans` spans, with all live rows and log records; and the rest."""
        taken = 0
        for index, part in enumerate(self.finished):
            if taken and taken + part.count > spans:
                rest = _Queue()
                rest.add(self.finished[index:])
                first = _Queue(self.finished[:index], self.running, taken, self.logs, self.log_records)
                return first, rest
            taken += part.count
        return self, _Queue()

    def then(self, later: _Queue) -> _Queue:
        """This queue's items in front of `later`'s."""
        return _Queue(
            self.finished + later.finished,
            self.running + later.running,
            self.spans + later.spans,
            self.logs + later.logs,
            self.log_records + later.log_records,
        )


# How many converted spans the converter thread queues at a time.
CONVERT_HANDOVER: Final = 4096

# How often an idle writer asks its sink whether to let go of what it keeps (a file others wait for).
IDLE_POLL_S: Final = 0.05


class _Idle:
    """What `_take` returns when an idle writer should ask its sink (`BatchSink.idle`)."""


_IDLE: Final = _Idle()


class BackgroundWriter:
    """Owns the thread that writes; everything else only enqueues."""

    def __init__(
        self,
        sink: BatchSink,
        *,
        max_queued: int = 200_000,
        max_queued_logs: int = 20_000,
        batch_size: int = 20_000,
        flush_interval_s: float = 0.5,
        name: str = "otel-workflow-writer",
        label: str = "",
        drop_log_interval_s: float = 60.0,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self._sink = sink
        self._admission = Admission(max_queued)
        self.max_queued_logs = max_queued_logs
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._name = name
        self.shutdown_timeout_s = shutdown_timeout_s
        # `label` names the database in the drop metric.
        self.drops = DropReporter(drop_log_interval_s, label=label)
        # One gate for the writer's lifetime (the processor keeps it); `_init_state` restarts it.
        self.live_rows = LiveRowGate(self._wake_for_live_rows, self.drops.add_live_rows)
        self._init_state()
        _WRITERS.add(self)
        # Same approach as the SDK's BatchProcessor: reset in the child, never inherit the parent's thread.
        self_ref = weakref.ref(self)

        def after_fork() -> None:
            writer = self_ref()
            if writer is not None:
                writer._init_state()
                writer.drops.reset()

        os.register_at_fork(after_in_child=after_fork)

    def _init_state(self) -> None:
        lock = threading.Lock()
        self._condition = threading.Condition(lock)
        # The converter thread's own, so that handing it spans does not wake the writer each time.
        self._convert_ready = threading.Condition(lock)
        # Held around "still wanted? then COMMIT", so that close() cannot give up on a batch mid-commit.
        self._commit_lock = threading.Lock()
        self._queue = _Queue()
        self._in_flight: _Queue | None = None
        # Finished spans accepted and waiting for the converter thread (see `_convert_loop`), in order;
        # how many, and how many were handed to it and came back converted since the start.
        self._to_convert: list[list[ReadableSpan]] = []
        self._converting = 0
        # The SDK's log records waiting for the converter thread likewise, and how many.
        self._logs_to_convert: list[Sequence[Any]] = []
        self._converting_logs = 0
        self._convert_handed = 0
        self._convert_done = 0
        self._converter_running = False
        self._in_flight_committed = False
        self._submitted = 0
        self._completed = 0
        self._flush_wanted = False
        self._closing = False
        self._closed = False
        # The thread gave up at the close deadline / close() gave up on a stuck thread / exit parked it.
        self._gave_up = False
        self._abandoned = False
        self._parked = False
        self._running = False
        # The writer thread's own: whether the sink keeps something between batches, and since when idle.
        self._sink_keeps = False
        self._last_write = 0.0
        self._thread: threading.Thread | None = None
        self._close_deadline: float | None = None
        self._shutdown_deadline: float | None = None
        self._admission.reset()
        # Dropped executions whose live rows the next write deletes.
        self._forget: list[str] = []
        # Spans that started, for live rows: the application threads never wait for the condition's lock
        # (held by a BatchSpanProcessor's submit of 512 spans, or by the writer) to queue one.
        self.live_rows.restart(self._admission.refused, self._admission.soft_limit)

    @property
    def max_queued(self) -> int:
        return self._admission.max_queued

    @property
    def queued(self) -> int:
        """Spans and live rows accepted and not yet written or dropped (log records: `queued_logs`)."""
        with self._condition:
            return self._size()

    @property
    def queued_logs(self) -> int:
        """Log records accepted and not yet written or dropped."""
        with self._condition:
            return self._queued_log_records()

    def _size(self) -> int:
        return self._queued_here() + self.live_rows.waiting() + self._converting

    def _queued_here(self) -> int:
        """Spans and live rows in the queue and in the cycle being written (not the started spans at the
        gate, nor log records: they have a bound of their own)."""
        in_flight = self._in_flight
        here = len(self._queue) + (0 if in_flight is None else len(in_flight))
        return here - self._queued_log_records()

    def _collect_started(self) -> None:
        """With the condition's lock held: move the started spans into the queue (counted as submitted)."""
        started = self.live_rows.take()  # what is appended meanwhile stays for the next time
        if started:
            self._queue.running.extend(started)
            self._submitted += len(started)
        self._set_live_room()

    def _set_live_room(self) -> None:
        """With the lock held: how many started spans may wait at the gate (the soft limit's rest)."""
        self.live_rows.set_limit(self._admission.soft_limit - self._queued_here() - self._converting)

    # -- producers ---------------------------------------------------------------------------------

    def submit_spans(self, spans: Sequence[ReadableSpan]) -> bool:
        """Queue finished spans (the converter thread makes Arrow rows of them); False if any had to be
        dropped (counted)."""
        if not spans:
            return True
        owners = span_owners(spans)  # outside the lock: producers never wait for this
        accepted: list[ReadableSpan] = []
        evicted = 0
        with self._condition:
            self._collect_started()
            if self._closed or self._closing:
                admitted = Admitted(len(spans), reason=SHUTDOWN, detail="submitted after shutdown")
            else:
                size = self._size()
                if self._admission.evicts_live_rows(size, len(spans)) and self._queue.running:
                    # Live rows go first: they only show progress, finished spans are the record.
                    evicted = len(self._queue.running)
                    self._queue.running = []
                    self._completed += evicted
                    size -= evicted
                    self._condition.notify_all()
                admitted = self._admission.admit(spans, owners, size, accepted)
                if admitted.forget:
                    self._forget.extend(admitted.forget)
                if accepted:
                    self._converting += len(accepted)
                    self._convert_handed += len(accepted)
                    self._to_convert.append(accepted)
                    self._set_live_room()
                    if self._converter_running or self._start_converter():
                        self._convert_ready.notify()
                        accepted = []  # the converter thread has them
        if evicted:
            self.drops.add_live_rows(evicted)
        if admitted.dropped:
            self.drops.add(
                admitted.dropped,
                admitted.reason,
                admitted.detail,
                whole=admitted.whole,
                incomplete=admitted.incomplete,
            )
        # No thread could start (interpreter exit): converted here.
        converted = self._queue_converted(accepted) if accepted else True
        return converted and admitted.dropped == 0

    def submit_logs(self, rows: LogRows) -> bool:
        """Queue converted log records; False (and counted) if they had to be dropped: at most
        `max_queued_logs` records wait, apart from the spans' bound, so that a logging storm cannot
        take the spans' place."""
        if not rows.count:
            return True
        with self._condition:
            if self._closed or self._closing:
                reason, detail = SHUTDOWN, "submitted after shutdown"
            elif self._queued_log_records() + rows.count > self.max_queued_logs:
                reason, detail = QUEUE_FULL, None
            else:
                self._queue.add_logs(rows)
                self._accepted(rows.count)
                return True
        self.drops.add_logs(rows.count, reason, detail)
        return False

    def submit_log_records(self, records: Sequence[Any]) -> bool:
        """Queue the SDK's log records (the converter thread makes rows of them): the caller only takes
        the lock and appends. Those past `max_queued_logs` are dropped and counted; False then."""
        if not records:
            return True
        taken_here: Sequence[Any] = ()
        with self._condition:
            if self._closed or self._closing:
                taken, reason, detail = 0, SHUTDOWN, "submitted after shutdown"
            else:
                taken = max(0, min(len(records), self.max_queued_logs - self._queued_log_records()))
                reason, detail = QUEUE_FULL, None
            if taken:
                self._logs_to_convert.append(records if taken == len(records) else records[:taken])
                self._converting_logs += taken
                self._convert_handed += taken
                if self._converter_running or self._start_converter():
                    self._convert_ready.notify()
                else:  # no thread can start (interpreter exit): converted here
                    taken_here = self._logs_to_convert.pop()
        if taken_here:
            self._queue_converted_logs(taken_here)
        self.drops.add_logs(len(records) - taken, reason, detail)
        return taken == len(records)

    def _queued_log_records(self) -> int:
        """With the lock held: log records waiting, converted or not, and in the cycle being written."""
        in_flight = self._in_flight
        queued = self._queue.log_records + self._converting_logs
        return queued + (0 if in_flight is None else in_flight.log_records)

    def _start_converter(self) -> bool:
        """With the lock held: start the converter thread; False if no thread can start."""
        thread = threading.Thread(target=self._convert_loop, name=f"{self._name}-convert", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # Python 3.12+ refuses new threads once the interpreter is shutting down
            return False
        self._converter_running = True
        return True

    def _convert_loop(self) -> None:
        """The converter thread: finished spans to Arrow rows as soon as they are accepted.

        Not on the exporter's thread: that thread drains the SDK's bounded queue, and one that converts
        falls behind when many application threads compete for the GIL (the SDK then drops spans in
        its queue, where our overload policy cannot keep executions whole). Not on the writer thread:
        it spends most of its time in DuckDB, and spans waiting for it that long made every garbage
        collection of the application walk them. Here they wait only for the GIL, and each time it is
        taken, everything pending is converted at once.
        """
        while True:
            with self._condition:
                while not self._to_convert and not self._logs_to_convert:
                    if self._closed:
                        self._converter_running = False
                        return
                    self._convert_ready.wait()
                pending, self._to_convert = self._to_convert, []
                pending_logs, self._logs_to_convert = self._logs_to_convert, []
            spans = [span for accepted in pending for span in accepted]
            del pending
            # Queued part by part: a writer that does not need the GIL (a writer process) writes the first
            # rows of a burst while the rest is converted, instead of after all of it.
            for first in range(0, len(spans), CONVERT_HANDOVER):
                self._queue_converted(spans[first : first + CONVERT_HANDOVER])
            del spans  # the span objects go now, not when the next ones come
            records = [record for accepted in pending_logs for record in accepted]
            del pending_logs
            if records:
                self._queue_converted_logs(records)
            del records

    def _queue_converted_logs(self, records: Sequence[Any]) -> None:
        """Make rows of the SDK's log records (outside the lock) and queue them; count what could not be."""
        try:
            rows, rejected = convert_sdk_records(records)
        except Exception:  # a failure of ours never reaches the application
            logger.debug("otel-workflow could not convert log records", exc_info=True)
            rows, rejected = None, len(records)
        lost = 0
        with self._condition:
            self._converting_logs -= len(records)
            self._convert_done += len(records)
            if self._closed or self._gave_up or self._abandoned:
                lost = rows.count if rows is not None else 0
            elif rows is not None and rows.count:
                self._queue.add_logs(rows)
                self._accepted(rows.count)
            self._condition.notify_all()
        self.drops.add_logs(rejected, REJECTED)
        self.drops.add_logs(lost, SHUTDOWN, "submitted after shutdown")

    def _queue_converted(self, accepted: list[ReadableSpan]) -> bool:
        """Convert the accepted spans (outside the lock: the writer and producers go on) and queue them;
        the span objects are not kept. False if some were rejected or came after the close."""
        try:
            parts, rejected = self._sink.convert(accepted)
        except Exception:  # the sink's own guard failed: a failure of ours never reaches the exporter
            logger.debug("otel-workflow could not convert spans", exc_info=True)
            parts, rejected = [], len(accepted)
        lost = 0
        with self._condition:
            self._converting -= len(accepted)
            self._convert_done += len(accepted)
            if self._closed or self._gave_up or self._abandoned:  # nobody writes them any more
                lost = sum(part.count for part in parts)
            elif parts:
                self._queue.add(parts)
                self._accepted(sum(part.count for part in parts))
            self._condition.notify_all()  # a closing writer waits for conversions to finish
        self.drops.add(rejected, REJECTED)
        self.drops.add(lost, SHUTDOWN, "submitted after shutdown")
        return rejected == 0 and lost == 0

    def _wake_for_live_rows(self) -> None:
        """The first span at the gate since the writer last collected: wake it (or start it)."""
        with self._condition:
            if not self._running and not self._parked:
                self._start_thread()
            self._condition.notify_all()

    def _accepted(self, count: int) -> None:
        """With the lock held: `count` items were appended to the queue."""
        self._submitted += count
        self._set_live_room()
        if not self._running and not self._parked:
            self._start_thread()
        queued = len(self._queue)
        # The first item wakes a writer waiting on an empty queue (it then lingers for more); a full batch
        # wakes one lingering.
        if queued == count or queued >= self._batch_size:
            self._condition.notify_all()

    def _start_thread(self) -> threading.Thread | None:
        """With the lock held: start the writer thread; None if no thread can start (interpreter exit)."""
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # Python 3.12+ refuses new threads once the interpreter is shutting down
            return None
        self._thread, self._running = thread, True
        return thread

    # -- flush, close, exit ------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted before this call is written or dropped."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            self._collect_started()
            # Spans handed to the converter before this call: queued (and counted) once converted.
            handed = self._convert_handed
            while self._convert_done < handed and self._converter_running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            target = self._submitted
            if self._completed >= target:
                return True
            if not self._running:
                return False  # parked at exit: what is queued is written by close()
            self._flush_wanted = True
            self._condition.notify_all()
            while self._completed < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def shutdown_wait(self, timeout_s: float | None) -> float:
        """How long a shutdown step may wait: all of them together take at most `shutdown_timeout_s`,
        counted from the first one (`timeout_s`, if given and shorter, shortens it)."""
        now = time.monotonic()
        if self._shutdown_deadline is None:
            self._shutdown_deadline = now + self.shutdown_timeout_s
        remaining = max(0.0, self._shutdown_deadline - now)
        return remaining if timeout_s is None else max(0.0, min(timeout_s, remaining))

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Write what is queued, let the sink finish, stop the thread. Idempotent and bounded.

        Returns False if the timeout passed first; what was not written by then is counted as dropped.
        """
        with self._condition:
            if self._closed:
                return True
            self._closing = True
            self.live_rows.close()
            self._close_deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
            self._condition.notify_all()
            # Nothing queued yet, or parked at exit: the final write (live rows marked interrupted) still
            # needs a thread.
            thread = self._thread if self._running else self._start_thread()
        if thread is None:
            self._run()  # no thread can start: write on the caller's thread
        else:
            # The thread gives up by itself at the deadline; the grace lets it leave DuckDB first.
            thread.join(None if timeout_s is None else max(0.0, timeout_s) + _CLOSE_GRACE_S)
        stuck = thread is not None and thread.is_alive()
        lost_spans = lost_running = lost_logs = 0
        # A commit in progress gets a moment to finish; should it hang (a stuck disk), the batch counts
        # as dropped even though the commit might still land.
        committing = self._commit_lock.acquire(timeout=1.0) if stuck else False
        try:
            with self._condition:
                self._closed = True
                self._convert_ready.notify_all()  # an idle converter thread stops
                finished = not stuck and not self._gave_up
                self._collect_started()
                if stuck:
                    # The writer is stuck (a hung disk): give up on its work.
                    self._abandoned = True
                    in_flight = None if self._in_flight_committed else self._in_flight
                    for part in (self._queue, in_flight):
                        if part is not None:
                            lost_spans += part.spans
                            lost_running += len(part.running)
                            lost_logs += part.log_records
                    self._queue, self._in_flight = _Queue(), None
                    self._completed = self._submitted
                elif self._queue.running:  # spans that started after the final write: no live row
                    lost_running = len(self._queue.running)
                    self._completed += lost_running
                    self._queue.running = []
                self._condition.notify_all()
        finally:
            if committing:
                self._commit_lock.release()
        self.drops.add(lost_spans, SHUTDOWN, "not written before the shutdown timeout")
        self.drops.add_logs(lost_logs, SHUTDOWN, "not written before the shutdown timeout")
        if lost_running:
            self.drops.add_live_rows(lost_running)
        self.drops.report_due(force=True)
        return finished

    def park(self, timeout_s: float) -> bool:
        """At interpreter exit: stop the thread once its current write is done, keeping the queue.

        A daemon thread still inside DuckDB when Python finalises is killed there and takes the
        process down with it (`terminate called ...`). After this, only `close()` writes, and it
        does so on a fresh thread or the caller's. False if the thread did not stop in time.
        """
        deadline = time.monotonic() + timeout_s
        with self._condition:
            self._parked = True
            self._condition.notify_all()
            while self._running and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    # -- the writer thread -------------------------------------------------------------------------

    def _take(self) -> tuple[_Queue, list[str], bool] | _Idle | None:
        """Block until there is a batch to write; None when the thread should stop, `_IDLE` when the
        sink keeps something and should be asked whether to let go of it."""
        with self._condition:
            polled = False
            while True:
                # Stopping: `_run` marks the thread stopped only after the sink let go of the file, so
                # that nobody (an exit hook waiting in `park`) takes it for stopped while DuckDB still
                # closes; a connection left open at interpreter exit aborts the process.
                if self._abandoned or (self._parked and not self._closing) or self._closed:
                    return None
                # Closing: the final write waits for spans being converted (they come with a notify).
                closing = self._closing and not self._converting and not self._converting_logs
                if self._queue or self.live_rows.waiting() or closing or self._flush_wanted or self._forget:
                    break
                if not self._sink_keeps:
                    self._condition.wait()
                elif polled:
                    return _IDLE
                else:
                    self._condition.wait(IDLE_POLL_S)
                    polled = True
            deadline = time.monotonic() + self._flush_interval_s
            while not (
                self._closing or self._flush_wanted or self._parked or len(self._queue) >= self._batch_size
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            if self._parked and not self._closing:
                return None
            self._collect_started()
            # A backlog is written in cycles of about `batch_size` spans: importing all of it into pyarrow
            # in one go held it twice in memory at once (benchmarks/memory.py). Live rows all go first.
            batch, self._queue = self._queue.split(self._batch_size)
            if not self._queue:
                self._flush_wanted = False
            forget, self._forget = list(dict.fromkeys(self._forget[-TRACKED_EXECUTIONS:])), []
            self._in_flight, self._in_flight_committed = batch, False
            return batch, forget, self._closing

    def _done(self, batch: _Queue) -> None:
        """With the lock held: the batch is written or dropped."""
        self._in_flight = None
        self._completed += len(batch)
        self._set_live_room()
        self._condition.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            try:
                self._sink.release()
            except Exception:  # closing the file failed: nothing more to write through it anyway
                logger.debug("otel-workflow could not close the database", exc_info=True)
            with self._condition:
                if self._thread is threading.current_thread():
                    self._running = False
                self._condition.notify_all()

    def _loop(self) -> None:
        backoff = 0.02
        while True:
            taken = self._take()
            if taken is None:
                return
            if isinstance(taken, _Idle):
                self._ask_sink(time.monotonic() - self._last_write)
                continue
            batch, forget, closing = taken
            deadline = self._close_deadline
            if closing and deadline is not None and time.monotonic() >= deadline:
                self._give_up(batch, "not written before the shutdown timeout")
                return
            try:
                rejected = self._sink.write(
                    batch.finished,
                    batch.running,
                    final=closing,
                    forget=forget,
                    commit=self._commit,
                    logs=batch.logs,
                )
            except RetryLater as exc:
                if not self._retry_later(batch, forget, closing, backoff):
                    self._give_up(batch, f"not written before the shutdown timeout: {exc}")
                    return
                backoff = min(backoff * 2, 0.25)
                continue
            except Exception as exc:  # a failure of ours must not kill the writer or reach the application
                logger.debug("otel-workflow write failed", exc_info=True)
                with self._condition:
                    if self._abandoned:
                        return
                    self._failed(batch.finished, forget)
                # Counted (and logged) before flush() can return: whoever waits sees the drop.
                self.drops.add(batch.spans, WRITE_FAILED, one_line(exc))
                self.drops.add_logs(batch.log_records, WRITE_FAILED, one_line(exc))
                self.drops.add_live_rows(len(batch.running))
                with self._condition:
                    self._done(batch)
            else:
                self.drops.add(rejected, REJECTED)
                with self._condition:
                    if self._abandoned:
                        return
                    self._done(batch)
            # The written spans go now, not when the next batch replaces them after the wait for it:
            # spans kept alive longer make every garbage collection of the application's longer.
            del taken, batch
            backoff = 0.02
            self._last_write = time.monotonic()
            self._ask_sink(0.0)
            self.drops.report_due()
            if closing:
                with self._condition:
                    if not self._queue and not self._converting and not self._converting_logs:
                        return

    def _ask_sink(self, idle_s: float) -> None:
        try:
            self._sink_keeps = self._sink.idle(idle_s)
        except Exception:  # closing the file failed: the next write opens it again
            logger.debug("otel-workflow could not close the database", exc_info=True)
            self._sink_keeps = False

    def _give_up(self, batch: _Queue, why: str) -> None:
        """At the close deadline: count what is left as dropped and stop."""
        with self._condition:
            if self._abandoned:
                return
            self._collect_started()
            rest, self._queue = self._queue, _Queue()
            self._gave_up = True
        self.drops.add(batch.spans + rest.spans, SHUTDOWN, why)
        self.drops.add_logs(batch.log_records + rest.log_records, SHUTDOWN, why)
        self.drops.add_live_rows(len(batch.running) + len(rest.running))
        with self._condition:
            self._done(batch)
            self._completed += len(rest)

    def _commit(self, action: Callable[[], object]) -> None:
        with self._commit_lock:
            if self._abandoned:
                raise Abandoned("close() gave up on this batch")
            action()
            self._in_flight_committed = True

    def _retry_later(self, batch: _Queue, forget: list[str], closing: bool, backoff: float) -> bool:
        """The file was locked: keep the batch and wait a little; False at the close deadline."""
        with self._condition:
            if self._abandoned:
                return True  # the next _take stops the thread; close() counted everything
            deadline = self._close_deadline
            if closing and deadline is not None and time.monotonic() >= deadline:
                return False
            # Put the batch back in front: it stays counted against the bound and keeps its order.
            self._in_flight = None
            self._queue = batch.then(self._queue)
            self._forget = forget + self._forget
            if closing or not self._closing:  # close() since the batch was taken: retry at once, as final
                wait = backoff if deadline is None else min(backoff, max(0.0, deadline - time.monotonic()))
                self._condition.wait(wait)  # close() wakes it early
            return True

    def _failed(self, finished: list[FinishedSpans], forget: list[str]) -> None:
        """With the lock held: a batch was lost; the rest of its executions is dropped too (kept whole)."""
        lost = self._admission.lost(owner for part in finished for owner in _owners(part))
        self._forget = forget + self._forget + lost


def _owners(part: FinishedSpans) -> list[tuple[str | None, bool]]:
    try:
        return part.owners()
    except Exception:  # tables that cannot be read: nothing to keep whole
        logger.debug("otel-workflow could not read a lost batch's executions", exc_info=True)
        return []


# -- interpreter exit ----------------------------------------------------------------------------

_WRITERS: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


def _park_all_at_exit() -> None:
    # Registered when this module is imported, so it runs after the exit hooks of stores and of
    # TracerProviders made later (atexit runs hooks last-in, first-out): they have flushed or closed.
    for writer in list(_WRITERS):
        writer.park(writer.shutdown_wait(None))


atexit.register(_park_all_at_exit)
