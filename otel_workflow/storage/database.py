"""`Database`: the connections to one DuckDB database, for the length of a query or a write cycle.

The writer holds the file only for one write cycle (one transaction per batch), or while a backlog
lasts and no other process asks for the file; readers hold it for one query; both retry briefly when
they meet another process's lock (`connection.gate`). A CLI or notebook can therefore read while the
application writes, and neither fails with a lock error. An in-memory database (`":memory:"`) keeps
one connection for its lifetime, since closing it would lose the data.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import duckdb

from otel_workflow.model.errors import StoreBusy, StoreError
from otel_workflow.storage import liveness
from otel_workflow.storage.connection import (
    FileBusy,
    close_instance,
    gate,
    is_lock_conflict,
    open_error,
    open_instance,
)
from otel_workflow.storage.schema import SchemaVersionError, ensure_schema

logger = logging.getLogger("otel_workflow")

MEMORY: Final = ":memory:"

# How long the writer keeps the file open without anything to write, and at most in one go (see
# `writer_connection`): the DuckDB instance's memory (the rows logged since the last checkpoint, the
# blocks it has read) is given back at each close.
_LINGER_S: Final = 1.0
_MAX_HOLD_S: Final = 5.0

# While the writer keeps its connection, DuckDB checkpoints when the log passes this size. A cycle of
# 20,000 spans logs about 21 MB, and the default (16 MB) checkpointed after every one; at 128 MB one
# checkpoint writes about one row group (122,880 rows) at once, for about half the time per span.
_CHECKPOINT_THRESHOLD: Final = "128MB"

# What the DuckDB instance may hold while the writer has the file open (DuckDB's default is 80% of the
# machine). A checkpoint into a large file rewrites its last, partly filled row groups, and measured on
# a 10M-span file (benchmarks/memory.py) it took the process from about 250 MB to 430-530 MB in most
# runs; at 200 MB the peaks were 281-361 MB, with every span stored. Past the limit DuckDB evicts what
# it read and spills a query's intermediates to a temporary file; it applies to this process's reads
# while the writer holds the file (the step quantiles at 10M spans took 265 ms against 212).
_MEMORY_LIMIT: Final = "200MB"

# In-memory databases a forked child inherited. They are never closed or freed in the child: DuckDB's
# teardown would wait for the parent's worker threads, which the child does not have.
_inherited_memory: list[duckdb.DuckDBPyConnection] = []


class Database:
    """One database file (or `":memory:"`) and the connections this process has to it.

    `writer_id` names this process's writer in the live rows it writes (`liveness`). `row_group_size`
    (the writer process's) has DuckDB write row groups of that many rows instead of 122,880.
    """

    def __init__(
        self, path: str, *, read_only: bool, lock_timeout_s: float, row_group_size: int | None = None
    ) -> None:
        self.path = path
        # Set only where this process is the file's only user (`connection.open_instance`).
        self.row_group_size = row_group_size
        self.lock_timeout_s = lock_timeout_s
        self.writer_id = liveness.new_writer_id()
        self._memory: duckdb.DuckDBPyConnection | None = None
        self._memory_lock = threading.Lock()
        self._pid = os.getpid()
        # The writer thread's connection, kept from one write cycle to the next while a backlog lasts.
        self.held: duckdb.DuckDBPyConnection | None = None
        # The file as it was when the connection was kept: changed since, someone else replaced or rewrote it.
        self._held_file: tuple[int, int, int] | None = None
        self.held_since = 0.0
        if path == MEMORY:
            if read_only:
                raise StoreError("an in-memory database cannot be opened read-only: it would always be empty")
            self._memory = duckdb.connect(MEMORY)
            ensure_schema(self._memory)
            os.register_at_fork(after_in_child=functools.partial(_reset_memory_lock, weakref.ref(self)))
        elif read_only:
            self._require_file()
        else:
            self._prepare_file()
            os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child, weakref.ref(self)))

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def _require_file(self) -> None:
        if not Path(self.path).exists():
            raise StoreError(
                f"no database at {self.path}: run your traced application or `otel-workflow demo` first"
            )

    def _prepare_file(self) -> None:
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise StoreError(f"cannot create the database {self.path}: the folder {folder} does not exist")
        try:
            with self.connect(read_only=False) as connection:
                ensure_schema(connection)
                self.interrupt_dead_writers(connection)
        except SchemaVersionError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        except duckdb.Error as exc:
            raise open_error(self.path, exc, self.lock_timeout_s) from exc

    @contextlib.contextmanager
    def connect(
        self, *, read_only: bool, timeout_s: float | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held only for the `with` block; waits out another process's lock briefly."""
        if self._memory is not None:
            with self._memory_lock:
                cursor = self._memory_connection().cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            return
        connection = self._open(read_only, timeout_s)
        try:
            yield connection
        finally:
            self._close_file(connection)

    @contextlib.contextmanager
    def sandboxed(self, config: dict[str, Any]) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection of its own DuckDB instance with `config` (the SQL sandbox's), for one query.

        It waits until the process's other connections to the file (the writer's among them) have
        closed, and keeps them out while it lasts (see `_open`).
        """
        if self._memory is not None:
            raise StoreError(
                "the SQL sandbox opens the database a second time with settings of its own, which an "
                "in-memory database cannot do: use a database file, or sql() for your own trusted SQL"
            )
        self._require_file()
        connection = self._open(True, None, config)
        try:
            yield connection
        finally:
            self._close_file(connection)

    @contextlib.contextmanager
    def writer_connection(self, keep: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The writer's connection for one cycle, kept for the next one if `keep` and nobody waits.

        Each close checkpoints (DuckDB writes the logged rows into the file proper), and a checkpoint
        costs 0.1-0.7 s of CPU almost whatever its size: a service that closed after every cycle paid
        that twice a second. So the connection stays while spans keep coming, and is let go when
        another process waits for the file (within `IDLE_POLL_S` when idle, else at the end of the
        cycle), when this process forks, or after `_LINGER_S` without anything to write (`idle`).
        """
        if self._memory is not None:
            with self.connect(read_only=False) as cursor:
                yield cursor
            return
        connection, self.held = self.held, None
        if connection is not None and _file_identity(self.path) != self._held_file:
            # Deleted, replaced or overwritten while kept: a new connection makes a new file or finds the
            # damage (and the cycle's spans are counted as failed), instead of writing into what is left.
            self._close_file(connection)
            connection = None
        if connection is None:
            connection = self._open(read_only=False, timeout_s=0.25)
            connection.execute(f"SET checkpoint_threshold = '{_CHECKPOINT_THRESHOLD}'")
            connection.execute(f"SET memory_limit = '{_MEMORY_LIMIT}'")
            self.held_since = time.monotonic()
            # Each opening, at most every `_MAX_HOLD_S` while spans come: writers that die while this one
            # runs (a worker killed beside its siblings) are found too.
            self.interrupt_dead_writers(connection)
        kept = False
        try:
            yield connection
            kept = keep and time.monotonic() - self.held_since < _MAX_HOLD_S and not gate.wanted(self.path)
        finally:
            if kept:
                self.held, self._held_file = connection, _file_identity(self.path)
            else:
                self._close_file(connection)

    def idle(self, seconds: float) -> bool:
        """The writer had nothing to write for `seconds`: let go of the file if that is long enough or
        another process (or a fork) waits for it. True while the connection is still kept."""
        if self.held is None:
            return False
        if seconds >= _LINGER_S or gate.wanted(self.path):
            self.release_held()
            return False
        return True

    def release_held(self) -> None:
        connection, self.held = self.held, None
        if connection is not None:
            self._close_file(connection)

    def interrupt_dead_writers(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Live rows of writers that died without a clean shutdown stop showing as running (`liveness`)."""
        try:
            gone = liveness.interrupt_dead_writers(connection, self.writer_id)
        except duckdb.Error:  # housekeeping: a file that cannot answer fails the write itself, not here
            logger.debug("otel-workflow could not check for writers that died", exc_info=True)
            return
        if gone:
            logger.info(
                "otel-workflow: %d process(es) that wrote to %s ended without shutting down; their "
                "running executions and steps are marked interrupted",
                gone,
                self.path,
            )

    def close(self) -> None:
        """Free an in-memory database (a file has nothing open between queries)."""
        if self._memory is not None:
            with self._memory_lock:
                if self._pid == os.getpid():
                    self._memory.close()
                else:
                    _inherited_memory.append(self._memory)

    def _open(
        self, read_only: bool, timeout_s: float | None, config: dict[str, Any] | None = None
    ) -> duckdb.DuckDBPyConnection:
        """A connection to the file, the hand-over lock taken (`_close_file` gives both back).

        With `config` (settings of its own), the connection is the process's only one to the file
        while it is open: DuckDB refuses a second instance of a file with other settings.
        """
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            gate.enter(self.path, timeout_s, exclusive=config is not None)
        except FileBusy as exc:
            raise StoreBusy(f"{exc} that did not let go within {timeout_s:g}s; try again") from exc
        try:
            return self._open_file(read_only, max(0.0, deadline - time.monotonic()), config)
        except BaseException:
            gate.leave(self.path)
            raise

    def _close_file(self, connection: duckdb.DuckDBPyConnection) -> None:
        try:
            close_instance(connection)
        finally:
            gate.leave(self.path)

    def _open_file(
        self, read_only: bool, timeout_s: float, config: dict[str, Any] | None
    ) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                return open_instance(
                    self.path, read_only=read_only, config=config, row_group_size=self.row_group_size
                )
            except duckdb.Error as exc:
                if not is_lock_conflict(exc):
                    raise
                if config is not None and "different configuration" in str(exc):
                    raise StoreError(
                        f"{self.path} is open in this process through a DuckDB connection otel-workflow "
                        "does not manage, so the SQL sandbox cannot open it with its own settings: close "
                        "that connection first"
                    ) from exc
                if read_only and "different configuration" in str(exc):
                    # This process already has the file open for writing: share that instance.
                    return open_instance(self.path, read_only=False)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.2)

    def _memory_connection(self) -> duckdb.DuckDBPyConnection:
        """The in-memory database; a forked child starts an empty one of its own (with the lock held)."""
        assert self._memory is not None
        if self._pid != os.getpid():
            _inherited_memory.append(self._memory)
            self._memory = duckdb.connect(MEMORY)
            ensure_schema(self._memory)
            self._pid = os.getpid()
        return self._memory


def _file_identity(path: str) -> tuple[int, int, int] | None:
    """Inode, size and modification time of the database file (None if it is gone).

    Between two write cycles DuckDB writes only its log (`.wal`): the file itself changes at a
    checkpoint, inside a cycle. A change between cycles is someone else's.
    """
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def _after_fork_in_child(ref: weakref.ref[Database]) -> None:
    database = ref()
    if database is not None:
        # The parent's connection: never used or closed in the child (the gate refuses the file there).
        database.held = None
        # A writer of its own: the parent's id would let the child's clean shutdown mark the parent's
        # (or a sibling's) live rows interrupted, and the liveness check judge them by the wrong pid.
        database.writer_id = liveness.new_writer_id()


def _reset_memory_lock(ref: weakref.ref[Database]) -> None:
    database = ref()
    if database is not None:
        database._memory_lock = threading.Lock()
