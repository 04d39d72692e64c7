"""`LiveRowGate`: where a span that starts waits for the writer to build its live `running` row.

A live row is built by the writer, and only if the span is still running when it gets to it: a step
that ends within the write interval costs nothing, and the application thread does no conversion.
The gate is what the processor's hooks hand started execution and step spans to, on the
application thread, for every one that starts, without a lock.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan

# What the processor's C hooks (`_native/spanstart.c`) use of a gate, by these names: the gate's
# interface for them (they check it is there when they are made). See `LiveRowGate`.
NATIVE_INTERFACE: Final = ("open", "limit", "refused", "spans", "wake", "dropped")


class LiveRowGate:
    """Where a span that starts waits for the writer to build its live row.

    `submit` is the rule: while `open`, a weak reference to a span whose execution is not in
    `refused` goes into `spans` when fewer than `limit` wait there (the room the write queue had
    left when the writer last looked), and `wake()` is called for the first one; any other span is
    counted by `dropped()`.

    The processor's C hooks do exactly what `submit` does, so that no Python code runs per span,
    through this interface only (`NATIVE_INTERFACE`):

    - `open` (bool), `limit` (int): read;
    - `refused` (a dict whose keys are execution ids): looked up;
    - `spans` (a list): appended to, with `list.append` (atomic), nothing else;
    - `wake()`, `dropped()`: called.

    The writer sets them through the methods below (`restart`, `close`, `set_limit`, `take`):
    `spans` is taken from in place and never replaced while threads run (a list swapped for a new
    one could get an append from a thread that read it before the swap, where nobody looks again).

    Weak references: a span that ends before the writer looks needs no live row (its finished row is
    coming), and kept alive until then (up to a write cycle) it made every garbage collection of the
    application walk it, long after the exporter let go of it.
    """

    __slots__ = ("_count_dropped", "_wake", "limit", "open", "refused", "spans")

    def __init__(self, wake: Callable[[], None], count_dropped: Callable[[int], None]) -> None:
        """`wake`: the first span waits (wake the writer); `count_dropped(n)`: `n` spans turned away."""
        self._wake = wake
        self._count_dropped = count_dropped
        self.open = True
        self.limit = 0
        self.spans: list[weakref.ref[ReadableSpan]] = []
        self.refused: dict[str, None] = {}

    # -- the application's side (and the C hooks') ---------------------------------------------------

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

    def wake(self) -> None:
        """The first span waits since the writer last took them."""
        self._wake()

    def dropped(self) -> None:
        """A span was turned away: it gets no live row."""
        self._count_dropped(1)

    # -- the writer's side ----------------------------------------------------------------------------

    def restart(self, refused: dict[str, None], limit: int) -> None:
        """Open, with nothing waiting (the writer starts, or a forked child does: no other thread runs).

        `refused` is the writer's own dict of refused executions, which it keeps up to date in place.
        """
        self.spans, self.refused, self.limit, self.open = [], refused, limit, True

    def close(self) -> None:
        """Take no more spans (the writer is closing)."""
        self.open = False

    def set_limit(self, limit: int) -> None:
        """How many spans may wait (the room the write queue has left)."""
        self.limit = limit

    def waiting(self) -> int:
        """How many spans wait."""
        return len(self.spans)

    def take(self) -> list[weakref.ref[ReadableSpan]]:
        """The spans waiting, in order; those appended meanwhile stay for the next time."""
        spans = self.spans
        taken = spans[:]
        if taken:
            del spans[: len(taken)]
        return taken
