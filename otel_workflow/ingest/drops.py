"""Counting what the writer could not store, and saying so once.

Finished spans that are dropped are counted by reason; the count is logged at most once per
interval, never once per span, and is also an OpenTelemetry metric (`otel_workflow.spans.dropped`,
by database and reason). Live `running` rows that were not written are counted beside them: they
only show progress, nothing is lost with them. Log records are counted and logged the same way, apart
from spans.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Final

from opentelemetry import metrics

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


class DropReporter:
    """Counts dropped spans by reason and logs them at most once per interval.

    `label` names the database in the metric (`otel_workflow.database`); every reporter is reported
    there while it lives.
    """

    def __init__(self, interval_s: float = 60.0, *, label: str = "") -> None:
        self._interval_s = interval_s
        self.label = label
        self.reset()
        _REPORTERS.add(self)
        register_drop_metric()

    def reset(self) -> None:
        """A fresh count (a new lock too: also what a forked child starts with)."""
        self._lock = threading.Lock()
        self.total = 0
        self.by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.live_rows = 0
        self.logs_total = 0
        self.logs_by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._logs_pending: dict[str, list[Any]] = {}
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

    def add_logs(self, count: int, reason: str, detail: str | None = None) -> None:
        """`count` log records dropped (counted apart from spans, reported with them)."""
        if count <= 0:
            return
        with self._lock:
            self.logs_total += count
            self.logs_by_reason[reason] = self.logs_by_reason.get(reason, 0) + count
            entry = self._logs_pending.setdefault(reason, [0, detail])
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
            if not self._unreported and not self._logs_pending:
                return
            if not force and now - self._last_report < self._interval_s:
                return
            count, pending, total = self._unreported, self._pending, self.total
            whole, incomplete, live = self._whole, self._incomplete, self._live_unreported
            logs_pending, logs_total = self._logs_pending, self.logs_total
            self._unreported, self._pending, self._last_report = 0, {}, now
            self._whole = self._incomplete = self._live_unreported = 0
            self._logs_pending = {}
        if logs_pending:
            logger.warning(
                "otel-workflow dropped %d log record(s): %s; %d dropped since start. "
                "Further drops are reported at most every %gs.",
                sum(n for n, _ in logs_pending.values()),
                _reasons_text(logs_pending, 0, 0),
                logs_total,
                self._interval_s,
            )
        if not count:
            return
        text = _reasons_text(pending, whole, incomplete)
        if live:
            text += f"; and {live} live 'running' row(s) not written"
        logger.warning(
            "otel-workflow dropped %d span(s): %s; %d dropped since start. "
            "Further drops are reported at most every %gs.",
            count,
            text,
            total,
            self._interval_s,
        )


def _reasons_text(pending: dict[str, list[Any]], whole: int, incomplete: int) -> str:
    parts = []
    for reason, (n, detail) in pending.items():
        text = f"{n} {_REASON_TEXT.get(reason, reason)}"
        if reason == QUEUE_FULL and (whole or incomplete):
            text += f" ({whole} execution(s) dropped whole, {incomplete} left incomplete)"
        if detail:
            text += f" ({detail})"
        parts.append(text)
    return "; ".join(parts)


def one_line(exc: BaseException) -> str:
    """An error as the detail of a drop: its type and message on one line, cut short."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


# -- the drop metric -----------------------------------------------------------------------------

_REPORTERS: weakref.WeakSet[DropReporter] = weakref.WeakSet()
_METRIC_LOCK = threading.Lock()
_METRIC_PROVIDERS: list[Any] = []  # meter providers the counter is registered with (None: the global one)


def _observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    totals: dict[tuple[str, str], int] = {}
    for reporter in list(_REPORTERS):
        for reason, count in list(reporter.by_reason.items()):
            key = (reporter.label, reason)
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
