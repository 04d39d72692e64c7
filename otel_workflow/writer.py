"""The background writer: one thread that takes queued work and hands it to the database in batches.

Producers (the processor's `on_start`, the exporter's `export`) only append to
a bounded in-memory queue and return. What does not fit is dropped and counted;
the count is logged once per interval, never once per span. A write that finds
the database file locked by another process is retried with back-off, keeping
its items (still within the bound). After `fork()`, the child starts with an
empty queue and a thread of its own; it never touches the parent's state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.rows import RunningRecord

logger = logging.getLogger("otel_workflow")


class RetryLater(Exception):
    """The write could not happen now (file locked by another process) and may succeed later."""


class BatchSink(Protocol):
    def write(self, spans: Sequence[ReadableSpan], running: Sequence[RunningRecord], *, final: bool) -> None:
        """Store one batch in one transaction. Raise RetryLater to keep the batch for another try."""


class DropReporter:
    """Counts dropped items and logs them at most once per interval."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self.total = 0
        self._unreported = 0
        self._reasons: dict[str, int] = {}
        self._last_report = -float("inf")

    def add(self, count: int, reason: str) -> None:
        with self._lock:
            self.total += count
            self._unreported += count
            self._reasons[reason] = self._reasons.get(reason, 0) + count
        self.report_due()

    def report_due(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._unreported or (not force and now - self._last_report < self._interval_s):
                return
            count, reasons = self._unreported, self._reasons
            self._unreported, self._reasons, self._last_report = 0, {}, now
        detail = ", ".join(f"{n} {why}" for why, n in reasons.items())
        logger.warning(
            "otel-workflow dropped %d span record(s) (%s); %d dropped since start. "
            "Further drops are reported at most every %.0fs.",
            count,
            detail,
            self.total,
            self._interval_s,
        )


@dataclass(slots=True)
class _Queue:
    spans: list[ReadableSpan] = field(default_factory=list)
    running: list[RunningRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spans) + len(self.running)


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
    ) -> None:
        self._sink = sink
        self._max_queued = max_queued
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._name = name
        self.drops = DropReporter()
        self._init_state()
        # Same approach as the SDK's BatchProcessor: reset in the child, never inherit the parent's thread.
        self_ref = weakref.ref(self)

        def after_fork() -> None:
            writer = self_ref()
            if writer is not None:
                writer._init_state()

        os.register_at_fork(after_in_child=after_fork)

    def _init_state(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._queue = _Queue()
        self._in_flight = 0
        self._submitted = 0
        self._completed = 0
        self._flush_wanted = False
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._close_deadline: float | None = None

    @property
    def queued(self) -> int:
        """Items accepted and not yet written or dropped."""
        with self._condition:
            return len(self._queue) + self._in_flight

    def submit_spans(self, spans: Sequence[ReadableSpan]) -> bool:
        return self._submit(lambda q: q.spans.extend(spans), len(spans))

    def submit_running(self, record: RunningRecord) -> bool:
        return self._submit(lambda q: q.running.append(record), 1)

    def _submit(self, put: Callable[[_Queue], None], count: int) -> bool:
        if count == 0:
            return True
        with self._condition:
            if self._closed or self._closing:
                reason = "after shutdown"
            elif len(self._queue) + self._in_flight + count > self._max_queued:
                reason = "because the write queue was full"
            else:
                put(self._queue)
                self._submitted += count
                if self._thread is None:
                    self._start_thread()
                if len(self._queue) >= self._batch_size:
                    self._condition.notify_all()
                return True
        self.drops.add(count, reason)
        return False

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted before this call is written or dropped."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            target = self._submitted
            if self._completed >= target:
                return True
            self._flush_wanted = True
            self._condition.notify_all()
            while self._completed < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Write what is queued, let the sink finish, stop the thread. Idempotent and bounded."""
        with self._condition:
            if self._closed:
                return True
            self._closing = True
            self._close_deadline = None if timeout_s is None else time.monotonic() + timeout_s
            self._condition.notify_all()
            thread = self._thread
            if thread is None:
                # Nothing was ever queued: let the sink finish on this thread.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread = self._thread
                thread.start()
        thread.join(timeout_s)
        with self._condition:
            self._closed = True
        self.drops.report_due(force=True)
        return not thread.is_alive()

    def _take(self) -> tuple[_Queue, bool]:
        """Block until there is a batch to write (or the writer should stop)."""
        with self._condition:
            while not self._queue and not self._closing and not self._flush_wanted:
                self._condition.wait()
            deadline = time.monotonic() + self._flush_interval_s
            while not (self._closing or self._flush_wanted or len(self._queue) >= self._batch_size):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch, self._queue = self._queue, _Queue()
            self._in_flight += len(batch)
            self._flush_wanted = False
            return batch, self._closing

    def _done(self, count: int) -> None:
        with self._condition:
            self._in_flight -= count
            self._completed += count
            self._condition.notify_all()

    def _run(self) -> None:
        backoff = 0.02
        while True:
            batch, closing = self._take()
            try:
                self._sink.write(batch.spans, batch.running, final=closing)
            except RetryLater as exc:
                if closing and self._close_deadline is not None and time.monotonic() > self._close_deadline:
                    self.drops.add(len(batch), f"at shutdown ({exc})")
                    self._done(len(batch))
                    return
                with self._condition:
                    # Put the batch back in front: it stays counted against the bound and keeps its order.
                    self._in_flight -= len(batch)
                    self._queue = _Queue(batch.spans + self._queue.spans, batch.running + self._queue.running)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except Exception as exc:  # a failure of ours must not kill the writer or reach the application
                logger.debug("otel-workflow write failed", exc_info=True)
                self.drops.add(len(batch), f"because the database write failed: {exc}")
            backoff = 0.02
            self._done(len(batch))
            self.drops.report_due()
            if closing:
                with self._condition:
                    if not self._queue:
                        return
