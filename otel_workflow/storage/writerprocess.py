"""`ProcessWriteSink`: the writer's sink when a child process, not this one, holds the DuckDB file.

`TraceStore(path, writer_process=True)` (and `configure(writer_process=True)`) keep everything the
application relies on in this process (the queue and its bound, the overload policy, counted drops,
`flush()`, the live rows, the close deadline) and move only the DuckDB client there: the converter
thread still makes Arrow rows of the finished spans here (in C), and the writer thread hands each
cycle's tables to `writerchild` over a socket pair (`writerwire`) instead of inserting them itself.
The DuckDB client takes the GIL back several times per statement and its commits and checkpoints
cost more CPU than the conversion; in another process they no longer take turns with the
application's threads for one GIL.

What happens when things fail:
- The child cannot be started (no interpreter at `sys.executable`, as in an embedded Python): said
  once, and this sink writes in this process from then on.
- The child dies (killed, crashed): the cycle is retried through a new child, up to
  `_RESTARTS_PER_CYCLE` times in a row, then counted as a failed write. A retried cycle that had
  committed before the child died is not stored twice: the write skips spans already stored.
- The application is killed: the child finds its end of the socket closed, marks the live rows it
  wrote interrupted, and ends. Only what had not reached it is lost, as in this process.
- fork(): the child process of the application forgets the parent's writer process (it never writes
  to the parent's socket) and starts its own at its first write.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NoReturn

import pyarrow as pa
from opentelemetry.sdk.trace import ReadableSpan

import otel_workflow
from otel_workflow.ingest.convert import ConvertedSpans, pack_tables, packable, tables_of
from otel_workflow.ingest.logrows import LogRows
from otel_workflow.ingest.sink import Abandoned, RetryLater
from otel_workflow.storage import writerwire as wire
from otel_workflow.storage.write import SpanWriteSink

logger = logging.getLogger("otel_workflow")

# How long a new writer process may take to import its libraries and say HELLO.
_START_TIMEOUT_S: Final = 60.0
# A cycle whose writer process died this many times in a row is given up (counted as failed).
_RESTARTS_PER_CYCLE: Final = 3
# How long a stopping writer process may take to close the file before it is killed.
_STOP_TIMEOUT_S: Final = 10.0

# Writer processes of the parent, seen from a forked child: never talked to, never waited for.
_inherited: list[subprocess.Popen[bytes]] = []


class WriteFailed(RuntimeError):
    """The writer process could not store a cycle (the message says why); the cycle is dropped."""


class _CommitRefused(Exception):
    """COMMIT failed in the writer process, which goes on (a refused batch is halved) and reports."""


class WriterProcess:
    """One started `writerchild` and the socket to it."""

    def __init__(self, path: str, lock_timeout_s: float) -> None:
        ours, theirs = socket.socketpair()
        root = str(Path(otel_workflow.__file__).resolve().parent.parent)
        env = dict(os.environ)
        # The child imports this very package, wherever it was imported from here (an editable install,
        # a source checkout on sys.path).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "otel_workflow.storage.writerchild",
                    "--fd",
                    str(theirs.fileno()),
                    "--path",
                    path,
                    "--lock-timeout",
                    repr(lock_timeout_s),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                # Its own session: a Ctrl-C or a signal to the application's process group must not stop
                # it before the application's own shutdown has written the last cycle.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.channel = wire.Channel(ours)
        self._greeted = False

    def wait_ready(self) -> None:
        """Wait for its HELLO (once): started, its libraries imported. WireError if it never came."""
        if self._greeted:
            return
        self.channel.socket.settimeout(_START_TIMEOUT_S)
        try:
            _expect(self.channel, wire.HELLO)
        except BaseException:
            self.kill()
            raise
        self.channel.socket.settimeout(None)
        self._greeted = True

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Ask it to let go of the file and end; killed if it does not within `_STOP_TIMEOUT_S`."""
        try:
            self.channel.socket.settimeout(_STOP_TIMEOUT_S)
            self.channel.send(wire.STOP)
            self.channel.receive()
            self.process.wait(_STOP_TIMEOUT_S)
        except (wire.WireError, subprocess.TimeoutExpired):
            self.kill()
        finally:
            self.channel.close()

    def kill(self) -> None:
        """End it at once (it died, hangs, or the store gave up on it) and reap it."""
        self.process.kill()
        self.process.wait()
        self.channel.close()

    def exit_status(self) -> str:
        code = self.process.poll()
        return "still running" if code is None else f"exit status {code}"


class ProcessWriteSink:
    """The writer's `BatchSink` that stores through a `WriterProcess` (started at once, restarted on
    demand). Conversion and live rows are `SpanWriteSink`'s, here; so is writing, should no process
    start."""

    def __init__(self, local: SpanWriteSink) -> None:
        self.local = local
        self._lock = threading.Lock()
        self._process: WriterProcess | None = None
        self._in_process = False
        self._restarts = 0
        os.register_at_fork(after_in_child=functools.partial(_forget_after_fork, weakref.ref(self)))

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid, while one runs."""
        process = self._process
        return None if process is None else process.pid

    def start(self) -> None:
        """Start the writer process now, without waiting for it: it takes a moment to import DuckDB,
        which it does while the application goes on."""
        with self._lock:
            self._spawn()

    def wait_ready(self) -> bool:
        """Wait until the writer process has started (True), or it could not (False: writes happen here)."""
        with self._lock:
            return self._started() is not None

    def convert(self, spans: Sequence[ReadableSpan]) -> tuple[list[ConvertedSpans], int]:
        return self.local.convert(spans)

    def write(
        self,
        finished: Sequence[ConvertedSpans],
        running: Sequence[weakref.ref[ReadableSpan]],
        *,
        final: bool,
        forget: Sequence[str],
        commit: Callable[[Callable[[], object]], None],
        logs: Sequence[LogRows] = (),
    ) -> int:
        live = self.local.running_table(running)
        with self._lock:
            process = self._started()
            if process is None:
                return self.local.write_rows(
                    finished, live, final=final, forget=forget, commit=commit, logs=logs
                )
            log_table = pa.concat_tables([rows.table for rows in logs]) if logs else None
            header = {"final": final, "forget": list(forget)}
            try:
                _send_write(process.channel, header, finished, [live, log_table])
                return self._converse(process.channel, commit)
            except wire.WireError as exc:
                self._lost(process, exc)

    def _converse(self, channel: wire.Channel, commit: Callable[[Callable[[], object]], None]) -> int:
        """The conversation after a WRITE (`writerwire`); the number of rejected spans."""
        while True:
            message = channel.receive()
            if message.kind == wire.READY:
                try:
                    commit(functools.partial(_commit_there, channel))
                except _CommitRefused:
                    continue  # it goes on with the halves and reports at the end
                except Abandoned:
                    channel.send(wire.ABORT)
                    _drain(channel)
                    raise
            elif message.kind == wire.RESULT:
                self._restarts = 0
                self.local.count_rejected_logs(int(message.header["rejected_logs"]))
                return int(message.header["rejected"])
            elif message.kind == wire.RETRY:
                raise RetryLater(str(message.header["message"]))
            elif message.kind == wire.FAILED:
                raise WriteFailed(str(message.header["message"]))
            else:
                raise wire.WireError(f"unexpected message kind {message.kind} during a write")

    def _lost(self, process: WriterProcess, exc: wire.WireError) -> NoReturn:
        """The writer process died or garbled the conversation: a new one retries the cycle."""
        process.kill()
        status = process.exit_status()
        self._process = None
        self._restarts += 1
        if self._restarts > _RESTARTS_PER_CYCLE:
            self._restarts = 0
            raise WriteFailed(
                f"the writer process ended during this cycle {_RESTARTS_PER_CYCLE + 1} times in a row "
                f"(last: {status}, {exc})"
            ) from exc
        raise RetryLater(f"the writer process ended ({status}: {exc}); starting a new one") from exc

    def _started(self) -> WriterProcess | None:
        """With the lock held: the running writer process (started if need be); None: write here."""
        process = self._spawn()
        if process is not None:
            try:
                process.wait_ready()
            except wire.WireError as exc:
                self._process = None
                self._write_here_instead(f"{exc}; {process.exit_status()}")
        return self._process

    def _spawn(self) -> WriterProcess | None:
        if self._process is None and not self._in_process:
            try:
                self._process = WriterProcess(self.local.database.path, self.local.database.lock_timeout_s)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                self._write_here_instead(str(exc))
        return self._process

    def _write_here_instead(self, why: str) -> None:
        self._in_process = True
        logger.warning(
            "otel-workflow could not start its writer process (%s); writing in this process instead", why
        )

    def idle(self, seconds: float) -> bool:
        with self._lock:
            process = self._process
            if process is None:
                return self.local.idle(seconds)
            try:
                process.channel.send(wire.IDLE, {"seconds": seconds})
                return bool(_expect(process.channel, wire.KEEPS).header["keeps"])
            except wire.WireError:
                process.kill()
                self._process = None
                return False

    def release(self) -> None:
        with self._lock:
            self.local.release()
            process = self._process
            if process is None:
                return
            try:
                process.channel.send(wire.RELEASE)
                _expect(process.channel, wire.DONE)
            except wire.WireError:
                process.kill()
                self._process = None

    def close(self, *, kill: bool = False) -> None:
        """Stop the writer process (the store closes). With `kill`, or if a write still holds it (the
        writer thread hangs and the store gave up on it), kill it instead."""
        if not self._lock.acquire(blocking=not kill):
            process = self._process
            if process is not None:
                process.process.kill()  # the hanging write then finds the socket closed
            return
        try:
            process, self._process = self._process, None
            if process is not None:
                if kill:
                    process.kill()
                else:
                    process.stop()
        finally:
            self._lock.release()


def _send_write(
    channel: wire.Channel,
    header: dict[str, object],
    finished: Sequence[ConvertedSpans],
    rest: list[pa.Table | None],
) -> None:
    """WRITE: the spans, events and links of `finished` (packed as the C converter made them where it can,
    else as pyarrow tables), then `rest`."""
    if channel.memory_files and packable(finished):
        try:
            channel.send(wire.WRITE, header, rest, packed=functools.partial(pack_tables, finished))
            return
        except wire.CannotPack:
            pass  # no memory file to be had, or a string column too long for the C path
    batch = tables_of(finished) if finished else None
    spans = [None, None, None] if batch is None else [batch.spans, batch.events, batch.links]
    channel.send(wire.WRITE, header, [*spans, *rest])


def _commit_there(channel: wire.Channel) -> None:
    channel.send(wire.COMMIT)
    answer = channel.receive()
    if answer.kind == wire.COMMIT_FAILED:
        raise _CommitRefused(str(answer.header["message"]))
    if answer.kind != wire.COMMITTED:
        raise wire.WireError(f"expected COMMITTED, got message kind {answer.kind}")


def _drain(channel: wire.Channel) -> None:
    """After ABORT: read up to the write's end, so that the next conversation starts clean."""
    while channel.receive().kind not in (wire.RESULT, wire.RETRY, wire.FAILED):
        pass


def _expect(channel: wire.Channel, kind: int) -> wire.Message:
    message = channel.receive()
    if message.kind != kind:
        raise wire.WireError(f"expected message kind {kind}, got {message.kind}")
    return message


def _forget_after_fork(ref: weakref.ref[ProcessWriteSink]) -> None:
    sink = ref()
    if sink is None:
        return
    sink._lock = threading.Lock()
    process, sink._process = sink._process, None
    if process is not None:
        _inherited.append(process.process)
        process.channel.close()  # this process's copy of the socket only: the parent's stays open
    sink._restarts = 0
