"""`StoreOwner`: what the two DuckDB exporters share, the store they write to and the guards of their calls.

`DuckDBSpanExporter` (`sdk/exporter.py`) and `DuckDBLogExporter` (`sdk/logs.py`) either open their
`TraceStore` from a path, and then close it when shut down, or write through one they were given, which
they leave open for its other users. None of their methods may raise into the SDK (and from there into
the application): the store calls go through `_submit`, `force_flush` and `_stop`, which log what
raised and answer as a failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from otel_workflow.storage.store import DEFAULT_DB_PATH, TraceStore

logger = logging.getLogger("otel_workflow")


class StoreOwner:
    """The `TraceStore` of an exporter, opened from a path (owned) or shared, and its shutdown flag."""

    def __init__(self, store: TraceStore | str | os.PathLike[str] = DEFAULT_DB_PATH) -> None:
        self._owns_store = not isinstance(store, TraceStore)
        self.store = store if isinstance(store, TraceStore) else TraceStore(store)
        self._shutdown = False

    def _submit(self, submit: Callable[[], bool], what: str) -> bool:
        """`submit()` (a batch handed to the store): whether the store took it whole. False once shut
        down, and when it raised (logged as a batch of `what` that could not be queued)."""
        try:
            if self._shutdown:
                return False
            return submit()
        except Exception:  # the SDK must never see an exception from us
            logger.exception("otel-workflow could not queue a batch of %s", what)
            return False

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return flush_store(self.store, timeout_millis)

    def _stop(self, release: Callable[[], object], failure: str) -> None:
        """The first time only: mark this shut down and `release()` the store (close it, or write what is
        queued). What raises is logged as `failure`."""
        if self._shutdown:
            return
        self._shutdown = True
        try:
            release()
        except Exception:
            logger.exception(failure)


def flush_store(store: TraceStore, timeout_millis: int) -> bool:
    """Wait for the store's writer; never raises into the SDK."""
    try:
        return store.flush(timeout_millis / 1000)
    except Exception:
        logger.exception("otel-workflow could not flush")
        return False
