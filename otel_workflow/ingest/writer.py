"""The background writer: one thread that takes queued work and hands it to the database in batches.

Producers only append to a bounded in-memory queue and return; they never wait
for I/O. The processor's `on_start` appends a weak reference to the span; the
exporter's `export` hands finished spans to a converter thread, which turns
them into Arrow rows at once, so that the queue holds no span objects. What does not
fit is dropped and counted; the count is logged once per interval, never once
per span, and is also an OpenTelemetry metric (`otel_workflow.spans.dropped`).

Overload policy, so that executions are dropped whole rather than stored
without some of their steps:

- Below the soft limit (`max_queued` less a fifth of it, the headroom) everything is accepted.
- Above it, a finished span is accepted only if its execution already has
  spans accepted (it then may use the headroom, up to `max_queued`). The
  first finished span of an execution that arrives above the soft limit is
  dropped, and so are all later spans of that execution, even once the queue
  has room again: the execution is dropped whole. Spans outside any execution
  do not use the headroom.
- Only if the headroom runs out too is an execution left incomplete; its
  later spans (its execution span included) are then dropped as well, so no
  execution row is stored that lacks steps which were exported with it.
- Live `running` rows are the first thing given up: none are taken above the
  soft limit, and queued ones are thrown out to make room for finished spans.
  They only show progress; the finished span replaces them. The live rows of
  executions that were dropped are deleted in the next write, so nothing shows
  them as running forever.

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
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from opentelemetry import metrics
from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.ingest.convert import span_owners

logger = logging.getLogger("otel_workflow")

# Why spans were dropped: the `otel_workflow.reason` attribute of the metric, and the log's wording.
QUEUE_FULL: Final = "queue_full"
WRITE_FAILED: Final = "write_failed"
SHUTDOWN: Final = "shutdown"
REJECTED: Final = "rejected"
REASONS: Final = (QUEUE_FULL, WRITE_FAILED, SHUTDOWN, REJECTED)
_REASON_TEXT: Final = {
    QUEUE_FULL: "because the write queue was full",
    WRITE_FAILED: "because the database write failed",
    SHUTDOWN: "at shutdown",
    REJECTED: "because they were malformed",
}

DROPPED_METRIC: Final = "otel_workflow.spans.dropped"

# How many executions the admission policy remembers (those with spans accepted, and those dropped).
_TRACKED_EXECUTIONS: Final = 100_000

# How long close() waits past its timeout for the writer thread to give up by itself and leave DuckDB.
_CLOSE_GRACE_S: Final = 0.5


class RetryLater(Exception):
    """The write could not happen now (file locked by another process) and may succeed later."""


class Abandoned(Exception):
    """`close()` gave up on this batch (its timeout passed): it must not be committed any more."""


class FinishedSpans(Protocol):
    """Finished spans as the sink converted them for the queue (the span objects are not kept)."""

    @property
    def count(self) -> int:
        """How many spans."""

    def owners(self) -> list[tuple[str | None, bool]]:
        """`rows.owner_of` each span: its execution, and whether it is that execution's own span."""


class BatchSink(Protocol):
    def convert(self, spans: Sequence[ReadableSpan]) -> tuple[Sequence[FinishedSpans], int]:
        """The spans made into what `write` takes (`FinishedSpans`), and how many were rejected as
        malformed (left out). Called on the submitting thread, outside the writer's lock; never raises."""

    def write(
        self,
        finished: Sequence[Any],
        running: Sequence[weakref.ref[ReadableSpan]],
        *,
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None],
    ) -> int:
        """Store one batch (`convert`'s parts) in one transaction; return how many spans were rejected.

        `forget` names executions that were dropped: their live rows are to be deleted. The
        transaction's COMMIT must go through `commit(action)`, which raises `Abandoned` instead
        once `close()` has given up on the batch (and counted it as dropped).
        Raise RetryLater to keep the batch for another try.
        """

    def release(self) -> None:
        """Let go of what the sink kept between batches (the writer thread calls it as it stops)."""

    def idle(self, seconds: float) -> bool:
        """Nothing was written for `seconds`: let go of what the sink keeps between batches if that is
        long enough or someone else needs it. True while it still keeps something: the writer then
        asks again every `IDLE_POLL_S` while it has nothing to write."""


class DropReporter:
    """Counts dropped spans by reason and logs them at most once per interval."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self.reset()

    def reset(self) -> None:
        """A fresh count (a new lock too: also what a forked child starts with)."""
        self._lock = threading.Lock()
        self.total = 0
        self.by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.live_rows = 0
        self._unreported = 0
        self._pending: dict[str, list[Any]] = {}
        self._whole = 0
        self._incomplete = 0
        self._live_unreported = 0
        self._last_report = -float("inf")

    def add(
        self,
        count: int,
        reason: str,
        detail: str | None = None,
        *,
        whole: int = 0,
        incomplete: int = 0,
    ) -> None:
        """`count` finished spans dropped; `whole`, `incomplete`: executions dropped whole / incomplete."""
        if count <= 0:
            return
        with self._lock:
            self.total += count
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count
            self._unreported += count
            self._whole += whole
            self._incomplete += incomplete
            entry = self._pending.setdefault(reason, [0, detail])
            entry[0] += count
            if entry[1] is None:
                entry[1] = detail
        self.report_due()

    def add_live_rows(self, count: int) -> None:
        """Live `running` rows not written (they only show progress; nothing is lost with them)."""
        with self._lock:
            self.live_rows += count
            self._live_unreported += count

    def report_due(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._unreported:
                return
            if not force and now - self._last_report < self._interval_s:
                return
            count, pending, total = self._unreported, self._pending, self.total
            whole, incomplete, live = self._whole, self._incomplete, self._live_unreported
            self._unreported, self._pending, self._last_report = 0, {}, now
            self._whole = self._incomplete = self._live_unreported = 0
        parts = []
        for reason, (n, detail) in pending.items():
            text = f"{n} {_REASON_TEXT.get(reason, reason)}"
            if reason == QUEUE_FULL and (whole or incomplete):
                text += f" ({whole} execution(s) dropped whole, {incomplete} left incomplete)"
            if detail:
                text += f" ({detail})"
            parts.append(text)
        if live:
            parts.append(f"and {live} live 'running' row(s) not written")
        logger.warning(
            "otel-workflow dropped %d span(s): %s; %d dropped since start. "
            "Further drops are reported at most every %gs.",
            count,
            "; ".join(parts),
            total,
            self._interval_s,
        )


@dataclass(slots=True)
class _Queue:
    finished: list[FinishedSpans] = field(default_factory=list)
    running: list[weakref.ref[ReadableSpan]] = field(default_factory=list)
    # Spans in `finished`.
    spans: int = 0

    def __len__(self) -> int:
        return self.spans + len(self.running)

    def add(self, parts: Sequence[FinishedSpans]) -> None:
        self.finished.extend(parts)
        self.spans += sum(part.count for part in parts)

    def split(self, spans: int) -> tuple[_Queue, _Queue]:
        """The first parts, up to about `spans` spans, with all live rows; and the rest."""
        taken = 0
        for index, part in enumerate(self.finished):
            if taken and taken + part.count > spans:
                rest = _Queue()
                rest.add(self.finished[index:])
                return _Queue(self.finished[:index], self.running, taken), rest
            taken += part.count
        return self, _Queue()

    def then(self, later: _Queue) -> _Queue:
        """This queue's items in front of `later`'s."""
        return _Queue(self.finished + later.finished, self.running + later.running, self.spans + later.spans)


@dataclass(slots=True)
class _Admitted:
    """What the overload policy dropped of one submission, and why."""

    dropped: int
    whole: int = 0
    incomplete: int = 0
    reason: str = QUEUE_FULL
    detail: str | None = None


def _remember(keys: dict[str, None], key: str) -> None:
    if key not in keys:
        keys[key] = None
        if len(keys) > _TRACKED_EXECUTIONS:
            del keys[next(iter(keys))]


# How often an idle writer asks its sink whether to let go of what it keeps (a file others wait for).
IDLE_POLL_S: Final = 0.05


class _Idle:
    """What `_take` returns when an idle writer should ask its sink (`BatchSink.idle`)."""


_IDLE: Final = _Idle()


class LiveRowGate:
    """Where a span that starts waits for the writer to build its live row.

    Checked and appended to on the application thread, for every execution and step that starts,
    without a lock: while `open`, a weak reference to a span whose execution is not in `refused` goes
    into `spans` when fewer than `limit` wait there (the room the write queue had left when the writer
    last looked), and `wake()` is called for the first one; any other span is counted by `dropped()`.
    The processor's C hooks do exactly what `submit` does, reading these fields, so that no Python
    code runs per span.
    `spans` is appended to (list.append is atomic) and taken from in place, never replaced while
    threads run: a list swapped for a new one could get an append from a thread that read it before
    the swap, where nobody looks again.

    Weak references: a span that ends before the writer looks needs no live row (its finished row is
    coming), and kept alive until then (up to a write cycle) it made every garbage collection of the
    application walk it, long after the exporter let go of it.
    """

    __slots__ = ("dropped", "limit", "open", "refused", "spans", "wake")

    def __init__(self, wake: Callable[[], None], dropped: Callable[[], None]) -> None:
        self.wake = wake
        self.dropped = dropped
        self.open = True
        self.limit = 0
        self.spans: list[weakref.ref[ReadableSpan]] = []
        self.refused: dict[str, None] = {}

    def submit(self, span: ReadableSpan, execution_id: str | None) -> bool:
        """Queue `span` for its live row; False if it was not (counted)."""
        spans = self.spans
        refused = execution_id is not None and execution_id in self.refused
        if self.open and len(spans) < self.limit and not refused:
            spans.append(weakref.ref(span))
            if len(spans) == 1:
                self.wake()
            return True
        self.dropped()
        return False


class BackgroundWriter:
    """Owns the thread that writes; everything else only enqueues."""

    def __init__(
        self,
        sink: BatchSink,
        *,
        max_queued: int = 200_000,
        batch_size: int = 20_000,
        flush_interval_s: float = 0.5,
        name: str = "otel-workflow-writer",
        label: str = "",
        drop_log_interval_s: float = 60.0,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self._sink = sink
        self._max_queued = max(1, max_queued)
        self._soft_limit = self._max_queued - max(1, self._max_queued // 5)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._name = name
        self.label = label
        self.shutdown_timeout_s = shutdown_timeout_s
        self.drops = DropReporter(drop_log_interval_s)
        # One gate for the writer's lifetime (the processor keeps it); `_init_state` resets its fields.
        self.live_rows = LiveRowGate(self._wake_for_live_rows, lambda: self.drops.add_live_rows(1))
        self._init_state()
        _WRITERS.add(self)
        register_drop_metric()
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
        # Executions with spans accepted whose execution span has not come yet, and executions dropped.
        self._partial: dict[str, None] = {}
        self._refused: dict[str, None] = {}
        # Dropped executions whose live rows the next write deletes.
        self._forget: list[str] = []
        # Spans that started, for live rows: the application threads never wait for the condition's lock
        # (held by a BatchSpanProcessor's submit of 512 spans, or by the writer) to queue one.
        gate = self.live_rows
        gate.spans, gate.refused, gate.limit, gate.open = [], self._refused, self._soft_limit, True

    @property
    def max_queued(self) -> int:
        return self._max_queued

    @property
    def queued(self) -> int:
        """Items accepted and not yet written or dropped."""
        with self._condition:
            return self._size()

    def _size(self) -> int:
        return self._queued_here() + len(self.live_rows.spans) + self._converting

    def _queued_here(self) -> int:
        """Items in the queue and in the cycle being written (not the started spans at the gate)."""
        in_flight = self._in_flight
        return len(self._queue) + (0 if in_flight is None else len(in_flight))

    def _collect_started(self) -> None:
        """With the condition's lock held: move the started spans into the queue (counted as submitted)."""
        gate = self.live_rows
        started = gate.spans[:]
        if started:
            del gate.spans[: len(started)]  # what was appended since stays for the next time
            self._queue.running.extend(started)
            self._submitted += len(started)
        self._set_live_room()

    def _set_live_room(self) -> None:
        """With the lock held: how many started spans may wait at the gate (the soft limit's rest)."""
        self.live_rows.limit = self._soft_limit - self._queued_here() - self._converting

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
                admitted = _Admitted(len(spans), reason=SHUTDOWN, detail="submitted after shutdown")
            else:
                size = self._size()
                if size + len(spans) > self._soft_limit and self._queue.running:
                    # Live rows go first: they only show progress, finished spans are the record.
                    evicted = len(self._queue.running)
                    self._queue.running = []
                    self._completed += evicted
                    size -= evicted
                    self._condition.notify_all()
                if not self._refused and size + len(spans) <= self._soft_limit:
                    # The usual case, room for all and no execution refused: only the bookkeeping.
                    accepted = list(spans)
                    self._note_open(owners)
                    admitted = _Admitted(0)
                else:
                    admitted = self._admit_each(spans, owners, size, accepted)
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

    def _note_open(self, owners: list[tuple[str | None, bool]]) -> None:
        """With the lock held: note which executions have spans accepted before their own span."""
        partial = self._partial
        for execution_id, ends in owners:
            if execution_id is None:
                continue
            if ends:
                partial.pop(execution_id, None)
            elif execution_id not in partial:
                _remember(partial, execution_id)

    def _admit_each(
        self,
        spans: Sequence[ReadableSpan],
        owners: list[tuple[str | None, bool]],
        size: int,
        accepted: list[ReadableSpan],
    ) -> _Admitted:
        """With the lock held: the overload policy (module docstring), span by span."""
        admitted = _Admitted(0)
        partial, refused, soft, hard = self._partial, self._refused, self._soft_limit, self._max_queued
        for span, (execution_id, ends) in zip(spans, owners, strict=True):
            if execution_id is None:
                ok = size < soft
            elif execution_id in refused:
                ok = False
                if ends:
                    del refused[execution_id]
            elif size < soft or (size < hard and execution_id in partial):
                ok = True
                if ends:
                    partial.pop(execution_id, None)
                else:
                    _remember(partial, execution_id)
            else:
                ok = False
                if partial.pop(execution_id, 0) is None:
                    admitted.incomplete += 1
                else:
                    admitted.whole += 1
                if not ends:
                    _remember(refused, execution_id)
                self._forget.append(execution_id)
            if ok:
                accepted.append(span)
                size += 1
            else:
                admitted.dropped += 1
        return admitted

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
                while not self._to_convert:
                    if self._closed:
                        self._converter_running = False
                        return
                    self._convert_ready.wait()
                pending, self._to_convert = self._to_convert, []
            spans = [span for accepted in pending for span in accepted]
            del pending
            self._queue_converted(spans)
            del spans  # the span objects go now, not when the next ones come

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
            self.live_rows.open = False
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
        lost_spans = lost_running = 0
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
                closing = self._closing and not self._converting
                if self._queue or self.live_rows.spans or closing or self._flush_wanted or self._forget:
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
            forget, self._forget = list(dict.fromkeys(self._forget[-_TRACKED_EXECUTIONS:])), []
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
                    batch.finished, batch.running, final=closing, forget=forget, commit=self._commit
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
                self.drops.add(batch.spans, WRITE_FAILED, _one_line(exc))
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
                    if not self._queue and not self._converting:
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
        self._forget = forget + self._forget
        owners = {owner for part in finished for owner in _owners(part)}
        for execution_id, ends in owners:
            if execution_id is None:
                continue
            self._partial.pop(execution_id, None)
            if not ends:
                _remember(self._refused, execution_id)
            self._forget.append(execution_id)


def _owners(part: FinishedSpans) -> list[tuple[str | None, bool]]:
    try:
        return part.owners()
    except Exception:  # tables that cannot be read: nothing to keep whole
        logger.debug("otel-workflow could not read a lost batch's executions", exc_info=True)
        return []


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


# -- the drop metric -----------------------------------------------------------------------------

_WRITERS: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
_METRIC_LOCK = threading.Lock()
_METRIC_PROVIDERS: list[Any] = []  # meter providers the counter is registered with (None: the global one)


def _observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    totals: dict[tuple[str, str], int] = {}
    for writer in list(_WRITERS):
        for reason, count in list(writer.drops.by_reason.items()):
            key = (writer.label, reason)
            totals[key] = totals.get(key, 0) + count
    for (database, reason), count in totals.items():
        yield metrics.Observation(count, {"otel_workflow.database": database, "otel_workflow.reason": reason})


def register_drop_metric(meter_provider: metrics.MeterProvider | None = None) -> None:
    """Report dropped spans as the observable counter `otel_workflow.spans.dropped`.

    Done automatically with the global meter provider (so it appears once
    OpenTelemetry metrics are configured, before or after the store is made);
    call it with a provider to report to that one. Idempotent per provider.
    """
    with _METRIC_LOCK:
        if any(known is meter_provider for known in _METRIC_PROVIDERS):
            return
        _METRIC_PROVIDERS.append(meter_provider)
        from otel_workflow._version import __version__  # noqa: PLC0415 - avoids an import cycle at start

        meter = metrics.get_meter("otel_workflow", __version__, meter_provider=meter_provider)
        meter.create_observable_counter(
            DROPPED_METRIC,
            callbacks=[_observe],
            unit="{span}",
            description="Finished spans otel-workflow could not store, by database and reason",
        )


def _park_all_at_exit() -> None:
    # Registered when this module is imported, so it runs after the exit hooks of stores and of
    # TracerProviders made later (atexit runs hooks last-in, first-out): they have flushed or closed.
    for writer in list(_WRITERS):
        writer.park(writer.shutdown_wait(None))


atexit.register(_park_all_at_exit)
