"""Step numbers: `workflow.step.sequence` is 1, 2, ... per execution, in start order.

One counter per execution, in one registry for the process. `WorkflowTracer` numbers the steps it
starts in their start attributes (no attribute set afterwards, which costs the application thread
about 2 us per step through the SDK); `WorkflowSpanProcessor` numbers the step spans other code
starts (raw OpenTelemetry spans named `workflow.step.*`) from the same counter, so no number is
handed out twice in one execution. `next()` on an `itertools.count` and single dict operations are
atomic under the GIL, which is what makes numbering correct across threads without a lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Final, TypeVar

_counters: Final[dict[str, Iterator[int]]] = {}

# Counters of executions whose end this process never sees (their execution span is in another
# process, or never ends) are dropped oldest first beyond this many.
LIMIT: Final = 100_000


def counter(execution_id: str) -> Iterator[int]:
    """The execution's counter, made on first use."""
    found = _counters.get(execution_id)
    if found is None:
        pop_oldest(_counters, LIMIT)
        found = _counters.setdefault(execution_id, itertools.count(1))
    return found


def next_number(execution_id: str) -> int:
    """The next step number of the execution."""
    return next(counter(execution_id))


def forget(execution_id: str, only: Iterator[int] | None = None) -> None:
    """Drop the execution's counter (its span ended); with `only`, just when it is still that one."""
    if only is None or _counters.get(execution_id) is only:
        _counters.pop(execution_id, None)


K = TypeVar("K")
V = TypeVar("V")


def pop_oldest(entries: dict[K, V], limit: int) -> V | None:
    """Make room for one more entry when `limit` are held: the oldest one, popped (or None).

    Without a lock: another thread may pop the same entry first, which is then not an error.
    """
    if len(entries) < limit:
        return None
    try:
        return entries.pop(next(iter(entries)))
    except (StopIteration, KeyError, RuntimeError):
        return None


def live_count() -> int:
    """How many executions have a counter (started and not ended, or evicted yet)."""
    return len(_counters)
