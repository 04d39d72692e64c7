"""Helpers of the reliability tests: child Python processes, a process that holds the database lock,
DuckDB's own checks of a file, and small file systems (tmpfs, read-only bind mounts) where allowed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

# Python 3.12+ warns when a process with threads forks; the fork tests do that on purpose.
FORK_WARNING = "ignore:This process:DeprecationWarning"


def write_script(folder: Path, code: str) -> Path:
    script = folder / f"child_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    return script


def python(script: Path, *args: object) -> list[str]:
    return [sys.executable, "-W", FORK_WARNING, str(script), *(str(a) for a in args)]


def run_python(
    folder: Path, code: str, *args: object, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new Python process; its output is returned, never checked here."""
    script = write_script(folder, code)
    return subprocess.run(
        python(script, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def start_python(folder: Path, code: str, *args: object) -> subprocess.Popen[str]:
    script = write_script(folder, code)
    return subprocess.Popen(
        python(script, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """Wait for (or, past the timeout, kill) a child; its output."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return out, err


_HOLDER = """
import sys, duckdb
connection = duckdb.connect(sys.argv[1])
connection.execute("SELECT 1").fetchall()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
connection.close()
"""


@contextlib.contextmanager
def lock_held(folder: Path, db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds `db` open for writing (DuckDB's file lock) until the block ends."""
    process = start_python(folder, _HOLDER, db)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "held":
            _, err = stop(process, 5)
            raise AssertionError(f"the lock holder did not start: {line!r} {err}")
        yield process
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def check_database(path: Path) -> dict[str, int]:
    """What DuckDB offers to check a file: open it (replaying its WAL), checkpoint, read every column
    of every table in full (which verifies each block's checksum) and its storage layout.

    Returns the row count of every table."""
    counts: dict[str, int] = {}
    with duckdb.connect(str(path)) as connection:
        connection.execute("CHECKPOINT")
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT table_name FROM duckdb_tables() WHERE NOT internal"
            ).fetchall()
        ]
        for table in tables:
            data = connection.sql(f'SELECT * FROM "{table}"').to_arrow_table()
            counts[table] = data.num_rows
            storage = connection.execute(f"SELECT count(*) FROM pragma_storage_info('{table}')").fetchall()
            assert storage[0][0] >= 0
        size = connection.execute("PRAGMA database_size").fetchall()
        assert size
        views = [
            name
            for (name,) in connection.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        ]
        for view in views:
            connection.execute(f'SELECT count(*) FROM "{view}"').fetchall()
    return counts


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    command = shutil.which("mount")
    if command is None:
        pytest.skip("no mount command on this machine")
    return subprocess.run([command, *args], capture_output=True, text=True, check=False, timeout=30)


def unmount(target: Path) -> None:
    command = shutil.which("umount") or "umount"
    done = subprocess.run([command, str(target)], capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        subprocess.run([command, "-l", str(target)], capture_output=True, text=True, check=False, timeout=30)


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` at `target` (needs root and a machine that allows mounting), else skip."""
    target.mkdir(parents=True, exist_ok=True)
    if not is_root():
        pytest.skip("mounting a small tmpfs (to fill the disk) needs root")
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target))
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {done.stderr.strip()}")
    try:
        yield target
    finally:
        unmount(target)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """`folder` made read-only: by its mode, or (root ignores modes) by a read-only bind mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if not is_root():
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(mode)
        return
    done = _mount("--bind", str(folder), str(folder))
    if done.returncode != 0:
        pytest.skip(f"running as root, and this machine does not allow a read-only bind mount: {done.stderr}")
    try:
        again = _mount("-o", "remount,ro,bind", str(folder))
        if again.returncode != 0:
            pytest.skip(
                f"running as root, and this machine does not allow a read-only remount: {again.stderr}"
            )
        probe = folder / ".probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("the read-only bind mount is writable after all")
        yield folder
    finally:
        unmount(folder)


def open_files_in(folder: Path) -> list[str]:
    """The files in `folder` that this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (or the listing's own descriptor)
            continue
        if target.startswith(f"{folder}{os.sep}"):
            found.append(target)
    return found


def set_writable(folder: Path, writable: bool) -> None:
    """Flip a `read_only_folder` mount (root) between read-only and writable."""
    if not is_root():
        folder.chmod(0o755 if writable else 0o555)
        return
    done = _mount("-o", f"remount,{'rw' if writable else 'ro'},bind", str(folder))
    assert done.returncode == 0, done.stderr


def count(path: Path, query: str, params: list[Any] | None = None) -> Any:
    """One value from a read-only connection of our own (not through the package)."""
    with duckdb.connect(str(path), read_only=True) as connection:
        rows = connection.execute(query, params).fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]
