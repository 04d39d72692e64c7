"""The writer process: the one holder of a store's DuckDB connection when the store writes through it.

Started by `writerprocess.WriterProcess` as `python -m otel_workflow.storage.writerchild`, in a
session of its own (a Ctrl-C meant for the application does not stop it before the application's
last write), with one end of a socket pair as its only way in. It runs `SpanWriteSink.write_rows`
for each WRITE (`writerwire`), asking the store before every COMMIT, so the store's writer thread
keeps deciding what still commits at shutdown. The application process converts spans to Arrow
and hands them over; the DuckDB client and its GIL work happen here.

When the store's end closes without a STOP (the application was killed), the live rows this process
wrote are marked interrupted at once, like a clean shutdown would, and the process ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Final

from otel_workflow.ingest.convert import ConvertedSpans, SpanBatch, SpanConverter
from otel_workflow.ingest.drops import one_line
from otel_workflow.ingest.logrows import LogRows
from otel_workflow.ingest.sink import Abandoned, RetryLater
from otel_workflow.storage import writerwire as wire
from otel_workflow.storage.database import Database
from otel_workflow.storage.write import SpanWriteSink

logger = logging.getLogger("otel_workflow")

_STOPPED_COMMIT: Final = "the store aborted the transaction"

# This process is the file's only user, so it can attach the file with a row group size of its own.
# Chosen from one measurement (DuckDB alone, 1M spans in 20,000-span cycles: 6.9 vs 11.9 us per span
# at the default 122,880) that later runs did not reproduce: 10.1 vs 9.4 us over 400,000 spans, and
# 59,300-59,900 vs 60,800-62,000 spans/s end to end without it (benchmarks/README.md).
ROW_GROUP_SIZE: Final = 65_536


class WriterChild:
    """One conversation partner of a store: opens the database at the first write."""

    def __init__(self, channel: wire.Channel, path: str, lock_timeout_s: float) -> None:
        self.channel = channel
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self._sink: SpanWriteSink | None = None
        self._rejected_logs = 0
        # Live rows written since the last final write: what to mark interrupted if the store vanishes.
        self._live_rows_pending = False

    def serve(self) -> None:
        self.channel.send(wire.HELLO, {"pid": os.getpid()})
        try:
            while self._answer(self.channel.receive()):
                pass
        except wire.WireError:
            self._store_vanished()

    def _answer(self, message: wire.Message) -> bool:
        """Answer one message; False once the store said STOP."""
        if message.kind == wire.WRITE:
            self._write(message)
        elif message.kind == wire.IDLE:
            keeps = self._sink.idle(float(message.header["seconds"])) if self._sink else False
            self.channel.send(wire.KEEPS, {"keeps": keeps})
        elif message.kind == wire.RELEASE:
            self._release()
            self.channel.send(wire.DONE)
        elif message.kind == wire.STOP:
            self._release()
            self.channel.send(wire.DONE)
            return False
        else:
            raise wire.WireError(f"unexpected message kind {message.kind} between writes")
        return True

    def _sink_for_writes(self) -> SpanWriteSink:
        if self._sink is None:
            # The application process made the file and its schema already; this opens it for writing.
            database = Database(
                self.path, read_only=False, lock_timeout_s=self.lock_timeout_s, row_group_size=ROW_GROUP_SIZE
            )
            self._sink = SpanWriteSink(database, SpanConverter())
            self._sink.count_rejected_logs = self._count_rejected_logs
        return self._sink

    def _count_rejected_logs(self, count: int) -> None:
        self._rejected_logs += count

    def _write(self, message: wire.Message) -> None:
        spans, events, links, live, log_table = message.tables
        finished = (
            [ConvertedSpans.of(SpanBatch(spans, events, links))]
            if spans is not None and events is not None and links is not None
            else []
        )
        logs = [LogRows(log_table)] if log_table is not None else []
        final = bool(message.header["final"])
        self._rejected_logs = 0
        try:
            sink = self._sink_for_writes()
            rejected = sink.write_rows(
                finished,
                live,
                final=final,
                forget=list(message.header["forget"]),
                commit=self._commit,
                logs=logs,
            )
        except wire.WireError:
            raise  # the store is gone: `serve` ends
        except RetryLater as exc:
            self.channel.send(wire.RETRY, {"message": str(exc)})
            return
        except Exception as exc:  # the store counts the batch as failed, as it would in-process
            logger.debug("otel-workflow writer process: write failed", exc_info=True)
            self.channel.send(wire.FAILED, {"message": one_line(exc)})
            return
        self._live_rows_pending = (self._live_rows_pending or live is not None) and not final
        self.channel.send(wire.RESULT, {"rejected": rejected, "rejected_logs": self._rejected_logs})

    def _commit(self, action: Callable[[], object]) -> None:
        self.channel.send(wire.READY)
        answer = self.channel.receive()
        if answer.kind == wire.ABORT:
            raise Abandoned(_STOPPED_COMMIT)
        if answer.kind != wire.COMMIT:
            raise wire.WireError(f"expected COMMIT or ABORT, got message kind {answer.kind}")
        try:
            action()
        except BaseException as exc:
            self.channel.send(wire.COMMIT_FAILED, {"message": one_line(exc)})
            raise
        self.channel.send(wire.COMMITTED)

    def _store_vanished(self) -> None:
        if self._sink is not None and self._live_rows_pending:
            try:
                self._sink.write_rows((), None, final=True, forget=(), commit=_commit_at_once)
            except Exception:
                logger.debug("otel-workflow writer process: could not mark live rows", exc_info=True)
        self._release()

    def _release(self) -> None:
        if self._sink is not None:
            self._sink.release()


def _commit_at_once(action: Callable[[], object]) -> None:
    action()  # nobody to ask: the store is gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel_workflow.storage.writerchild")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--lock-timeout", type=float, required=True)
    args = parser.parse_args(argv)
    channel = wire.Channel(socket.socket(fileno=args.fd))
    try:
        WriterChild(channel, args.path, args.lock_timeout).serve()
    except wire.WireError as exc:
        print(f"otel-workflow writer process: {exc}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
