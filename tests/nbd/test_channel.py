"""The reply queue's send: a partial send resumes where it stopped."""

from __future__ import annotations

import array
import socket
from collections.abc import Callable

import trio

from uzram.nbd.budget import Budget
from uzram.nbd.channel import Channel, _after


def test_after_skips_whole_and_partial_buffers() -> None:
    bufs: list[object] = [b"abcd", memoryview(b"efgh"), bytearray(b"ij")]
    assert _after(list(bufs), 0) == bufs
    rest = _after(list(bufs), 5)
    assert [bytes(b) for b in rest] == [b"fgh", b"ij"] 
    assert _after(list(bufs), 10) == []


def test_after_counts_bytes_of_wide_views() -> None:
    wide = memoryview(array.array("H", [1, 2, 3]))
    rest = _after([wide, b"z"], 4)
    assert [bytes(b) for b in rest] == [bytes(wide)[4:], b"z"]


REPLIES = [bytes([i]) * 4096 for i in range(256)]   # 1 MiB: more than the socket buffer


def send_big_queue(before_flush: Callable[[Channel], None]) -> None:
    """Queue REPLIES on a channel whose socket buffer is 64 KiB, run
    ``before_flush`` on it, then flush while a peer reads: everything
    arrives, in order, and nothing stays queued or charged."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    got = bytearray()

    async def main() -> None:
        chan = Channel(trio.socket.from_stdlib_socket(a), Budget(1 << 30), 60.0)
        for r in REPLIES:
            chan.queue(r)
        before_flush(chan)

        async def read_all() -> None:
            peer = trio.socket.from_stdlib_socket(b)
            while len(got) < 4096 * 256:
                got.extend(await peer.recv(1 << 16))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await chan.flush()
        assert chan.out == [] and chan.out_bytes == 0 and chan.budget.used == 0
        assert not chan.broken
        chan.close()

    trio.run(main)
    b.close()
    assert bytes(got) == b"".join(REPLIES)


def test_queue_larger_than_the_socket_buffer_arrives_whole() -> None:
    """The first sendmsg is partial; the rest follows, in order."""
    send_big_queue(lambda chan: None)


def test_send_now_sends_the_queue_in_one_call() -> None:
    a, b = socket.socketpair()

    async def main() -> None:
        chan = Channel(trio.socket.from_stdlib_socket(a), Budget(1 << 30), 60.0)
        chan.queue(b"head")
        chan.out.append(memoryview(b"data"))
        chan.charge(4)
        assert chan.send_now()
        assert chan.out == [] and chan.out_bytes == 0 and chan.budget.used == 0
        chan.queue(b"later")
        chan.sending = True          # another task holds the send path
        assert not chan.send_now()
        assert chan.out == [b"later"]
        chan.sending = False
        assert chan.send_now()
        chan.close()

    trio.run(main)
    assert b.recv(64) == b"headdatalater"
    b.close()


def test_send_now_leaves_what_did_not_fit_queued() -> None:
    """A partial send: the rest stays queued, in order, and flush() sends it."""
    def partial(chan: Channel) -> None:
        assert not chan.send_now()
        assert 0 < chan.out_bytes < 4096 * 256
        assert chan.out_bytes == sum(len(x) for x in chan.out) == chan.budget.used

    send_big_queue(partial)