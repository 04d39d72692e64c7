"""What the background writer asks of the sink that stores its batches, and what the sink answers.

The writer (`ingest.writer`) calls a `BatchSink` (for a DuckDB file: `storage.write.SpanWriteSink`);
the sink never calls the writer back. Both import this contract, so that neither imports the other.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.ingest.logrows import LogRows


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
        """`convert.owner_of` each span: its execution, and whether it is that execution's own span."""


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
        logs: Sequence[LogRows] = (),
    ) -> int:
        """Store one batch (`convert`'s parts, and log records) in one transaction; return how many
        spans were rejected.

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
        asks again every `writer.IDLE_POLL_S` while it has nothing to write."""
