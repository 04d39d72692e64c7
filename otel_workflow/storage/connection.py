"""Connections to a database file: the hand-over between processes and threads, and failed opens.

DuckDB lets one process hold a database file for writing, and a process cannot open a file another
process holds. Every connection of ours to a file therefore goes through `gate` (see
`ConnectionGate`): it takes turns with other otel-workflow processes through a lock file, keeps
fork() from copying an open DuckDB instance into a child, and gives the SQL sandbox its exclusive
entry. `open_instance`/`close_instance` open and close under the per-process instance lock.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final

import duckdb

from otel_workflow.model.errors import StoreError

try:
    import fcntl
except ImportError:  # Windows: no hand-over lock (see `ConnectionGate`)
    fcntl = None  # type: ignore[assignment]


def is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text


def open_error(path: str, exc: BaseException, lock_timeout_s: float) -> StoreError:
    """A StoreError that says what went wrong with the file and what to do about it."""
    text = str(exc)
    if is_lock_conflict(exc):
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


# DuckDB shares one database instance among a process's connections to a file and tears it down
# when the last one closes. Opening while another thread tears down (the writer ending its cycle
# as a reader starts) was seen to yield a connection without the Python Arrow scan. Opening and
# closing are therefore serialised per process; queries themselves run in parallel.
_instance_lock = threading.Lock()


def _reset_instance_lock() -> None:
    global _instance_lock  # noqa: PLW0603 - a lock held by a thread that does not exist in the child
    _instance_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_instance_lock)

# How long fork() waits for this process's open connections to close (see `ConnectionGate`).
_FORK_WAIT_S = 10.0


class FileBusy(Exception):
    """Another otel-workflow process held the database file for longer than this one could wait."""


class ConnectionGate:
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


gate = ConnectionGate()
os.register_at_fork(
    before=gate.before_fork,
    after_in_parent=gate.after_fork_in_parent,
    after_in_child=gate.after_fork_in_child,
)


def open_instance(
    path: str, *, read_only: bool, config: dict[str, Any] | None = None, row_group_size: int | None = None
) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect`, serialised with other opens and closes of this process (see `_instance_lock`).

    With `row_group_size`, the file is attached (as the default database) to an in-memory instance with
    that row group size, which only ATTACH can set. No other connection of the process can then open
    the file while this one is open (DuckDB: "Unique file handle conflict"): for a process that is the
    file's only user, the writer process."""
    with _instance_lock:
        if row_group_size is None:
            return duckdb.connect(path, read_only=read_only, config=config or {})
        connection = duckdb.connect(":memory:", config=config or {})
        try:
            quoted = path.replace("'", "''")
            mode = ", READ_ONLY" if read_only else ""
            connection.execute(f"ATTACH '{quoted}' AS store (ROW_GROUP_SIZE {int(row_group_size)}{mode})")
            connection.execute("USE store")
        except BaseException:
            connection.close()
            raise
        return connection


def close_instance(connection: duckdb.DuckDBPyConnection) -> None:
    """`connection.close()`, serialised with opens (see `_instance_lock`)."""
    with _instance_lock:
        connection.close()
