"""The write queue's overload policy: which finished spans a full queue takes, so that executions
are dropped whole rather than stored without some of their steps.

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
  soft limit (`LiveRowGate.limit` is the soft limit's rest), and queued ones are
  thrown out to make room for finished spans (`evicts_live_rows`). They only show
  progress; the finished span replaces them. The live rows of executions that were
  dropped are deleted in the next write (`Admitted.forget`), so nothing shows them
  as running forever.
- A batch the database lost (`lost`): the rest of its executions is dropped from
  then on, like those refused by the queue.

`Admission` holds what the policy remembers (executions with spans accepted, executions refused);
the writer asks it under its lock and keeps the queue itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from otel_workflow.ingest.drops import QUEUE_FULL

# How many executions the policy remembers (those with spans accepted, and those dropped), and how
# many dropped executions' live rows one write deletes.
TRACKED_EXECUTIONS: Final = 100_000

_T = TypeVar("_T")

# A finished span's execution (or None), and whether it is that execution's own span (it ends it).
Owner = tuple[str | None, bool]


@dataclass(slots=True)
class Admitted:
    """What the overload policy dropped of one submission, and why."""

    dropped: int
    whole: int = 0
    incomplete: int = 0
    reason: str = QUEUE_FULL
    detail: str | None = None
    # Executions dropped: their live rows are to be deleted.
    forget: list[str] = field(default_factory=list)


def remember(keys: dict[str, None], key: str) -> None:
    """Add `key` to a bounded, insertion-ordered set (the oldest goes beyond TRACKED_EXECUTIONS)."""
    if key not in keys:
        keys[key] = None
        if len(keys) > TRACKED_EXECUTIONS:
            del keys[next(iter(keys))]


class Admission:
    """The overload policy (module docstring) for a queue of at most `max_queued` items."""

    __slots__ = ("max_queued", "partial", "refused", "soft_limit")

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max(1, max_queued)
        self.soft_limit = self.max_queued - max(1, self.max_queued // 5)
        self.reset()

    def reset(self) -> None:
        """Nothing remembered (a new writer, or a forked child's)."""
        # Executions with spans accepted whose execution span has not come yet, and executions dropped
        # (shared with the live-row gate, which refuses their live rows).
        self.partial: dict[str, None] = {}
        self.refused: dict[str, None] = {}

    def evicts_live_rows(self, size: int, count: int) -> bool:
        """Whether queued live rows are thrown out before `count` finished spans join `size` items."""
        return size + count > self.soft_limit

    def admit(self, items: Sequence[_T], owners: Sequence[Owner], size: int, accepted: list[_T]) -> Admitted:
        """Which of `items` (finished spans, with their `owners`) a queue holding `size` items takes:
        appended to `accepted`, in order; the rest is counted in the answer."""
        if not self.refused and size + len(items) <= self.soft_limit:
            # The usual case, room for all and no execution refused: only the bookkeeping.
            accepted.extend(items)
            self._note_open(owners)
            return Admitted(0)
        return self._admit_each(items, owners, size, accepted)

    def _note_open(self, owners: Iterable[Owner]) -> None:
        """Note which executions have spans accepted before their own span."""
        partial = self.partial
        for execution_id, ends in owners:
            if execution_id is None:
                continue
            if ends:
                partial.pop(execution_id, None)
            elif execution_id not in partial:
                remember(partial, execution_id)

    def _admit_each(
        self, items: Sequence[_T], owners: Sequence[Owner], size: int, accepted: list[_T]
    ) -> Admitted:
        admitted = Admitted(0)
        partial, refused, soft, hard = self.partial, self.refused, self.soft_limit, self.max_queued
        for item, (execution_id, ends) in zip(items, owners, strict=True):
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
                    remember(partial, execution_id)
            else:
                ok = False
                if partial.pop(execution_id, 0) is None:
                    admitted.incomplete += 1
                else:
                    admitted.whole += 1
                if not ends:
                    remember(refused, execution_id)
                admitted.forget.append(execution_id)
            if ok:
                accepted.append(item)
                size += 1
            else:
                admitted.dropped += 1
        return admitted

    def lost(self, owners: Iterable[Owner]) -> list[str]:
        """A written batch was lost: the rest of its executions is dropped too (kept whole). Returns
        the executions whose live rows are to be deleted."""
        forget = []
        for execution_id, ends in set(owners):
            if execution_id is None:
                continue
            self.partial.pop(execution_id, None)
            if not ends:
                remember(self.refused, execution_id)
            forget.append(execution_id)
        return forget
