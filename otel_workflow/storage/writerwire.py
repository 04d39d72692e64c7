"""The messages between a store and its writer process (`writerprocess`, `writerchild`).

One stream socket (a `socketpair`, never a path or a port) carries frames of a kind byte, a
payload length and the payload: a small JSON header, then the Arrow tables it names as Arrow IPC
streams. Both ends are this package in two processes of one user; the bounds guard against a bug
on the other end, not against an attacker.

A write is a short conversation, so that the writer thread of the application keeps deciding
whether a transaction may still commit (`BatchSink.write`'s `commit`):

    store  -> WRITE (tables, final, forget)
    writer -> READY                 the transaction is prepared
    store  -> COMMIT | ABORT        COMMIT: writer -> COMMITTED, or COMMIT_FAILED
    ...                             (READY again for each half of a batch the database refused)
    writer -> RESULT | RETRY | FAILED
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa

# store -> writer
WRITE: Final = 1
COMMIT: Final = 2
ABORT: Final = 3
IDLE: Final = 4
RELEASE: Final = 5
STOP: Final = 6
# writer -> store
HELLO: Final = 10
READY: Final = 11
COMMITTED: Final = 12
COMMIT_FAILED: Final = 13
RESULT: Final = 14
RETRY: Final = 15
FAILED: Final = 16
KEEPS: Final = 17
DONE: Final = 18

_FRAME: Final = struct.Struct("<BQ")
_HEADER: Final = struct.Struct("<I")
# A write cycle of the default 20,000 spans is about 10 MB of Arrow; the bound is far above any
# cycle the writer makes and far below what would exhaust memory on a garbled length.
MAX_FRAME_BYTES: Final = 1 << 31


class WireError(Exception):
    """The other end sent something this end cannot read, or went away (EOF)."""


@dataclass(slots=True)
class Message:
    kind: int
    header: dict[str, Any] = field(default_factory=dict)
    # The tables of the header's `tables` list, in order; None where the sender had none.
    tables: list[pa.Table | None] = field(default_factory=list)


class Channel:
    """Frames over one connected stream socket. Not thread-safe: one conversation at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def send(
        self, kind: int, header: dict[str, Any] | None = None, tables: Sequence[pa.Table | None] = ()
    ) -> None:
        encoded = [None if table is None else _ipc_bytes(table) for table in tables]
        head = dict(header or {})
        head["tables"] = [-1 if data is None else data.size for data in encoded]
        head_bytes = json.dumps(head, separators=(",", ":")).encode()
        size = _HEADER.size + len(head_bytes) + sum(data.size for data in encoded if data is not None)
        try:
            # sendall releases the GIL while the kernel takes the bytes; the Arrow buffers go as they are.
            self.socket.sendall(_FRAME.pack(kind, size) + _HEADER.pack(len(head_bytes)) + head_bytes)
            for data in encoded:
                if data is not None and data.size:
                    self.socket.sendall(memoryview(data))
        except OSError as exc:
            raise WireError(f"the other end is gone: {exc}") from exc

    def receive(self) -> Message:
        kind, size = _FRAME.unpack(self._exactly(_FRAME.size))
        if size > MAX_FRAME_BYTES or size < _HEADER.size:
            raise WireError(f"a frame of {size} bytes (kind {kind}) is outside the bounds of this protocol")
        payload = self._exactly(size)
        (head_size,) = _HEADER.unpack_from(payload)
        if head_size > size - _HEADER.size:
            raise WireError("a frame's header is longer than the frame")
        try:
            header = json.loads(bytes(payload[_HEADER.size : _HEADER.size + head_size]))
            sizes = header.pop("tables")
        except (ValueError, KeyError, TypeError) as exc:
            raise WireError(f"a frame's header is not readable: {exc}") from exc
        buffer = pa.py_buffer(payload)
        offset = _HEADER.size + head_size
        tables: list[pa.Table | None] = []
        for table_size in sizes:
            if table_size < 0:
                tables.append(None)
                continue
            if offset + table_size > size:
                raise WireError("a frame's tables are longer than the frame")
            # Zero-copy: the table's buffers are slices of the received payload.
            tables.append(pa.ipc.open_stream(buffer.slice(offset, table_size)).read_all())
            offset += table_size
        return Message(kind, header, tables)

    def _exactly(self, size: int) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            try:
                received = self.socket.recv_into(view[got:])
            except OSError as exc:
                raise WireError(f"the other end is gone: {exc}") from exc
            if not received:
                raise WireError("the other end closed the connection")
            got += received
        return data

    def close(self) -> None:
        self.socket.close()


def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue()
