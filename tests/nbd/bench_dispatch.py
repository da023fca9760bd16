"""Micro-benchmark of the request hot path: parsing and dispatching a ring
full of requests (:meth:`uzram.nbd.dispatch.Dispatcher.process`) against a
trivial export, without sockets, in CPU time per request.  A second table
adds the replies' send: batches of ``--qd`` requests, each processed and
answered with :meth:`uzram.nbd.channel.Channel.flush` on a UNIX socket
pair whose peer is drained outside the timed part (so no send waits and no
peer is woken, unlike under a real client).

    .venv/bin/python -m tests.nbd.bench_dispatch [--requests 5000] [--repeat 150] [--qd 16]

Much steadier than fio on a shared machine; compare two trees back to back.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import mmap
import socket
import struct
import time
from typing import Any

import trio

from uzram.nbd import constants as C
from uzram.nbd.budget import Budget
from uzram.nbd.channel import Channel
from uzram.nbd.dispatch import Dispatcher
from uzram.nbd.handshake import transmission_flags
from uzram.nbd.proto import REQUEST_SIZE, Negotiated, Transmission

SIZE = 1 << 30
_REQ = struct.Struct(">IHHQQI")


class NullExport:
    """Answers at once: READs with one shared buffer, WRITEs by dropping them."""

    name = ""
    description = ""
    read_only = False
    ordering_granularity = 4096

    def __init__(self) -> None:
        self._bufs: dict[int, list[bytes]] = {}

    def size(self) -> int:
        return SIZE

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    def read(self, offset: int, length: int) -> list[bytes]:
        bufs = self._bufs.get(length)
        if bufs is None:
            bufs = self._bufs[length] = [bytes(length)]
        return bufs

    def write(self, offset: int, data: memoryview, fua: bool) -> None:
        return None


def fill_ring(cmd: int, bs: int, n: int) -> tuple[mmap.mmap, int]:
    per = REQUEST_SIZE + (bs if cmd == C.CMD_WRITE else 0)
    ring = mmap.mmap(-1, per * n)
    for i in range(n):
        offset = (i * 7919 * bs) % (SIZE - bs) // 4096 * 4096
        _REQ.pack_into(ring, i * per, C.REQUEST_MAGIC, 0, cmd, i, offset, bs)
    return ring, per * n


async def run(cmd: int, bs: int, n: int, repeat: int) -> float:
    """Best CPU time per request over ``repeat`` passes."""
    export: Any = NullExport()
    neg = Negotiated(export=export, name="", size=SIZE, transmission_flags=transmission_flags(False),
                     structured_replies=False, meta_context_id=None, no_zeroes=True)
    a, b = socket.socketpair()
    budget = Budget(1 << 40)
    chan = Channel(trio.socket.from_stdlib_socket(a), budget, 60.0)
    ring, end = fill_ring(cmd, bs, n)
    view = memoryview(ring)
    best = float("inf")
    try:
        async with trio.open_nursery() as nursery:
            disp = Dispatcher(chan, Transmission(neg), export, nursery, max_outstanding=1 << 30, peers=())
            for _ in range(repeat):
                chan.out.clear()
                chan.out_bytes = budget.used = 0
                t = time.thread_time()
                pos = disp.process(ring, view, 0, end)
                best = min(best, time.thread_time() - t)
                assert pos == end and not disp.limited
    finally:
        chan.out.clear()
        view.release()
        ring.close()
        chan.close()
        b.close()
    return best / n


async def run_sent(cmd: int, bs: int, qd: int, batches: int) -> float:
    """Best CPU time per request of processing and sending a batch of ``qd``."""
    export: Any = NullExport()
    neg = Negotiated(export=export, name="", size=SIZE, transmission_flags=transmission_flags(False),
                     structured_replies=False, meta_context_id=None, no_zeroes=True)
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    b.setblocking(False)
    drain = bytearray(1 << 20)
    budget = Budget(1 << 40)
    chan = Channel(trio.socket.from_stdlib_socket(a), budget, 60.0)
    ring, end = fill_ring(cmd, bs, qd)
    view = memoryview(ring)
    best = float("inf")
    try:
        async with trio.open_nursery() as nursery:
            disp = Dispatcher(chan, Transmission(neg), export, nursery, max_outstanding=1 << 30, peers=())
            for _ in range(batches):
                t = time.thread_time()
                pos = disp.process(ring, view, 0, end)
                await chan.flush()
                best = min(best, time.thread_time() - t)
                assert pos == end and not disp.limited and not chan.broken
                while True:
                    try:
                        b.recv_into(drain)
                    except BlockingIOError:
                        break
    finally:
        view.release()
        ring.close()
        chan.close()
        b.close()
    return best / qd


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=150)
    p.add_argument("--qd", type=int, default=16)
    args = p.parse_args()
    jobs = (("4k write", C.CMD_WRITE, 4096), ("4k read", C.CMD_READ, 4096),
            ("128k write", C.CMD_WRITE, 128 << 10), ("128k read", C.CMD_READ, 128 << 10))
    print("parse and dispatch a full ring:")
    for name, cmd, bs in jobs:
        n = args.requests if bs == 4096 else max(1, args.requests // 4)
        per = trio.run(run, cmd, bs, n, args.repeat)
        print(f"  {name:11} {per * 1e6:6.3f} µs per request")
    print(f"parse, dispatch and send the replies, {args.qd} requests at a time:")
    for name, cmd, bs in jobs:
        per = trio.run(run_sent, cmd, bs, args.qd, args.repeat * 20)
        print(f"  {name:11} {per * 1e6:6.3f} µs per request")


if __name__ == "__main__":
    main()
