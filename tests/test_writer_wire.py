"""The frames between a store and its writer process (`storage.writerwire`), over a real socket pair:
tables inline and in sealed memory files, and frames the other end got wrong."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from test_native_rows import record, sdk_span_plans

from otel_workflow.ingest import convert
from otel_workflow.ingest.convert import ConvertedSpans, SpanConverter, tables_of
from otel_workflow.storage import writerprocess
from otel_workflow.storage import writerwire as wire

needs_memory_files = pytest.mark.skipif(not wire.MEMORY_FILES, reason="no memory files on this platform")


@pytest.fixture
def pair() -> Iterator[tuple[wire.Channel, socket.socket]]:
    """A receiving channel and the raw socket of the other end."""
    ours, theirs = socket.socketpair()
    channel = wire.Channel(ours)
    try:
        yield channel, theirs
    finally:
        channel.close()
        theirs.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tables(rows: int) -> list[pa.Table | None]:
    spans = pa.table({"span_id": [f"{i:016x}" for i in range(rows)], "n": list(range(rows))})
    return [spans, None, pa.table({"name": pa.array([], pa.string())}), spans.slice(0, 3)]


def _send_in_thread(channel: wire.Channel, tables: list[pa.Table | None]) -> threading.Thread:
    # A frame bigger than the socket's buffer only goes while the other end reads it.
    sender = threading.Thread(target=channel.send, args=(wire.WRITE, {"final": True}, tables))
    sender.start()
    return sender


@pytest.mark.parametrize("memory_files", [True, False], ids=["memory-file", "inline"])
def test_tables_arrive_as_sent(memory_files: bool, pair: tuple[wire.Channel, socket.socket]) -> None:
    if memory_files and not wire.MEMORY_FILES:
        pytest.skip("no memory files on this platform")
    receiver, theirs = pair
    sender = wire.Channel(theirs, memory_files=memory_files)
    tables = _tables(200_000)  # several MB: more than a socket buffer holds
    before = _open_descriptors()
    if memory_files:
        # Sent before anything reads: the frame itself is small, the tables are in the memory file (were
        # they on the socket, the send would wait for a reader and time out).
        theirs.settimeout(10)
        sender.send(wire.WRITE, {"final": True}, tables)
        message = receiver.receive()
    else:
        thread = _send_in_thread(sender, tables)
        message = receiver.receive()
        thread.join()
    assert message.kind == wire.WRITE
    assert message.header == {"final": True}
    assert len(message.tables) == len(tables)
    for got, sent in zip(message.tables, tables, strict=True):
        assert (got is None) == (sent is None)
        if got is not None and sent is not None:
            assert got.equals(sent)
    # The sender's descriptor is closed once sent, the receiver's once mapped; the mapping (and the
    # descriptor Python's mmap keeps of it) goes with the last table read from it.
    del message, got, sent
    assert _open_descriptors() == before


def test_small_messages_go_without_a_memory_file(pair: tuple[wire.Channel, socket.socket]) -> None:
    receiver, theirs = pair
    wire.Channel(theirs).send(wire.KEEPS, {"keeps": False})
    message = receiver.receive()
    assert (message.kind, message.header, message.tables) == (wire.KEEPS, {"keeps": False}, [])


def _frame(kind: int, header: dict[str, object]) -> bytes:
    head = json.dumps(header).encode()
    return wire._FRAME.pack(kind, wire._HEADER.size + len(head)) + wire._HEADER.pack(len(head)) + head


def _memory_file(data: bytes, *, seal: bool) -> int:
    descriptor = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.write(descriptor, data)
    if seal:
        fcntl.fcntl(descriptor, fcntl.F_ADD_SEALS, wire._SEALS)
    return descriptor


def _send_with(theirs: socket.socket, frame: bytes, descriptor: int) -> None:
    try:
        socket.send_fds(theirs, [frame], [descriptor])
    finally:
        os.close(descriptor)


@needs_memory_files
def test_a_frame_that_announces_a_memory_file_without_one_is_refused(
    pair: tuple[wire.Channel, socket.socket],
) -> None:
    receiver, theirs = pair
    theirs.sendall(_frame(wire.WRITE, {"tables": [10], "memory_file": True}))
    with pytest.raises(wire.WireError, match="0 descriptors"):
        receiver.receive()


@needs_memory_files
def test_a_descriptor_the_header_does_not_announce_is_refused_and_closed(
    pair: tuple[wire.Channel, socket.socket],
) -> None:
    receiver, theirs = pair
    before = _open_descriptors()
    _send_with(theirs, _frame(wire.KEEPS, {"tables": [], "keeps": True}), _memory_file(b"x", seal=True))
    with pytest.raises(wire.WireError, match="1 descriptors"):
        receiver.receive()
    assert _open_descriptors() == before


@needs_memory_files
def test_an_unsealed_memory_file_is_refused(pair: tuple[wire.Channel, socket.socket]) -> None:
    # Unsealed, the sender could shrink it under the mapping: reading it would then kill the reader.
    receiver, theirs = pair
    data = wire._ipc_bytes(pa.table({"n": [1, 2, 3]})).to_pybytes()
    frame = _frame(wire.WRITE, {"tables": [len(data)], "memory_file": True})
    _send_with(theirs, frame, _memory_file(data, seal=False))
    with pytest.raises(wire.WireError, match="not sealed"):
        receiver.receive()


@needs_memory_files
def test_a_memory_file_of_another_size_than_announced_is_refused(
    pair: tuple[wire.Channel, socket.socket],
) -> None:
    receiver, theirs = pair
    data = wire._ipc_bytes(pa.table({"n": [1, 2, 3]})).to_pybytes()
    frame = _frame(wire.WRITE, {"tables": [len(data) + 100], "memory_file": True})
    _send_with(theirs, frame, _memory_file(data, seal=True))
    with pytest.raises(wire.WireError, match="longer than the frame"):
        receiver.receive()


@needs_memory_files
def test_a_descriptor_that_is_not_a_memory_file_is_refused(pair: tuple[wire.Channel, socket.socket]) -> None:
    receiver, theirs = pair
    frame = _frame(wire.WRITE, {"tables": [8], "memory_file": True})
    reading, writing = os.pipe()
    os.close(writing)
    _send_with(theirs, frame, reading)
    with pytest.raises(wire.WireError, match="not a memory file"):
        receiver.receive()


def test_the_end_of_the_connection_is_a_wire_error(pair: tuple[wire.Channel, socket.socket]) -> None:
    receiver, theirs = pair
    theirs.close()
    with pytest.raises(wire.WireError, match="closed"):
        receiver.receive()


# -- tables packed as the C converter made them --------------------------------------------------------

needs_packing = pytest.mark.skipif(
    not wire.MEMORY_FILES or convert._spanrows is None, reason="no memory files or no C converter here"
)


def _parts(spans: list[ReadableSpan], cut: int, *, native: bool = True) -> list[ConvertedSpans]:
    converter = SpanConverter(native=native)
    return [converter.convert(spans[first : first + cut]) for first in range(0, len(spans), cut)]


def _assert_tables_of(parts: list[ConvertedSpans], received: list[pa.Table | None]) -> None:
    expected = tables_of(parts)  # imported only now: packing left the converter's rows in place
    for got, want in zip(received, (expected.spans, expected.events, expected.links), strict=True):
        assert got is not None
        assert got.equals(want.combine_chunks())


@needs_packing
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(sdk_span_plans(), min_size=1, max_size=12), cut=st.integers(min_value=1, max_value=11))
def test_packed_tables_arrive_as_the_converter_made_them(plans: list[dict[str, Any]], cut: int) -> None:
    # Parts of any length: the validity and boolean bits of one are packed after another's at any bit.
    parts = _parts(record(plans, {"service.name": "svc"}), cut)
    ours, theirs = socket.socketpair()
    try:
        wire.Channel(theirs).send(
            wire.WRITE, {"final": False}, [None], packed=functools.partial(convert.pack_tables, parts)
        )
        message = wire.Channel(ours).receive()
    finally:
        ours.close()
        theirs.close()
    assert message.header == {"final": False}
    assert message.tables[3] is None
    _assert_tables_of(parts, message.tables[:3])


@needs_packing
def test_rows_converted_in_python_go_as_tables_instead(pair: tuple[wire.Channel, socket.socket]) -> None:
    receiver, theirs = pair
    parts = _parts(record([{**_PLAN, "name": f"step {n}"} for n in range(20)], {}), 7, native=False)
    with pytest.raises(wire.CannotPack):
        wire.Channel(theirs).send(wire.WRITE, {}, [], packed=functools.partial(convert.pack_tables, parts))
    writerprocess._send_write(wire.Channel(theirs), {}, parts, [None, None])
    message = receiver.receive()
    _assert_tables_of(parts, message.tables[:3])


_PLAN: dict[str, Any] = {
    "name": "step",
    "kind": SpanKind.INTERNAL,
    "attributes": {"a": 1},
    "events": [("event", {"b": "c"})],
    "links": 1,
    "status": None,
    "description": None,
    "child": False,
}


def _packer(data: bytes, description: object) -> wire.Packer:
    def pack(descriptor: int) -> Any:
        os.write(descriptor, data)
        return description

    return pack


_ONE_NUMBER = pa.schema([pa.field("n", pa.int64())])
_ONE_TEXT = pa.schema([pa.field("s", pa.string())])


@needs_memory_files
@pytest.mark.parametrize(
    ("data", "description", "why"),
    [
        # A buffer past the end of the file.
        (b"\0" * 8, [(_ONE_NUMBER, (1, ((0, ((0, 0), (0, 4096))),)))], "a buffer at 0 of 4096 bytes"),
        # String offsets past the string bytes.
        (b"\0\0\0\0\x64\0\0\0abc", [(_ONE_TEXT, (1, ((0, ((0, 0), (0, 8), (8, 3))),)))], "offset"),
        # Fewer columns than the schema has.
        (b"\0" * 8, [(_ONE_NUMBER, (1, ()))], "0 columns"),
    ],
    ids=["past-the-file", "bad-offsets", "missing-column"],
)
def test_a_packed_table_that_does_not_hold_together_is_refused(
    pair: tuple[wire.Channel, socket.socket], data: bytes, description: object, why: str
) -> None:
    receiver, theirs = pair
    wire.Channel(theirs).send(wire.WRITE, {}, [], packed=_packer(data, description))
    with pytest.raises(wire.WireError, match=why):
        receiver.receive()


@needs_memory_files
def test_packed_tables_without_a_memory_file_are_refused(pair: tuple[wire.Channel, socket.socket]) -> None:
    receiver, theirs = pair
    theirs.sendall(_frame(wire.WRITE, {"tables": [], "packed": [{"rows": 0}]}))
    with pytest.raises(wire.WireError, match="without a memory file"):
        receiver.receive()
