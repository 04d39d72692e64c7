"""`TraceStore`: the DuckDB database of spans, its single writer, and its read side.

DuckDB lets one process hold a database file for writing, and a process
cannot open a file another process holds. So the writer holds the file only
for the length of one write cycle (one transaction per batch), or while a
backlog lasts and no other process asks for the file, and readers hold it only
for one query; both retry briefly when they meet the other's lock. A CLI or
notebook can therefore read while the application writes, and neither ever
fails with a lock error. An in-memory store (`":memory:"`) keeps
one connection for its lifetime, since closing it would lose the data.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import duckdb
import pyarrow as pa

try:
    import fcntl
except ImportError:  # Windows: no hand-over lock (see `_ConnectionGate`)
    fcntl = None  # type: ignore[assignment]
import pyarrow.compute as pc
from opentelemetry.sdk.trace import ReadableSpan

from otel_workflow.ingest.convert import (
    ConvertedSpans,
    SpanBatch,
    SpanConverter,
    prepare_conversion,
    running_rows,
    tables_of,
)
from otel_workflow.ingest.writer import BackgroundWriter, LiveRowGate, RetryLater
from otel_workflow.model.records import (
    ExecutionDetail,
    ExecutionRow,
    LogRow,
    PruneReport,
    StepRow,
    StepStats,
    WorkflowStats,
)
from otel_workflow.query import executions as queries
from otel_workflow.query import readonly
from otel_workflow.storage import liveness
from otel_workflow.storage.schema import SchemaVersionError, derive_statements, ensure_schema, rebuild_derived

logger = logging.getLogger("otel_workflow")

DEFAULT_DB_PATH = "otel_workflow.duckdb"
# A queued span is a live SDK object of 2-3 KB: 50,000 of them bound the queue near 150 MB
# (benchmarks/memory.py measured 525 MB of RSS with a 200,000 bound and a writer that could not keep up).
DEFAULT_MAX_QUEUED_SPANS = 50_000
MEMORY = ":memory:"
_T = TypeVar("_T")

__all__ = ["DEFAULT_DB_PATH", "ExecutionRow", "SchemaVersionError", "StepRow", "StoreError", "TraceStore"]


# DuckDB shares one database instance among a process's connections to a file and tears it down
# when the last one closes. Opening while another thread tears down (the writer ending its cycle
# as a reader starts) was seen to yield a connection without the Python Arrow scan. Opening and
# closing are therefore serialised per process; queries themselves run in parallel.
_instance_lock = threading.Lock()


def _reset_instance_lock() -> None:
    global _instance_lock  # noqa: PLW0603 - a lock held by a thread that does not exist in the child
    _instance_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_instance_lock)

# How long fork() waits for this process's open connections to close (see `_ConnectionGate`).
_FORK_WAIT_S = 10.0


class FileBusy(Exception):
    """Another otel-workflow process held the database file for longer than this one could wait."""


class _ConnectionGate:
    """Every DuckDB connection to a file goes through here; it does two things.

    Hand-over between processes. DuckDB locks the file while a process has it open,
    but the hand-over from one process to the next is not safe: with processes that
    open, write and close in turns, a process's open can overlap the previous one's
    close (its checkpoint and clean-up), and committed transactions go missing, or
    the opener reads a file that is being rewritten ("Could not read enough bytes").
    Measured with plain DuckDB 2.0, four processes taking turns lost a few of 600
    commits in every run. So each process also holds an exclusive `flock` on a
    sidecar file (`<database>.lock`) from before its first connection opens until
    after its last one has closed; within a process, connections share it (and the
    DuckDB instance), as DuckDB does. The lock is taken by polling up to a timeout,
    so nothing waits forever on a stuck process.

    Fork. DuckDB caches one database instance per file and process. A child forked
    while the parent has the file open inherits that instance, and the child's own
    `connect()` returns it: its writes then go through a file handle whose lock
    belongs to the parent, and are silently lost (or worse). So `fork()` waits until
    no connection of ours is open and holds new ones back until it is done;
    connections last one write cycle or one query (the writer's kept connection is let go
    at the end of its cycle once a fork waits), so the wait is short. Should one
    stay open past `_FORK_WAIT_S`, the child refuses to use that file rather than
    write through the inherited instance.

    Exclusive entries. The SQL sandbox needs a DuckDB instance of its own settings, and DuckDB
    refuses a second instance of a file in one process. An exclusive entry waits until this
    process's other connections have closed (the writer's kept one is let go: `wanted` says so),
    and holds new ones back until it leaves; it is then the process's only connection to the file.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._open: dict[str, int] = {}
        self._handover: dict[str, int | None] = {}  # path -> fd holding the flock (None: no lock file)
        self._acquiring: set[str] = set()
        self._exclusive: set[str] = set()  # paths whose one open connection is an exclusive entry
        self._exclusive_waiting: dict[str, int] = {}  # path -> exclusive entries waiting for it
        # path -> when this process last let go of the file while another process was waiting for it
        self._released: dict[str, float] = {}
        self._forking = False
        self._open_at_fork: frozenset[str] = frozenset()
        self.inherited: frozenset[str] = frozenset()

    def enter(self, path: str, timeout_s: float, *, exclusive: bool = False) -> None:
        """Count a connection to `path` about to open; the first one takes the hand-over lock.

        `exclusive`: wait until no other connection of this process is open, and keep others out
        until this one leaves.
        """
        if path in self.inherited:
            raise StoreError(
                f"{path} was open in the parent process when this process was forked from it, so DuckDB "
                "would hand this process the parent's database instance and its writes would be lost; "
                "this process does not use the file. Fork before opening it, or let the parent finish "
                "its queries first."
            )
        deadline = time.monotonic() + timeout_s
        with self._condition:
            if exclusive:
                self._exclusive_waiting[path] = self._exclusive_waiting.get(path, 0) + 1
            try:
                while True:
                    busy = self._open.get(path, 0) > 0
                    # Within the process, a waiting exclusive entry goes before new shared ones (a steady
                    # flow of short queries would otherwise keep it out), and an exclusive one waits for all.
                    held_here = path in self._exclusive or (
                        busy and (exclusive or self._exclusive_waiting.get(path, 0) > 0)
                    )
                    if self._forking or path in self._acquiring or held_here:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 and not self._forking:
                            raise FileBusy(
                                f"{path} is held by this process's own connections"
                                if held_here
                                else f"{path} is held by another otel-workflow process"
                            )
                        self._condition.wait(None if self._forking else remaining)
                        continue
                    if busy:
                        self._open[path] += 1
                        return
                    self._acquiring.add(path)
                    released = self._released.get(path)
                    break
            finally:
                if exclusive:
                    self._exclusive_waiting[path] -= 1
                    if not self._exclusive_waiting[path]:
                        del self._exclusive_waiting[path]
        fd: int | None = _BUSY
        try:
            if released is not None:
                # Taking turns: the process that was waiting when this one let go gets a chance to have the
                # file before this one takes it back (a tight loop of queries would keep it to itself).
                pause = min(released + _HANDOVER_COURTESY_S - time.monotonic(), deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
            fd = _take_handover_lock(path, deadline)
        finally:
            with self._condition:
                self._acquiring.discard(path)
                if fd != _BUSY:
                    self._handover[path] = fd
                    self._open[path] = 1
                    if exclusive:
                        self._exclusive.add(path)
                self._condition.notify_all()
        if fd == _BUSY:
            raise FileBusy(f"{path} is held by another otel-workflow process")

    def leave(self, path: str) -> None:
        """A connection to `path` has closed; the last one lets the next process have the file."""
        with self._condition:
            count = self._open.get(path, 0) - 1
            if count > 0:
                self._open[path] = count
            else:
                self._open.pop(path, None)
                self._exclusive.discard(path)
                if _release_handover_lock(self._handover.pop(path, None)):
                    self._released[path] = time.monotonic()
                else:
                    self._released.pop(path, None)
            self._condition.notify_all()

    def wanted(self, path: str) -> bool:
        """Whether someone needs `path` let go of: a fork or an exclusive entry in this process, or another
        process waiting."""
        with self._condition:
            if self._forking or path in self._exclusive_waiting:
                return True
            fd = self._handover.get(path)
        return fd is not None and fd != _BUSY and _others_waiting(fd)

    def before_fork(self) -> None:
        deadline = time.monotonic() + _FORK_WAIT_S
        with self._condition:
            self._forking = True
            while self._open or self._acquiring:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            self._open_at_fork = frozenset(self._open) | frozenset(self._acquiring)

    def after_fork_in_parent(self) -> None:
        with self._condition:
            self._forking = False
            self._condition.notify_all()

    def after_fork_in_child(self) -> None:
        # The lock files' descriptors are the parent's (a flock belongs to the open file, which the child
        # shares): the child never unlocks or closes them, it only forgets them.
        self._condition = threading.Condition(threading.Lock())
        self.inherited = self.inherited | self._open_at_fork
        self._open, self._handover, self._acquiring, self._released = {}, {}, set(), {}
        self._exclusive, self._exclusive_waiting = set(), {}
        self._forking, self._open_at_fork = False, frozenset()


_BUSY: Final = -1
# How long a process leaves the file to others after letting go of it (their polls are at most 10 ms apart).
_HANDOVER_COURTESY_S: Final = 0.012


def _take_handover_lock(path: str, deadline: float) -> int | None:
    """An fd holding an exclusive flock on `<path>.lock`; None if there is no lock file to use
    (no `fcntl`, or a read-only folder without one); `_BUSY` if the deadline passed first."""
    if fcntl is None:
        return None
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # a folder we cannot write: no writer of ours can be using this file either
    delay = 0.001
    waiting = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not waiting:
                    waiting = _mark_waiting(fd, True)
            except OSError:
                os.close(fd)
                return None  # a file system without flock
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.close(fd)
                return _BUSY
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.01)
    finally:
        if waiting:
            _mark_waiting(fd, False)


# Byte 1 of the lock file, locked shared (a POSIX record lock, apart from the flock) by each process
# that is waiting for the file: the process letting go sees it and stays away for a moment.
def _mark_waiting(fd: int, waiting: bool) -> bool:
    try:
        fcntl.lockf(fd, (fcntl.LOCK_SH | fcntl.LOCK_NB) if waiting else fcntl.LOCK_UN, 1, 1)
    except OSError:
        return False
    return True


def _others_waiting(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1)
    except (BlockingIOError, PermissionError):
        return True
    except OSError:
        return False
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
    return False


def _release_handover_lock(fd: int | None) -> bool:
    """Let the next process have the file; True if another one is waiting for it."""
    if fd is None or fd == _BUSY:
        return False
    try:
        waiting = _others_waiting(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return waiting


_gate = _ConnectionGate()
os.register_at_fork(
    before=_gate.before_fork,
    after_in_parent=_gate.after_fork_in_parent,
    after_in_child=_gate.after_fork_in_child,
)

# In-memory databases a forked child inherited. They are never closed or freed in the child: DuckDB's
# teardown would wait for the parent's worker threads, which the child does not have.
_inherited_memory: list[duckdb.DuckDBPyConnection] = []


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why and what to do."""


class StoreBusy(StoreError):
    """Another process held the database file for longer than the timeout; trying again may work."""


# Errors raised because of what a row holds, not because of the file or the machine: by the database,
# or by Python and Arrow on the way to it (a timestamp past year 9999, a number too large).
_DATA_ERRORS: Final = (
    duckdb.DataError,
    duckdb.IntegrityError,
    duckdb.InvalidInputException,
    OverflowError,
    ValueError,
)


def _is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text


def _open_error(path: str, exc: BaseException, lock_timeout_s: float) -> StoreError:
    """A StoreError that says what went wrong with the file and what to do about it."""
    text = str(exc)
    if _is_lock_conflict(exc):
        return StoreError(
            f"cannot open the database {path}: another process holds it open for writing and did not "
            f"let go within {lock_timeout_s:g}s ({text}). otel-workflow processes take turns on a file; "
            "a process that keeps it open (a DuckDB shell, a notebook connection) must close it."
        )
    if "not a valid DuckDB database" in text or "Corrupt database" in text or "Could not read enough" in text:
        return StoreError(
            f"{path} is not a usable DuckDB database: it is damaged, truncated or another kind of file "
            f"({text}). Move it aside (a new database is then created in its place) or use another path."
        )
    if "Permission denied" in text or "Read-only file system" in text:
        return StoreError(
            f"cannot write the database {path}: the file or its folder is not writable ({text}). "
            "Choose a folder this process can write to, or open the file with read_only=True to query it."
        )
    if "No space left" in text or "Disk quota" in text:
        return StoreError(f"cannot write the database {path}: the disk is full ({text}).")
    return StoreError(f"cannot open the database {path}: {text}")


class TraceStore:
    """The DuckDB database of spans: schema, batched ingestion through one writer, and queries.

    `TraceStore("traces.duckdb")` opens or creates the file; `read_only=True` opens
    an existing file for queries only. Ingestion is asynchronous: `submit_spans`
    and `live_rows.submit` enqueue and return at once; `flush()` waits for the writer.

    `max_queued_spans` bounds the memory the write queue may use (see `writer` for
    which spans go first when it is full); `lock_timeout_s` is how long opening
    waits for another process's lock; `shutdown_timeout_s` bounds all shutdown
    steps together (`close`, the exporter's `shutdown`, the exit hook);
    `drop_log_interval_s` is how often, at most, drops are logged.

    SQL from outside (`read_sql`, and `sql`/`arrow` of a read-only store) runs in the
    sandbox of `readonly`: it sees this database and nothing else, under `sql_limits`
    (time limit 30 s, memory limit 1 GB by default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_DB_PATH,
        *,
        read_only: bool = False,
        max_queued_spans: int = DEFAULT_MAX_QUEUED_SPANS,
        flush_interval_s: float = 0.5,
        lock_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 10.0,
        drop_log_interval_s: float = 60.0,
        sql_limits: readonly.SqlLimits | None = None,
    ) -> None:
        self.path = MEMORY if str(path) == MEMORY else str(Path(path).expanduser().absolute())
        self.read_only = read_only
        self.sql_limits = sql_limits or readonly.SqlLimits()
        self._lock_timeout_s = lock_timeout_s
        self._memory: duckdb.DuckDBPyConnection | None = None
        self._memory_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._writer_id = liveness.new_writer_id()
        self._converter = SpanConverter()
        # The writer thread's connection, kept from one write cycle to the next while a backlog lasts.
        self._held: duckdb.DuckDBPyConnection | None = None
        # The file as it was when the connection was kept: changed since, someone else replaced or rewrote it.
        self._held_file: tuple[int, int, int] | None = None
        self._held_since = 0.0
        if self.path == MEMORY:
            if read_only:
                raise StoreError("an in-memory database cannot be opened read-only: it would always be empty")
            self._memory = duckdb.connect(MEMORY)
            ensure_schema(self._memory)
            os.register_at_fork(after_in_child=functools.partial(_reset_memory_lock, weakref.ref(self)))
        elif read_only:
            if not Path(self.path).exists():
                raise StoreError(
                    f"no database at {self.path}: run your traced application or `otel-workflow demo` first"
                )
        else:
            self._prepare_file()
            os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child, weakref.ref(self)))
        self._writer = BackgroundWriter(
            _StoreSink(self),
            max_queued=max_queued_spans,
            flush_interval_s=flush_interval_s,
            label=self.path,
            drop_log_interval_s=drop_log_interval_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )
        if not read_only:
            if not self._converter.native:
                prepare_conversion()
            # Flush at exit without closing: the TracerProvider's exit hook may still export after this.
            atexit.register(_flush_at_exit, weakref.ref(self))

    def _prepare_file(self) -> None:
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise StoreError(f"cannot create the database {self.path}: the folder {folder} does not exist")
        try:
            with self._connect(read_only=False) as connection:
                ensure_schema(connection)
                self._interrupt_dead_writers(connection)
        except SchemaVersionError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        except duckdb.Error as exc:
            raise _open_error(self.path, exc, self._lock_timeout_s) from exc

    # -- connections ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(
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

    def _open(
        self, read_only: bool, timeout_s: float | None, config: readonly.DuckDBConfig | None = None
    ) -> duckdb.DuckDBPyConnection:
        """A connection to the file, the hand-over lock taken (`_close_file` gives both back).

        With `config` (settings of its own), the connection is the process's only one to the file
        while it is open: DuckDB refuses a second instance of a file with other settings.
        """
        timeout_s = self._lock_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            _gate.enter(self.path, timeout_s, exclusive=config is not None)
        except FileBusy as exc:
            raise StoreBusy(f"{exc} that did not let go within {timeout_s:g}s; try again") from exc
        try:
            return self._open_file(read_only, max(0.0, deadline - time.monotonic()), config)
        except BaseException:
            _gate.leave(self.path)
            raise

    def _close_file(self, connection: duckdb.DuckDBPyConnection) -> None:
        try:
            with _instance_lock:
                connection.close()
        finally:
            _gate.leave(self.path)

    @contextlib.contextmanager
    def _writer_connection(self, keep: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The writer's connection for one cycle, kept for the next one if `keep` and nobody waits.

        Each close checkpoints (DuckDB writes the logged rows into the file proper), and a checkpoint
        costs 0.1-0.7 s of CPU almost whatever its size: a service that closed after every cycle paid
        that twice a second. So the connection stays while spans keep coming, and is let go when
        another process waits for the file (within `IDLE_POLL_S` when idle, else at the end of the
        cycle), when this process forks, or after `_LINGER_S` without anything to write (`_idle`).
        """
        if self._memory is not None:
            with self._connect(read_only=False) as cursor:
                yield cursor
            return
        connection, self._held = self._held, None
        if connection is not None and _file_identity(self.path) != self._held_file:
            # Deleted, replaced or overwritten while kept: a new connection makes a new file or finds the
            # damage (and the cycle's spans are counted as failed), instead of writing into what is left.
            self._close_file(connection)
            connection = None
        if connection is None:
            connection = self._open(read_only=False, timeout_s=0.25)
            connection.execute(f"SET checkpoint_threshold = '{_CHECKPOINT_THRESHOLD}'")
            self._held_since = time.monotonic()
            # Each opening, at most every `_MAX_HOLD_S` while spans come: writers that die while this one
            # runs (a worker killed beside its siblings) are found too.
            self._interrupt_dead_writers(connection)
        kept = False
        try:
            yield connection
            kept = keep and time.monotonic() - self._held_since < _MAX_HOLD_S and not _gate.wanted(self.path)
        finally:
            if kept:
                self._held, self._held_file = connection, _file_identity(self.path)
            else:
                self._close_file(connection)

    def _interrupt_dead_writers(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Live rows of writers that died without a clean shutdown stop showing as running (`liveness`)."""
        try:
            gone = liveness.interrupt_dead_writers(connection, self._writer_id)
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

    def _idle(self, seconds: float) -> bool:
        """The writer had nothing to write for `seconds`: let go of the file if that is long enough or
        another process (or a fork) waits for it. True while the connection is still kept."""
        if self._held is None:
            return False
        if seconds >= _LINGER_S or _gate.wanted(self.path):
            self._release_held()
            return False
        return True

    def _release_held(self) -> None:
        connection, self._held = self._held, None
        if connection is not None:
            self._close_file(connection)

    def _memory_connection(self) -> duckdb.DuckDBPyConnection:
        """The in-memory database; a forked child starts an empty one of its own (with the lock held)."""
        assert self._memory is not None
        if self._pid != os.getpid():
            _inherited_memory.append(self._memory)
            self._memory = duckdb.connect(MEMORY)
            ensure_schema(self._memory)
            self._pid = os.getpid()
        return self._memory

    def _open_file(
        self, read_only: bool, timeout_s: float, config: readonly.DuckDBConfig | None = None
    ) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                with _instance_lock:
                    return duckdb.connect(self.path, read_only=read_only, config=config or {})
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise
                if config is not None and "different configuration" in str(exc):
                    raise StoreError(
                        f"{self.path} is open in this process through a DuckDB connection otel-workflow "
                        "does not manage, so the SQL sandbox cannot open it with its own settings: close "
                        "that connection first"
                    ) from exc
                if read_only and "different configuration" in str(exc):
                    # This process already has the file open for writing: share that instance.
                    with _instance_lock:
                        return duckdb.connect(self.path)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def _sandboxed(self, limits: readonly.SqlLimits) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own DuckDB instance with the sandbox's settings (`readonly`), for one query.

        It waits until the process's other connections to the file (the writer's among them) have
        closed, and keeps them out while it lasts (see `_open`).
        """
        if self._memory is not None:
            raise StoreError(
                "the SQL sandbox opens the database a second time with settings of its own, which an "
                "in-memory database cannot do: use a database file, or sql() for your own trusted SQL"
            )
        if not Path(self.path).exists():
            raise StoreError(
                f"no database at {self.path}: run your traced application or `otel-workflow demo` first"
            )
        connection = self._open(True, None, readonly.sandbox_config(limits))
        try:
            yield connection
        finally:
            self._close_file(connection)

    # -- write side ------------------------------------------------------------------------------

    def submit_spans(self, spans: Sequence[ReadableSpan]) -> bool:
        """Queue finished spans for writing. False (and counted) when they had to be dropped."""
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        return self._writer.submit_spans(spans)

    @property
    def live_rows(self) -> LiveRowGate:
        """Where execution and step spans that just started are queued for their live rows.

        The writer builds a row only if the span is still running when it writes: a step that ends
        within the write interval costs nothing here, and the application thread does no conversion.
        """
        if self.read_only:
            raise StoreError(
                "this TraceStore was opened read-only: it takes no live rows (give WorkflowSpanProcessor the "
                "store its DuckDBSpanExporter writes to, or no store at all)"
            )
        return self._writer.live_rows

    @property
    def dropped_spans(self) -> int:
        """Finished spans dropped since this store was opened: queue full, write failed (disk full,
        damaged file), malformed, or not written by the shutdown timeout. Also the metric
        `otel_workflow.spans.dropped`, by reason, and a log warning at most once per interval."""
        return self._writer.drops.total

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """`dropped_spans` by reason: `queue_full`, `write_failed`, `shutdown`, `rejected`."""
        return dict(self._writer.drops.by_reason)

    @property
    def queued(self) -> int:
        """Span records accepted and not yet written."""
        return self._writer.queued

    @property
    def max_queued_spans(self) -> int:
        """The bound of the write queue (live rows and finished spans together)."""
        return self._writer.max_queued

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written. False if the timeout passed first."""
        return self._writer.flush(timeout_s)

    def close_writer(self, timeout_s: float | None = None) -> bool:
        """Write what is queued, mark spans that never ended as interrupted, stop the writer thread.

        Bounded: together with the other shutdown steps it waits at most `shutdown_timeout_s`
        (or `timeout_s` if shorter). What is not written by then is counted in `dropped_spans`;
        the return value is then False. Idempotent.
        """
        if self.read_only:
            return True
        return self._writer.close(self._writer.shutdown_wait(timeout_s))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and release the database (bounded as `close_writer`). Idempotent."""
        if self._closed:
            return
        self.close_writer(timeout_s)
        self._closed = True
        if self._memory is not None:
            with self._memory_lock:
                if self._pid == os.getpid():
                    self._memory.close()
                else:
                    _inherited_memory.append(self._memory)

    def rebuild_derived(self) -> None:
        """Recompute the `executions` and `steps` tables from the raw spans, in one transaction.

        They are kept up to date at ingest; this is for a database whose derived rows were
        lost or written by an older version. Flushes queued spans first.
        """
        if self.read_only:
            raise StoreError("this TraceStore was opened read-only")
        self.flush()
        with self._connect(read_only=False) as connection:
            connection.execute("BEGIN TRANSACTION")
            try:
                rebuild_derived(connection)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _write_batch(
        self,
        finished: Sequence[ConvertedSpans],
        running: Sequence[weakref.ref[ReadableSpan]],
        final: bool,
        forget: Sequence[str] = (),
        commit: Callable[[Callable[[], object]], None] | None = None,
    ) -> int:
        """One transaction: live rows, finished spans, interrupted marks, dropped executions' live rows.

        Returns how many spans were rejected. Should the database refuse the batch because of what
        some span holds (a constraint, a value out of range), the batch is halved until the span is
        alone, so that it alone is rejected.
        """
        try:
            self._write_once(finished, running, final, forget, commit)
            return 0
        except _DATA_ERRORS:
            if not finished:
                raise
            logger.debug("otel-workflow: the database refused a batch; looking for the span", exc_info=True)
        if len(finished) == 1 and finished[0].count == 1:
            return 1 + self._write_batch((), running, final, forget, commit)
        if len(finished) > 1:
            middle = len(finished) // 2
            first, rest = finished[:middle], finished[middle:]
        else:
            halves = finished[0].tables().halves()
            first, rest = [ConvertedSpans.of(halves[0])], [ConvertedSpans.of(halves[1])]
        rejected = self._write_batch(first, running, False, forget, commit)
        return rejected + self._write_batch(rest, (), final, (), commit)

    def _write_once(
        self,
        finished: Sequence[ConvertedSpans],
        running: Sequence[weakref.ref[ReadableSpan]],
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None] | None,
    ) -> None:
        batch = tables_of(finished) if finished else None
        live = self._running_rows(running)
        if batch is None and live is None and not final and not forget:
            return
        # The file was deleted while we ran: DuckDB makes a new, empty one, which needs the schema.
        recreate = self._memory is None and not os.path.exists(self.path)
        try:
            with self._writer_connection(keep=not final) as connection:
                if recreate:
                    ensure_schema(connection)
                # The statements go to DuckDB in one script: each call lets go of the GIL and must take it
                # back, which waits up to a switch interval (5 ms) while the application runs Python.
                connection.execute("BEGIN TRANSACTION")
                try:
                    script: list[str] = []
                    if live is not None:
                        connection.register("_running_batch", live)
                        # Both values are ours (a UUID and a number): safe to write into the statement.
                        script.append(
                            f"INSERT INTO running_spans SELECT *, '{self._writer_id}', {os.getpid()}, NULL "
                            "FROM _running_batch"
                        )
                    if batch is not None:
                        script += _insert_finished(connection, batch)
                    if script:
                        connection.execute(";\n".join(script))
                    for name in ("_running_batch", *_BATCH_VIEWS):
                        connection.unregister(name)
                    if forget:
                        # Executions the writer dropped: their live rows must not show them running forever.
                        connection.execute(
                            "DELETE FROM running_spans WHERE writer_id = ? AND execution_id IN "
                            "(SELECT unnest(?::VARCHAR[]))",
                            [self._writer_id, sorted(set(forget))],
                        )
                    if final:
                        connection.execute(
                            "UPDATE running_spans SET interrupted_at = now() "
                            "WHERE writer_id = ? AND interrupted_at IS NULL",
                            [self._writer_id],
                        )
                    if commit is None:
                        connection.execute("COMMIT")
                    else:
                        commit(lambda: connection.execute("COMMIT"))
                except BaseException:
                    with contextlib.suppress(duckdb.Error):
                        connection.execute("ROLLBACK")
                    raise
        except StoreBusy as exc:
            raise RetryLater("the database file is held by another process") from exc
        except duckdb.Error as exc:
            if _is_lock_conflict(exc):
                raise RetryLater("the database file is held by another process") from exc
            raise

    def _convert(self, spans: Sequence[ReadableSpan]) -> tuple[list[ConvertedSpans], int]:
        """The spans converted, leaving out (and counting) the ones that cannot be converted."""
        parts: list[ConvertedSpans] = []
        # In slices: the Python objects made while converting (row tuples, strings) are several times
        # the Arrow result, and a slice's are freed before the next one's are made.
        for first in range(0, len(spans), _CONVERT_SLICE):
            self._convert_parts(spans[first : first + _CONVERT_SLICE], parts)
        # The converter also leaves out spans without a context: they count as rejected too.
        converted = sum(part.count for part in parts)
        return [part for part in parts if part.count], len(spans) - converted

    def _convert_parts(self, spans: Sequence[ReadableSpan], parts: list[ConvertedSpans]) -> None:
        # One malformed span must not cost the others their place: halve until it is alone.
        try:
            parts.append(self._converter.convert(spans))
        except Exception:
            if len(spans) == 1:
                logger.debug("otel-workflow rejected a span it could not convert", exc_info=True)
                return
            middle = len(spans) // 2
            self._convert_parts(spans[:middle], parts)
            self._convert_parts(spans[middle:], parts)

    def _running_rows(self, started: Sequence[weakref.ref[ReadableSpan]]) -> pa.Table | None:
        """Live rows for the spans that are still running (an ended one is in this or a coming batch)."""
        running = [span for ref in started if (span := ref()) is not None and span.end_time is None]
        parts, failed = self._convert(running)
        if failed:
            self._writer.drops.add_live_rows(failed)
        return running_rows(tables_of(parts).spans) if parts else None

    # -- read side -------------------------------------------------------------------------------

    def sql(
        self, query: str, params: Sequence[Any] | None = None, *, timeout_s: float | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a query and return its rows as tuples.

        On a read-only store this is `read_sql`'s sandbox (one reading statement, this database
        only, `sql_limits`). On a writable store it is your own code's SQL on a connection that
        can do anything, interrupted after `timeout_s` if given: give SQL from elsewhere to `read_sql`.
        """
        if self.read_only:
            return self._sandbox_run(query, params, timeout_s, _fetch_rows)
        with self._connect(read_only=False) as connection:
            if timeout_s is None:
                return connection.execute(query, params).fetchall()
            with readonly.time_limited(connection, self.sql_limits.with_timeout(timeout_s)):
                return connection.execute(query, params).fetchall()

    def arrow(
        self, query: str, params: Sequence[Any] | None = None, *, timeout_s: float | None = None
    ) -> pa.Table:
        """`sql()` as an Arrow table (for pandas: `.to_pandas()`, polars: `pl.from_arrow`)."""
        if self.read_only:
            return self._sandbox_run(query, params, timeout_s, _fetch_arrow)
        with self._connect(read_only=False) as connection:
            if timeout_s is None:
                return _fetch_arrow(connection.sql(query, params=params))
            with readonly.time_limited(connection, self.sql_limits.with_timeout(timeout_s)):
                return _fetch_arrow(connection.sql(query, params=params))

    def read_sql(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> pa.Table:
        """Run one statement that only reads (SELECT, WITH, FROM, SHOW, DESCRIBE, EXPLAIN) into Arrow.

        The SQL sandbox, whatever mode this store was opened in: what `otel-workflow sql` and
        `/api/sql` run. Statements that are not reads are refused with `ReadOnlyViolation`
        before they reach the database; files, URLs, extensions, settings and writes with
        `SandboxRefusal` (a `ReadOnlyViolation`) by DuckDB itself. Past `timeout_s` (default
        `sql_limits.timeout_s`) or the memory limit, `QueryLimitExceeded`.
        """
        return self._sandbox_run(query, params, timeout_s, _fetch_arrow)

    def read_sql_page(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        max_rows: int,
        max_bytes: int = 16 * 1024 * 1024,
        timeout_s: float | None = None,
    ) -> readonly.SqlPage:
        """`read_sql` stopping after `max_rows` rows or about `max_bytes` (`truncated`: rows were cut)."""
        page = functools.partial(readonly.read_page, max_rows=max_rows, max_bytes=max_bytes)
        return self._sandbox_run(query, params, timeout_s, page)

    def _sandbox_run(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] | None,
        timeout_s: float | None,
        fetch: Callable[[duckdb.DuckDBPyRelation], _T],
    ) -> _T:
        statement = readonly.check_read_only(query)
        limits = self.sql_limits.with_timeout(timeout_s)
        with self._sandboxed(limits) as connection, readonly.time_limited(connection, limits):
            return fetch(connection.sql(statement, params=params))

    def df(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """`arrow()` as a pandas DataFrame; needs pandas (`pip install pandas`), imported only here."""
        queries.require_module("pandas", "TraceStore.df()")
        return self.arrow(query, params).to_pandas()

    def pl(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """`arrow()` as a polars DataFrame; needs polars (`pip install polars`), imported only here."""
        polars = queries.require_module("polars", "TraceStore.pl()")
        return polars.from_arrow(self.arrow(query, params))

    def executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | Sequence[str] | None = None,
        since: queries.TimeArg = None,
        until: queries.TimeArg = None,
        triggered_by: str | None = None,
        error_contains: str | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[ExecutionRow]:
        """Executions matching every given filter, newest first.

        `status` and `workflow_id` take one value or several; `since` / `until`
        bound the start time (a datetime, a timedelta or text like `"1h"`, `"7d"`
        or an ISO timestamp); `error_contains` matches the error message without
        regard to case; `limit=None` returns all.
        """
        with self._connect(read_only=self.read_only) as connection:
            return queries.list_executions(
                connection,
                status=status,
                workflow_id=workflow_id,
                since=since,
                until=until,
                triggered_by=triggered_by,
                error_contains=error_contains,
                limit=limit,
                offset=offset,
            )

    def resolve_execution_id(self, id_or_prefix: str) -> str:
        """The full id of the execution whose id is, or uniquely starts with, `id_or_prefix`.

        Raises `queries.ExecutionNotFound` or `queries.AmbiguousExecutionId` (both `LookupError`).
        """
        with self._connect(read_only=self.read_only) as connection:
            return queries.resolve_execution_id(connection, id_or_prefix)

    def execution(self, id_or_prefix: str) -> ExecutionDetail:
        """One execution (by id or unique id prefix) with its steps and the waterfall of its spans."""
        with self._connect(read_only=self.read_only) as connection:
            return queries.get_execution(connection, id_or_prefix)

    def steps(self, execution_id: str) -> list[StepRow]:
        """The steps of one execution (exact id) in start order."""
        with self._connect(read_only=self.read_only) as connection:
            return queries.list_steps(connection, execution_id)

    def logs(
        self,
        execution_id: str | None = None,
        *,
        level: str | Sequence[str] | None = None,
        since: queries.TimeArg = None,
        until: queries.TimeArg = None,
        limit: int | None = None,
    ) -> list[LogRow]:
        """Log rows in time order: of one execution (id or unique prefix), or of all.

        `level` keeps only rows of that level or levels (`info`, `error`,
        `warning`, `event`, ...); `since` / `until` bound the row time.
        """
        with self._connect(read_only=self.read_only) as connection:
            found = None if execution_id is None else queries.resolve_execution_id(connection, execution_id)
            return queries.list_logs(connection, found, level=level, since=since, until=until, limit=limit)

    def step_stats(
        self,
        *,
        workflow_id: str | None = None,
        since: queries.TimeArg = None,
        until: queries.TimeArg = None,
        sort: str = "p95",
    ) -> list[StepStats]:
        """Per workflow and step: count, failures, failure rate, p50/p95/p99/max duration.

        Over the ended steps that started in the window; `sort` is one of
        `name`, `count`, `failures`, `p50`, `p95` (default), `p99`, `max`.
        """
        with self._connect(read_only=self.read_only) as connection:
            return queries.step_stats(
                connection, workflow_id=workflow_id, since=since, until=until, sort=sort
            )

    def workflow_stats(
        self,
        *,
        workflow_id: str | None = None,
        since: queries.TimeArg = None,
        until: queries.TimeArg = None,
        sort: str = "p95",
    ) -> list[WorkflowStats]:
        """Per workflow: executions ended and running, failures, duration percentiles (as `step_stats`)."""
        with self._connect(read_only=self.read_only) as connection:
            return queries.workflow_stats(
                connection, workflow_id=workflow_id, since=since, until=until, sort=sort
            )

    def prune(self, older_than: queries.DurationArg, *, dry_run: bool = False) -> PruneReport:
        """Delete the traces in which nothing happened for `older_than` (`"7d"`, a timedelta).

        Spans, their events and links, and live rows go together in one
        transaction, and with them the executions, steps and logs derived from
        them; the report counts each. `dry_run=True` counts without deleting.
        The one read-side method that writes: the store must not be read-only.
        """
        if self.read_only:
            raise StoreError("prune deletes rows: open the TraceStore without read_only=True")
        cutoff = queries.cutoff(older_than)
        with self._connect(read_only=False) as connection:
            return queries.prune(connection, cutoff, dry_run=dry_run)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"TraceStore({self.path!r}, {mode})"


def _insert_finished(connection: duckdb.DuckDBPyConnection, batch: SpanBatch) -> list[str]:
    """Register the batch's tables (`_BATCH_VIEWS`) and return the statements that store what is new."""
    spans, events, links = batch.spans, batch.events, batch.links
    if pc.count_distinct(spans.column("span_id")).as_py() < spans.num_rows:
        # The same span twice in one batch (exported twice before the writer ran): keep one of each.
        spans = _distinct(connection, spans, "trace_id, span_id")
        events = _distinct(connection, events, "trace_id, span_id, event_index")
        links = _distinct(connection, links, "trace_id, span_id, link_index")
    bounds = pc.min_max(spans.column("start_time"))
    # A re-exported span has the same start time: bounding the check by the batch's start times lets
    # DuckDB skip row groups by their min/max instead of reading every stored span id. As epoch seconds,
    # widened by a second and clamped to what a timestamp can hold: the bounds only prune, and a clock
    # far off (year 10000) must not fail the batch. Numbers: safe to write into the statements.
    low = _epoch_bound(bounds["min"].cast(pa.int64()).as_py(), -1.0)
    high = _epoch_bound(bounds["max"].cast(pa.int64()).as_py(), 1.0)
    stored = (
        f"SELECT 1 FROM spans s WHERE s.start_time BETWEEN to_timestamp({low!r}) AND to_timestamp({high!r}) "
        "AND s.span_id = b.span_id AND s.trace_id = b.trace_id"
    )
    connection.register("_span_batch", spans)
    connection.register("_event_batch", events)
    connection.register("_link_batch", links)
    found = connection.execute(f"SELECT EXISTS (SELECT 1 FROM _span_batch b WHERE EXISTS ({stored}))")
    row = found.fetchone()
    script: list[str] = []
    if row is not None and not row[0]:
        # The usual case, every span new: straight from the Arrow batch, without a copy.
        source = "_span_batch"
    else:
        source = "_new_spans"
        script.append(
            "CREATE OR REPLACE TEMP TABLE _new_spans AS "
            f"SELECT b.* FROM _span_batch b WHERE NOT EXISTS ({stored})"
        )
    script.append(f"INSERT INTO spans SELECT * FROM {source}")
    script += derive_statements(source)
    for table, view, name in ((events, "_event_batch", "span_events"), (links, "_link_batch", "span_links")):
        if table.num_rows == 0:
            continue
        if source == "_span_batch":
            script.append(f"INSERT INTO {name} SELECT * FROM {view}")
        else:
            script.append(
                f"INSERT INTO {name} SELECT c.* FROM {view} c SEMI JOIN _new_spans n "
                "ON n.span_id = c.span_id AND n.trace_id = c.trace_id"
            )
    if source == "_new_spans":
        script.append("DROP TABLE _new_spans")
    script.append(
        "DELETE FROM running_spans r USING _span_batch e "
        "WHERE r.span_id = e.span_id AND r.trace_id = e.trace_id"
    )
    return script


# What `_insert_finished` registers, unregistered after its statements ran.
_BATCH_VIEWS: Final = ("_span_batch", "_event_batch", "_link_batch")

_CONVERT_SLICE: Final = 4096

# How long the writer keeps the file open without anything to write, and at most in one go (see
# `_writer_connection`): the DuckDB instance's memory (the rows logged since the last checkpoint, the
# blocks it has read) is given back at each close.
_LINGER_S: Final = 1.0
_MAX_HOLD_S: Final = 5.0

# While the writer keeps its connection, DuckDB checkpoints when the log passes this size. A cycle of
# 20,000 spans logs about 21 MB, and the default (16 MB) checkpointed after every one; at 128 MB one
# checkpoint writes about one row group (122,880 rows) at once, for about half the time per span.
_CHECKPOINT_THRESHOLD: Final = "128MB"

_EPOCH_RANGE_S: Final = (-62_135_596_800.0, 253_402_300_799.0)  # years 1 to 9999


def _fetch_rows(relation: duckdb.DuckDBPyRelation) -> list[tuple[Any, ...]]:
    return relation.fetchall()


def _fetch_arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    table: pa.Table = relation.to_arrow_table()
    return table


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


def _epoch_bound(microseconds: int | None, widen_s: float) -> float:
    seconds = (microseconds or 0) / 1e6 + widen_s
    return min(max(seconds, _EPOCH_RANGE_S[0]), _EPOCH_RANGE_S[1])


def _distinct(connection: duckdb.DuckDBPyConnection, table: pa.Table, key: str) -> pa.Table:
    if table.num_rows == 0:
        return table
    connection.register("_with_duplicates", table)
    distinct: pa.Table = connection.sql(
        f"SELECT DISTINCT ON ({key}) * FROM _with_duplicates"
    ).to_arrow_table()
    connection.unregister("_with_duplicates")
    return distinct


class _StoreSink:
    """Adapts the writer's sink protocol to a store, without keeping the store alive."""

    def __init__(self, store: TraceStore) -> None:
        self._store = weakref.ref(store)

    def release(self) -> None:
        store = self._store()
        if store is not None:
            store._release_held()

    def idle(self, seconds: float) -> bool:
        store = self._store()
        return store is not None and store._idle(seconds)

    def convert(self, spans: Sequence[ReadableSpan]) -> tuple[list[ConvertedSpans], int]:
        store = self._store()
        if store is None:
            return [], len(spans)
        return store._convert(spans)

    def write(
        self,
        finished: Sequence[ConvertedSpans],
        running: Sequence[weakref.ref[ReadableSpan]],
        *,
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None],
    ) -> int:
        store = self._store()
        if store is None:
            return 0
        return store._write_batch(finished, running, final, forget, commit)


def _after_fork_in_child(ref: weakref.ref[TraceStore]) -> None:
    store = ref()
    if store is not None:
        # The parent's connection: never used or closed in the child (the gate refuses the file there).
        store._held = None
        # A writer of its own: the parent's id would let the child's clean shutdown mark the parent's
        # (or a sibling's) live rows interrupted, and the liveness check judge them by the wrong pid.
        store._writer_id = liveness.new_writer_id()


def _reset_memory_lock(ref: weakref.ref[TraceStore]) -> None:
    store = ref()
    if store is not None:
        store._memory_lock = threading.Lock()


def _flush_at_exit(ref: weakref.ref[TraceStore]) -> None:
    # Interpreter exit starts the shutdown budget: this flush and the close that the TracerProvider's
    # own exit hook may run after it share `shutdown_timeout_s`, so a stuck lock cannot hang the exit.
    store = ref()
    if store is not None and not store._closed and not store.read_only:
        store.flush(timeout_s=store._writer.shutdown_wait(None))
