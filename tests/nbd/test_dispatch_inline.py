"""Dispatcher.process runs a valid READ or WRITE inline, from its header's
fields; whatever the header, its reply equals the one that parse() and
validate() call for."""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from uzram.nbd import constants as C
from uzram.nbd.budget import Budget
from uzram.nbd.channel import Channel
from uzram.nbd.dispatch import Dispatcher
from uzram.nbd.handshake import transmission_flags
from uzram.nbd.proto import REQUEST_SIZE, Negotiated, ProtocolError, Transmission, read_chunk_header, simple_reply

SIZE = 1 << 16
_REQ = struct.Struct(">IHHQQI")


class Export:
    """Reads give a pattern; writes are recorded."""

    name = ""
    description = ""
    ordering_granularity = 1

    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only
        self.writes: list[tuple[int, bytes, bool]] = []

    def size(self) -> int:
        return SIZE

    def read(self, offset: int, length: int) -> list[bytes]:
        return [bytes((offset + i) & 0xFF for i in range(length))]

    def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self.writes.append((offset, bytes(data), fua))


def expected(tx: Transmission, export: Export, cmd: int, flags: int, cookie: int, offset: int,
             length: int) -> tuple[list[bytes], list[tuple[int, bytes, bool]]]:
    err = tx.validate(cmd, flags, offset, length)
    if err:
        return [tx.error_reply(cookie, cmd, err)], []
    if cmd == C.CMD_READ:
        head = read_chunk_header(cookie, offset, length) if tx.structured else simple_reply(cookie)
        return [head, *export.read(offset, length)], []
    return [simple_reply(cookie)], [(offset, bytes(length), bool(flags & C.CMD_FLAG_FUA))]


@settings(max_examples=300, deadline=None)
@given(read_only=st.booleans(), structured=st.booleans(), cmd=st.sampled_from([C.CMD_READ, C.CMD_WRITE]),
       flags=st.sampled_from([0, C.CMD_FLAG_FUA, C.CMD_FLAG_NO_HOLE, C.CMD_FLAG_DF, 0x8000]),
       cookie=st.integers(0, (1 << 64) - 1), offset=st.integers(0, SIZE + 8),
       length=st.sampled_from([0, 1, 512, 4096, SIZE]))
def test_inline_reply_equals_the_validated_one(read_only: bool, structured: bool, cmd: int, flags: int,
                                               cookie: int, offset: int, length: int) -> None:
    export: Any = Export(read_only)
    neg = Negotiated(export=export, name="", size=SIZE, transmission_flags=transmission_flags(read_only),
                     structured_replies=structured, meta_context_id=None, no_zeroes=True)
    tx = Transmission(neg)
    payload = length if cmd == C.CMD_WRITE else 0
    ring = mmap.mmap(-1, REQUEST_SIZE + SIZE)
    _REQ.pack_into(ring, 0, C.REQUEST_MAGIC, flags, cmd, cookie, offset, length)
    end = REQUEST_SIZE + payload
    want, want_writes = expected(tx, Export(read_only), cmd, flags, cookie, offset, length)
    got: list[Any] = []

    def check(disp: Dispatcher, chan: Channel, view: memoryview) -> None:
        pos = disp.process(ring, view, 0, end)
        assert pos == end and disp.skip == 0
        got.extend(bytes(x) for x in chan.out)
        assert chan.out_bytes == sum(map(len, got))
        chan.out.clear()

    dispatch(ring, tx, export, check)
    assert got == want
    assert export.writes == want_writes


def dispatch(ring: mmap.mmap, tx: Transmission, export: Any,
             check: Callable[[Dispatcher, Channel, memoryview], None]) -> None:
    """Run ``check`` with a Dispatcher over ``ring`` and a channel to a socket pair."""
    async def main() -> None:
        a, b = socket.socketpair()
        chan = Channel(trio.socket.from_stdlib_socket(a), Budget(1 << 30), 60.0)
        view = memoryview(ring)
        try:
            async with trio.open_nursery() as nursery:
                check(Dispatcher(chan, tx, export, nursery, max_outstanding=16, peers=()), chan, view)
        finally:
            view.release()
            chan.close()
            b.close()

    trio.run(main)


def test_bad_magic_still_ends_the_connection() -> None:
    export: Any = Export(False)
    neg = Negotiated(export=export, name="", size=SIZE, transmission_flags=transmission_flags(False),
                     structured_replies=True, meta_context_id=None, no_zeroes=True)
    tx = Transmission(neg)
    ring = mmap.mmap(-1, 4096)
    _REQ.pack_into(ring, 0, 0x12345678, 0, C.CMD_READ, 1, 0, 512)

    def check(disp: Dispatcher, chan: Channel, view: memoryview) -> None:
        try:
            disp.process(ring, view, 0, REQUEST_SIZE)
        except ProtocolError:
            return
        raise AssertionError("a bad magic was accepted")

    dispatch(ring, tx, export, check)
