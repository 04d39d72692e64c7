"""The messages between a store and its writer process (`writerprocess`, `writerchild`).

One stream socket (a `socketpair`, never a path or a port) carries frames of a kind byte, a
payload length and the payload: a small JSON header, then the Arrow tables it names as Arrow IPC
streams. Where the platform has memory files (Linux), a frame's tables go instead in one sealed
memory file whose descriptor rides with the frame (`MEMORY_FILES`): the application writes a write
cycle in one call and the writer process reads the tables where they lie. Through the socket, the
sender's `sendall` took the GIL back after every socket buffer's worth (about 200 KB of the cycle's
~1 KB per span), and each time waited up to the interpreter's switch interval (5 ms) behind the
application's threads. The spans, events and links of a cycle are not even handed to pyarrow in
the application: the C converter writes its columns into the file itself (`Packer`,
`convert.pack_tables`), letting go of the GIL once per table where pyarrow's import and IPC writer
did dozens of times, and the writer process makes Arrow arrays over the mapped columns (validated in
full before DuckDB reads them). Both ends are this package in two processes of one user; the bounds,
seals and validation guard against a bug on the other end, not against an attacker.

A write is a short conversation, so that the writer thread of the application keeps deciding
whether a transaction may still commit (`BatchSink.write`'s `commit`):

    store  -> WRITE (tables, final, forget)
    writer -> READY                 the transaction is prepared
    store  -> COMMIT | ABORT        COMMIT: writer -> COMMITTED, or COMMIT_FAILED
    ...                             (READY again for each half of a batch the database refused)
    writer -> RESULT | RETRY | FAILED
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa

try:
    import fcntl
except ImportError:  # Windows: no memory files, the tables go through the socket
    fcntl = None  # type: ignore[assignment]

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

# Whether this platform can send a frame's tables in a memory file (`Channel`).
MEMORY_FILES: Final = (
    fcntl is not None
    and hasattr(os, "memfd_create")
    and hasattr(socket, "send_fds")
    and hasattr(socket, "recv_fds")
    and hasattr(fcntl, "F_ADD_SEALS")
)
# Sealed before the descriptor is sent: the file can no longer change size or content, so the
# receiver's mapping cannot fault on a file shrunk under it (SIGBUS) nor see the tables change.
_SEALS: Final = (
    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL if MEMORY_FILES else 0
)


class WireError(Exception):
    """The other end sent something this end cannot read, or went away (EOF)."""


class CannotPack(Exception):
    """`Channel.send`'s packer could not write its tables (nothing was sent): send them as tables."""


# Appends tables to a memory file (its descriptor) and says what it wrote: each table's schema and its
# columns' places there (`convert.PackedColumns`); None if it cannot (the file is then discarded).
Packer = Callable[[int], Sequence[tuple[pa.Schema, tuple[int, Any]]] | None]


@dataclass(slots=True)
class Message:
    kind: int
    header: dict[str, Any] = field(default_factory=dict)
    # The tables of the header's `tables` list, in order; None where the sender had none.
    tables: list[pa.Table | None] = field(default_factory=list)


class Channel:
    """Frames over one connected stream socket. Not thread-safe: one conversation at a time.

    `memory_files` says whether this end sends tables in memory files; it receives them either way.
    """

    def __init__(self, sock: socket.socket, *, memory_files: bool = MEMORY_FILES) -> None:
        self.socket = sock
        self.memory_files = memory_files and MEMORY_FILES

    def send(
        self,
        kind: int,
        header: dict[str, Any] | None = None,
        tables: Sequence[pa.Table | None] = (),
        *,
        packed: Packer | None = None,
    ) -> None:
        """Send a frame; the receiver's `Message.tables` are the tables `packed` wrote, then `tables`.

        `packed` (only where `memory_files`) writes tables into the frame's memory file itself; should
        it return None, nothing is sent and `CannotPack` is raised: send them as `tables` instead.
        """
        encoded = [None if table is None else _ipc_bytes(table) for table in tables]
        present = [data for data in encoded if data is not None and data.size]
        head = dict(header or {})
        head["tables"] = [-1 if data is None else data.size for data in encoded]
        memory_file = None
        try:
            if packed is not None or (self.memory_files and present):
                if not self.memory_files:
                    raise ValueError("packed tables need memory files")
                memory_file = _memory_file(present, seal=packed is None)
                if memory_file is None and packed is not None:
                    raise CannotPack("no memory file could be made")
            if memory_file is not None:
                head["memory_file"] = True
                present = []  # the tables are in the file
                if packed is not None:
                    head["packed"] = _packed_in(memory_file, packed)
            head_bytes = json.dumps(head, separators=(",", ":")).encode()
            size = _HEADER.size + len(head_bytes) + sum(data.size for data in present)
            start = _FRAME.pack(kind, size) + _HEADER.pack(len(head_bytes)) + head_bytes
            try:
                if memory_file is None:
                    self.socket.sendall(start)
                else:
                    sent = socket.send_fds(self.socket, [start], [memory_file])
                    self.socket.sendall(start[sent:])
                # sendall releases the GIL while the kernel takes the bytes; the Arrow buffers go as they are.
                for data in present:
                    self.socket.sendall(memoryview(data))
            except OSError as exc:
                raise WireError(f"the other end is gone: {exc}") from exc
        finally:
            if memory_file is not None:
                os.close(memory_file)  # the receiver holds its own descriptor from here on

    def receive(self) -> Message:
        head, descriptors = self._frame_start()
        try:
            return self._rest_of_frame(head, descriptors)
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def _rest_of_frame(self, head: bytes, descriptors: list[int]) -> Message:
        kind, size = _FRAME.unpack(head)
        if size > MAX_FRAME_BYTES or size < _HEADER.size:
            raise WireError(f"a frame of {size} bytes (kind {kind}) is outside the bounds of this protocol")
        payload = self._exactly(size)
        (head_size,) = _HEADER.unpack_from(payload)
        if head_size > size - _HEADER.size:
            raise WireError("a frame's header is longer than the frame")
        try:
            header = json.loads(bytes(payload[_HEADER.size : _HEADER.size + head_size]))
            sizes = [int(table_size) for table_size in header.pop("tables")]
            in_memory_file = header.pop("memory_file", False) is True
            packed = header.pop("packed", [])
            if not isinstance(packed, list):
                raise TypeError("packed tables are not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise WireError(f"a frame's header is not readable: {exc}") from exc
        if in_memory_file != bool(descriptors) or len(descriptors) > 1:
            raise WireError(f"a frame came with {len(descriptors)} descriptors, not what its header says")
        if packed and not in_memory_file:
            raise WireError("a frame's header names packed tables without a memory file")
        if in_memory_file:
            buffer = _mapped(descriptors[0])
            offset = 0
        else:
            buffer = pa.py_buffer(payload)
            offset = _HEADER.size + head_size
        tables: list[pa.Table | None] = [_unpacked(buffer, description) for description in packed]
        for table_size in sizes:
            if table_size < 0:
                tables.append(None)
                continue
            if offset + table_size > buffer.size:
                raise WireError("a frame's tables are longer than the frame")
            # Zero-copy: the table's buffers are slices of the received payload or of the mapped file.
            tables.append(pa.ipc.open_stream(buffer.slice(offset, table_size)).read_all())
            offset += table_size
        return Message(kind, header, tables)

    def _frame_start(self) -> tuple[bytes, list[int]]:
        """A frame's kind and length, and the descriptors that came with them."""
        if not MEMORY_FILES:
            return bytes(self._exactly(_FRAME.size)), []
        head = b""
        descriptors: list[int] = []
        while len(head) < _FRAME.size:
            try:
                data, received, flags, _ = socket.recv_fds(self.socket, _FRAME.size - len(head), 1)
            except OSError as exc:
                raise WireError(f"the other end is gone: {exc}") from exc
            descriptors += received
            if flags & socket.MSG_CTRUNC or not data:
                for descriptor in descriptors:
                    os.close(descriptor)
                raise WireError(
                    "a frame came with more descriptors than one"
                    if data
                    else "the other end closed the connection"
                )
            head += data
        return head, descriptors

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


def _memory_file(buffers: Sequence[pa.Buffer], *, seal: bool) -> int | None:
    """A memory file holding `buffers` one after the other, sealed if `seal` (else whoever writes the rest
    seals it); None if one cannot be made now (out of memory or descriptors: the tables then go through
    the socket)."""
    try:
        descriptor = os.memfd_create("otel-workflow-write", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        views = [memoryview(buffer) for buffer in buffers]
        while views:
            # One call for the whole cycle, without the GIL; a short write goes on where it stopped.
            written = os.writev(descriptor, views)
            while views and written >= views[0].nbytes:
                written -= views[0].nbytes
                views.pop(0)
            if views:
                views[0] = views[0][written:]
        if seal:
            fcntl.fcntl(descriptor, fcntl.F_ADD_SEALS, _SEALS)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _mapped(descriptor: int) -> pa.Buffer:
    """The memory file of a frame, mapped read-only, once it is sealed (`_rest_of_frame` and `_unpacked`
    check that what the header names lies within it)."""
    try:
        seals = fcntl.fcntl(descriptor, fcntl.F_GET_SEALS)
        file_size = os.fstat(descriptor).st_size
    except OSError as exc:
        raise WireError(f"a frame's descriptor is not a memory file: {exc}") from exc
    if seals & _SEALS != _SEALS:
        raise WireError("a frame's memory file is not sealed")
    if file_size == 0 or file_size > MAX_FRAME_BYTES:
        raise WireError(f"a frame's memory file holds {file_size} bytes")
    # The mapping outlives the descriptor (closed by `receive`); the tables keep it alive.
    return pa.py_buffer(mmap.mmap(descriptor, file_size, prot=mmap.PROT_READ))


def _packed_in(descriptor: int, packer: Packer) -> list[dict[str, Any]]:
    """Let `packer` append its tables to the memory file, seal it, and describe them for the header."""
    try:
        tables = packer(descriptor)
        if tables is not None:
            fcntl.fcntl(descriptor, fcntl.F_ADD_SEALS, _SEALS)
    except OSError as exc:  # out of memory for the file: the tables can still go otherwise
        raise CannotPack(f"the tables could not be written: {exc}") from exc
    if tables is None:
        raise CannotPack("the tables cannot be packed")
    return [
        {"schema": _schema_text(schema), "rows": rows, "columns": columns}
        for schema, (rows, columns) in tables
    ]


_schema_texts: dict[pa.Schema, str] = {}


def _schema_text(schema: pa.Schema) -> str:
    # Serialised once per schema: a pyarrow call lets go of the GIL, and taking it back can wait.
    text = _schema_texts.get(schema)
    if text is None:
        text = _schema_texts[schema] = base64.b64encode(schema.serialize().to_pybytes()).decode()
    return text


def _unpacked(buffer: pa.Buffer, description: Any) -> pa.Table:
    """A packed table, its arrays over the mapped file (checked: a bad extent or column is a WireError)."""
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(description["schema"], validate=True)))
        rows = int(description["rows"])
        columns = description["columns"]
        if len(columns) != len(schema) or rows < 0:
            raise ValueError(f"{len(columns)} columns of {rows} rows for a schema of {len(schema)}")
        arrays = []
        for field, (null_count, extents) in zip(schema, columns, strict=True):
            buffers: list[pa.Buffer | None] = []
            for index, extent in enumerate(extents):
                offset, length = (int(value) for value in extent)
                if offset < 0 or length < 0 or offset + length > buffer.size:
                    raise ValueError(f"a buffer at {offset} of {length} bytes, in a file of {buffer.size}")
                buffers.append(None if index == 0 and length == 0 else buffer.slice(offset, length))
            array = pa.Array.from_buffers(field.type, rows, buffers, null_count=int(null_count))
            array.validate(full=True)  # offsets within their bytes, UTF-8: DuckDB reads them as they are
            arrays.append(array)
        return pa.Table.from_arrays(arrays, schema=schema)
    except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        raise WireError(f"a frame's packed table is not readable: {exc}") from exc


def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue()
