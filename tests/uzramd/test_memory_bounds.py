"""uzramd's memory is bounded by its buffer budget whatever clients claim or
leave unread, comes back when they leave, and SIGTERM cannot be held up by
a client that does not read."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..daemon import Uzramd, uzramd
from ..nbdclient import CMD_READ, CMD_WRITE, REQUEST_MAGIC, NBDClient

MiB = 1 << 20
PAGE = 4096
BUDGET = 16 * MiB
SLACK = 40 * MiB   # interpreter, rings, thread stacks, malloc's own slack


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settle(pid: int, seconds: float = 1.5) -> int:
    """The largest RSS seen over a short while (the daemon works meanwhile)."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss(pid))
        time.sleep(0.05)
    return peak


def attached(d: Uzramd, n: int) -> Iterator[NBDClient]:
    return (NBDClient(d.nbd_sock, "zram0") for _ in range(n))


def another_client_is_served(d: Uzramd, offset: int) -> None:
    data = os.urandom(PAGE)
    with NBDClient(d.nbd_sock, "zram0") as other:
        other.pwrite(offset, data)
        assert other.pread(offset, PAGE) == data


def header(cmd: int, cookie: int, offset: int, length: int) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, cookie, offset, length)


@pytest.fixture(params=["in RAM", "written back"])
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Uzramd]:
    """32 MiB of incompressible data to read back: in the pool, or written
    back to a backing file (its reads go through worker threads)."""
    device = "zram0:disksize=256M"
    if request.param == "written back":
        backing = tmp_path / "backing.img"
        fd = os.open(backing, os.O_CREAT | os.O_WRONLY, 0o600)
        os.ftruncate(fd, 64 * MiB)
        os.close(fd)
        device = f"zram0:backing_dev={backing},disksize=256M"
    with uzramd(tmp_path / "d", "--max-buffer-memory", "16M", "--idle-timeout", "600",
                devices=(device,)) as d:
        with NBDClient(d.nbd_sock, "zram0") as c:
            for i in range(32):
                c.pwrite(i * MiB, os.urandom(MiB))
        if request.param == "written back":
            d.store("zram0", "writeback", "huge")
            assert int(d.show("zram0", "bd_stat").split()[0]) >= 32 * 256
        yield d


def test_claimed_writes_allocate_nothing_ahead(daemon: Uzramd) -> None:
    """16 WRITE headers claiming 32 MiB with one byte of payload: nothing is
    allocated for what has not arrived, and another client is served."""
    d = daemon
    base = settle(d.proc.pid, 0.5)
    clients = list(attached(d, 16))
    try:
        for i, c in enumerate(clients):
            c.sock.sendall(header(CMD_WRITE, 1, (64 + i) * MiB, 32 * MiB) + b"x")
        grown = settle(d.proc.pid) - base
        another_client_is_served(d, 200 * MiB)
        assert grown < BUDGET + SLACK, f"RSS grew by {grown >> 20} MiB"
    finally:
        for c in clients:
            c.sock.close()
    assert d.alive()


def test_unread_reply_pipelines_stay_within_the_budget(daemon: Uzramd) -> None:
    """16 clients pipeline 64 reads of 1 MiB each and never read a reply."""
    d = daemon
    base = settle(d.proc.pid, 0.5)
    clients = list(attached(d, 16))
    try:
        for c in clients:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            c.sock.sendall(b"".join(header(CMD_READ, k, (k % 32) * MiB, MiB) for k in range(64)))
        grown = settle(d.proc.pid, 2.5) - base
        another_client_is_served(d, 201 * MiB)
        assert grown < BUDGET + SLACK, f"RSS grew by {grown >> 20} MiB"
    finally:
        for c in clients:
            c.sock.close()
    # the clients are gone: RSS returns to the baseline (the pool did not grow)
    deadline = time.monotonic() + 20
    while rss(d.proc.pid) - base > 8 * MiB and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rss(d.proc.pid) - base <= 8 * MiB, f"RSS stayed {(rss(d.proc.pid) - base) >> 20} MiB above"


def test_requests_up_to_64_mib(daemon: Uzramd) -> None:
    """nbd-tester-client's integrityhuge sends up to 47.6 MiB without
    negotiating block sizes; uzram takes up to 64 MiB as nbdkit does."""
    d = daemon
    size = 47_600_000
    blob = os.urandom(size // 2) * 2
    with NBDClient(d.nbd_sock, "zram0") as c:
        c.pwrite(3 * MiB + 512, blob)
        assert c.pread(3 * MiB + 512, size) == blob
        c.pwrite(0, blob[: 64 * MiB] + bytes(64 * MiB - size))
        assert c.pread(0, 64 * MiB)[:size] == blob


def test_sigterm_with_a_client_that_never_reads(tmp_path: Path) -> None:
    with uzramd(tmp_path, "--shutdown-timeout", "2", devices=("zram0:disksize=64M",)) as d:
        c = NBDClient(d.nbd_sock, "zram0")
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sock.sendall(b"".join(header(CMD_READ, k, 0, MiB) for k in range(64)))
            time.sleep(0.5)
            started = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(2 + 10) == 0
            assert time.monotonic() - started < 2 + 10
        finally:
            c.sock.close()


def test_a_client_stalled_mid_request_is_closed(tmp_path: Path) -> None:
    with uzramd(tmp_path, "--idle-timeout", "1", devices=("zram0:disksize=64M",)) as d:
        c = NBDClient(d.nbd_sock, "zram0")
        try:
            c.sock.sendall(header(CMD_WRITE, 1, 0, 8192) + b"half" * 100)
            c.sock.settimeout(30)
            assert c.sock.recv(16) == b""   # closed, without a reply
        finally:
            c.sock.close()
        with NBDClient(d.nbd_sock, "zram0") as other:
            assert other.pread(0, PAGE) == bytes(PAGE)


def test_a_client_that_reads_no_replies_is_closed(tmp_path: Path) -> None:
    """Replies nobody reads for --idle-timeout: the connection is closed (its
    share of the budget comes back) instead of waiting for ever."""
    with uzramd(tmp_path, "--idle-timeout", "1", devices=("zram0:disksize=64M",)) as d:
        c = NBDClient(d.nbd_sock, "zram0")
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sock.sendall(b"".join(header(CMD_READ, k, 0, MiB) for k in range(64)))
            time.sleep(2)                    # read nothing for longer than the timeout
            d.wait_for_clients(0)            # (the daemon may be slower to see it under load)
            c.sock.settimeout(30)
            got = 0
            while chunk := c.sock.recv(1 << 20):
                got += len(chunk)
            assert got < 64 * MiB            # EOF before all the replies: closed
        finally:
            c.sock.close()
        another_client_is_served(d, 0)
