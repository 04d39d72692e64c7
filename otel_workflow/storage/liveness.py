"""Which writers of a database are still alive, so that live rows do not outlive their process.

A clean shutdown marks the writer's own live rows interrupted (`running_spans.interrupted_at`). A
process killed without one (SIGKILL, the OOM killer, a crash in C) cannot: its rows would show their
execution as running for ever. So each writer names itself with an id that says where its pid means
one process (this boot of this machine, in this pid namespace: a container has its own), and the
next writer to open the file marks the rows of writers from the same place whose process is gone.

A writer elsewhere (another machine, another container) is never judged. A pid reused by a new
process keeps the dead writer's rows running until that process ends too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Final

import duckdb


def _place() -> str:
    """This boot of this machine and this pid namespace, as text safe in SQL; empty where unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except (OSError, UnicodeDecodeError):
        return ""
    boot = "".join(ch for ch in boot if ch in "0123456789abcdef-")
    digits = "".join(ch for ch in namespace if ch.isdigit())
    return f"{boot}.{digits}" if boot and digits else ""


PLACE: Final = _place()


def new_writer_id() -> str:
    """A writer id (one per process and store): unique, and saying where its pid can be checked."""
    return f"{uuid.uuid4()}@{PLACE}" if PLACE else str(uuid.uuid4())


def process_exists(pid: int) -> bool:
    """Whether `pid` names a process here that has not exited (a zombie, exited but not yet reaped by
    its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, another user's
        return True
    try:
        # /proc/<pid>/stat: "pid (comm) state ...", comm may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace").rpartition(")")[2]
    except OSError:
        return True  # no /proc to ask: signal 0 said it exists
    return state.split()[:1] != ["Z"]


def interrupt_dead_writers(connection: duckdb.DuckDBPyConnection, own_writer_id: str) -> int:
    """Mark the live rows of writer processes from this place that are gone as interrupted; returns how
    many processes were found gone. A row is judged by its own pid: processes forked by an older
    version shared their parent's writer id."""
    if not PLACE:
        return 0
    writers = connection.execute(
        "SELECT DISTINCT writer_id, pid FROM running_spans "
        "WHERE interrupted_at IS NULL AND pid IS NOT NULL AND suffix(writer_id, ?) AND writer_id <> ?",
        [f"@{PLACE}", own_writer_id],
    ).fetchall()
    gone = sorted(f"{writer} {pid}" for writer, pid in writers if not process_exists(pid))
    if gone:
        connection.execute(
            "UPDATE running_spans SET interrupted_at = now() WHERE interrupted_at IS NULL "
            "AND writer_id || ' ' || pid IN (SELECT unnest(?::VARCHAR[]))",
            [gone],
        )
    return len(gone)
