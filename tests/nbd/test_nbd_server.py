"""The trio server driven over raw sockets: traffic real clients won't send."""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import struct

import pytest
import trio

from uzram.nbd import constants as C
from uzram.nbd.export import StaticRegistry
from uzram.nbd.server import NBDServer, ServerConfig, serve_connection

from .memexport import FailOn, MemExport
from .rawclient import RawClient
from .support import NBDEnv, start_env


async def client(env: NBDEnv, **go: object) -> RawClient:
    c = RawClient(await env.connect())
    await c.go(**go)  # type: ignore[arg-type]
    return c


async def still_serves(env: NBDEnv) -> None:
    c = await client(env)
    await c.pwrite(8192, b"alive" * 100)
    assert await c.pread(8192, 500) == b"alive" * 100
    c.sock.close()


# --- basic data path ------------------------------------------------------------------


async def test_simple_write_read_flush(env: NBDEnv) -> None:
    c = await client(env)
    await c.pwrite(4096, b"x" * 4096, C.CMD_FLAG_FUA)
    assert await c.pread(4096, 4096) == b"x" * 4096
    assert (await c.call(C.CMD_FLUSH)).error == 0
    assert env.export.flushes == 1
    assert (await c.call(C.CMD_CACHE, 0, 4096)).error == 0
    assert (await c.call(C.CMD_TRIM, 4096, 4096)).error == 0
    assert await c.pread(4096, 4096) == bytes(4096)
    await c.pwrite(0, b"y" * 1000)
    assert (await c.call(C.CMD_WRITE_ZEROES, 100, 800, C.CMD_FLAG_NO_HOLE)).error == 0
    assert await c.pread(0, 1000) == b"y" * 100 + bytes(800) + b"y" * 100
    await c.request(C.CMD_DISC)
    assert await c.closed_by_peer()


async def test_structured_read_and_block_status(env: NBDEnv) -> None:
    c = await client(env, structured=True, meta=True)
    await c.pwrite(1 << 20, b"d" * 8192)
    r = await c.call(C.CMD_READ, (1 << 20) - 4096, 12288)
    assert r.structured and r.rtype == C.REPLY_TYPE_OFFSET_DATA and r.flags & C.REPLY_FLAG_DONE
    assert r.data == struct.pack(">Q", (1 << 20) - 4096) + bytes(4096) + b"d" * 8192
    r = await c.call(C.CMD_BLOCK_STATUS, 0, 4 << 20)
    assert r.rtype == C.REPLY_TYPE_BLOCK_STATUS and r.flags & C.REPLY_FLAG_DONE
    vals = struct.unpack(f">{len(r.data) // 4}I", r.data)
    assert vals[0] == 1  # context id
    assert list(zip(vals[1::2], vals[2::2])) == [(1 << 20, 3), (8192, 0), ((3 << 20) - 8192, 3)]
    r = await c.call(C.CMD_BLOCK_STATUS, 0, 4 << 20, C.CMD_FLAG_REQ_ONE)
    assert struct.unpack(">III", r.data) == (1, 1 << 20, 3)
    # errors on READ are structured too
    r = await c.call(C.CMD_READ, 64 << 20, 512)
    assert r.structured and r.rtype == C.REPLY_TYPE_ERROR and r.error == C.EINVAL


async def test_simple_replies_without_structured(env: NBDEnv) -> None:
    c = await client(env)
    r = await c.call(C.CMD_READ, 0, 512)
    assert not r.structured and r.data == bytes(512)
    assert (await c.call(C.CMD_BLOCK_STATUS, 0, 512)).error == C.EINVAL
    r = await c.call(C.CMD_READ, 64 << 20, 512)
    assert not r.structured and r.error == C.EINVAL and r.data == b""


async def test_bad_requests_keep_connection(env: NBDEnv) -> None:
    c = await client(env)
    await c.pwrite(0, b"k" * 4096)
    size = 64 << 20
    cases = [
        (C.CMD_READ, size - 10, 20, 0, b"", C.EINVAL),
        (C.CMD_WRITE, size - 10, 20, 0, b"p" * 20, C.ENOSPC),
        (C.CMD_WRITE, 0, 0, 0, b"", C.EINVAL),
        (C.CMD_READ, 0, 0, 0, b"", C.EINVAL),
        (C.CMD_READ, 0, 512, 1 << 9, b"", C.EINVAL),
        (C.CMD_WRITE, 0, 512, C.CMD_FLAG_NO_HOLE, b"q" * 512, C.EINVAL),
        (C.CMD_READ, 0, 512, C.CMD_FLAG_DF, b"", C.EINVAL),
        (C.CMD_FLUSH, 1, 0, 0, b"", C.EINVAL),
        (77, 0, 512, 0, b"", C.EINVAL),
        (C.CMD_READ, 0, (65 << 20), 0, b"", C.EINVAL),
    ]
    for cmd, off, ln, fl, payload, err in cases:
        r = await c.call(cmd, off, ln, fl, payload)
        assert r.error == err, (cmd, off, ln, fl)
    assert await c.pread(0, 4096) == b"k" * 4096


async def test_oversize_write_payload_is_skipped(env: NBDEnv) -> None:
    c = await client(env)
    # 72 MiB > the 64 MiB maximum (and the export), > the 4 MiB ring: refused, payload consumed
    r = await c.call(C.CMD_WRITE, 0, 72 << 20, 0, b"z" * (72 << 20))
    assert r.error == C.ENOSPC
    # out of range, bigger than the ring: ENOSPC, payload consumed
    r = await c.call(C.CMD_WRITE, (64 << 20) - 4096, 5 << 20, 0, b"z" * (5 << 20))
    assert r.error == C.ENOSPC
    assert await c.pread(0, 4096) == bytes(4096)


async def test_absurd_write_drops_connection(env: NBDEnv) -> None:
    c = await client(env)
    await c.request(C.CMD_WRITE, 0, (128 << 20) + 4096)
    assert await c.closed_by_peer()
    await still_serves(env)


async def test_write_larger_than_ring(nursery: trio.Nursery, short_tmp: str, nbd_errors: list) -> None:
    env = await start_env(nursery, short_tmp, [MemExport(64 << 20)], ServerConfig(ring_size=1 << 20))
    c = await client(env)
    blob = os.urandom(5 << 20)
    for pre, off in ((0, 0), (3, 12345)):  # the big WRITE starts at various ring offsets
        reads = b"".join(c.request_bytes(C.CMD_READ, 0, 100)[1] for _ in range(pre))
        _, w = c.request_bytes(C.CMD_WRITE, off, len(blob), payload=blob)
        await c.send(reads + w)
        for _ in range(pre + 1):
            assert (await c.reply()).error == 0
        assert await c.pread(off, len(blob)) == blob
    # a 64 MiB write, the maximum, streamed through the 1 MiB ring
    big = bytes(range(256)) * (256 << 10)
    await c.pwrite(0, big)
    assert env.export.data[: 64 << 20] == big
    assert await c.pread(0, 64 << 20) == big      # a 64 MiB read, sent in pieces
    await env.stop()


async def test_read_only_export(env: NBDEnv) -> None:
    c = await client(env, name="other")
    assert (await c.call(C.CMD_WRITE, 0, 512, 0, b"a" * 512)).error == C.EPERM
    assert (await c.call(C.CMD_TRIM, 0, 512)).error == C.EPERM
    assert (await c.call(C.CMD_WRITE_ZEROES, 0, 512)).error == C.EPERM
    assert (await c.call(C.CMD_READ, 0, 512)).error == 0
    assert env.exports[1].data == bytes(1 << 20)


@pytest.mark.parametrize(
    "err,wire",
    [
        (errno.EIO, C.EIO),
        (errno.EDQUOT, C.ENOSPC),
        (errno.ENOSPC, C.ENOSPC),
        (errno.EBADF, C.EIO),
        (errno.EPERM, C.EPERM),
        (errno.ENOMEM, C.ENOMEM),
    ],
)
async def test_export_errors_are_mapped(env: NBDEnv, err: int, wire: int) -> None:
    env.export.fail = FailOn("write", 0, 4096, err)
    c = await client(env)
    assert (await c.call(C.CMD_WRITE, 0, 512, 0, b"a" * 512)).error == wire
    await c.pwrite(4096, b"b" * 512)


@pytest.mark.parametrize("structured", [False, True])
async def test_read_error(env: NBDEnv, structured: bool) -> None:
    env.export.fail = FailOn("read", 0, 4096)
    c = await client(env, structured=structured)
    r = await c.call(C.CMD_READ, 0, 512)
    assert r.error == C.EIO and r.structured == structured
    assert await c.pread(4096, 512) == bytes(512)


@pytest.mark.allow_nbd_errors
async def test_export_bug_gives_eio(env: NBDEnv) -> None:
    def boom(op: str, offset: int, length: int) -> int | None:
        raise RuntimeError("bug")

    env.export.fail = boom
    c = await client(env)
    assert (await c.call(C.CMD_WRITE, 0, 512, 0, b"a" * 512)).error == C.EIO
    assert (await c.call(C.CMD_FLUSH)).error == C.EIO
    assert env.errors


# --- broken clients ------------------------------------------------------------------


async def test_garbage_magic_drops_only_that_connection(
    env: NBDEnv, caplog: pytest.LogCaptureFixture
) -> None:
    other = await client(env)
    bad = await client(env)
    with caplog.at_level(logging.DEBUG, logger="uzram.nbd"):
        await bad.send(b"\xde\xad\xbe\xef" * 7)
        assert await bad.closed_by_peer()
    assert any("bad request magic" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    await other.pwrite(0, b"ok" * 256)
    assert await other.pread(0, 512) == b"ok" * 256
    await still_serves(env)


async def test_garbage_greeting_reply(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.recv_exact(18)
    await c.send(os.urandom(64))
    assert await c.closed_by_peer()
    await still_serves(env)


async def test_unknown_client_flags_drop(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.greeting(cflags=C.FLAG_C_FIXED_NEWSTYLE | 0x100)
    assert await c.closed_by_peer()


async def test_oversized_option_drops(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.greeting()
    await c.send(struct.pack(">QII", C.IHAVEOPT, C.OPT_GO, 1 << 30))
    assert await c.closed_by_peer()


async def test_abort_and_client_closing_first(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.greeting()
    assert await c.option(C.OPT_ABORT) == [(C.REP_ACK, b"")]
    assert await c.closed_by_peer()
    c = RawClient(await env.connect())
    await c.greeting()
    await c.send_option(C.OPT_LIST)
    await c.send_option(C.OPT_ABORT)
    c.sock.close()  # nbd-client -l does this
    await still_serves(env)


async def test_eof_mid_request(env: NBDEnv) -> None:
    for partial in (b"\x25\x60\x95", None):
        c = await client(env)
        if partial is None:
            _, data = c.request_bytes(C.CMD_WRITE, 0, 4096, payload=b"w" * 1000)
            partial = data
        await c.send(partial)
        c.sock.close()
    await still_serves(env)
    with trio.fail_after(5):
        while env.export.attached:
            await trio.sleep(0.01)
    assert env.export.data[:4096] == bytes(4096)


async def test_handshake_timeout(nursery: trio.Nursery, short_tmp: str, nbd_errors: list) -> None:
    env = await start_env(nursery, short_tmp, [MemExport(1 << 20)], ServerConfig(handshake_timeout=0.2))
    c = RawClient(await env.connect())
    await c.greeting()
    await c.send(struct.pack(">QII", C.IHAVEOPT, C.OPT_GO, 100) + b"partial")
    assert await c.closed_by_peer(timeout=10)
    await env.stop()


async def test_export_name_fallback_with_zero_pad(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.greeting(cflags=C.FLAG_C_FIXED_NEWSTYLE)
    await c.send_option(C.OPT_EXPORT_NAME, b"mem")
    size, tflags = struct.unpack(">QH", await c.recv_exact(10))
    assert size == 64 << 20 and tflags & C.FLAG_SEND_TRIM
    assert await c.recv_exact(124) == bytes(124)
    await c.pwrite(0, b"e" * 512)
    assert await c.pread(0, 512) == b"e" * 512


async def test_export_name_unknown_disconnects(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.greeting()
    await c.send_option(C.OPT_EXPORT_NAME, b"nope")
    assert await c.closed_by_peer()


async def test_go_refused_by_export(env: NBDEnv) -> None:
    env.export.refuse_attach = errno.EBUSY
    c = RawClient(await env.connect())
    await c.greeting()
    n = b"mem"
    replies = await c.option(C.OPT_GO, struct.pack(">I", 3) + n + struct.pack(">H", 0))
    assert replies[-1][0] == C.REP_ERR_UNKNOWN
    env.export.refuse_attach = None
    replies = await c.option(C.OPT_GO, struct.pack(">I", 3) + n + struct.pack(">H", 0))
    assert replies[-1][0] == C.REP_ACK
    assert env.export.attached == 1


# --- pipelining, ordering, concurrency -----------------------------------------------


async def test_disc_with_many_requests_pipelined(env: NBDEnv) -> None:
    c = await client(env)
    blob = b""
    cookies = []
    for i in range(200):
        cookie, data = c.request_bytes(
            C.CMD_WRITE if i % 2 else C.CMD_READ, i * 4096, 4096, payload=bytes([i]) * 4096 if i % 2 else b""
        )
        cookies.append(cookie)
        blob += data
    _, disc = c.request_bytes(C.CMD_DISC)
    await c.send(blob + disc + c.request_bytes(C.CMD_READ, 0, 4096)[1])  # traffic after DISC is ignored
    got = []
    for _ in cookies:
        r = await c.reply()
        assert r.error == 0
        got.append(r.cookie)
    assert sorted(got) == sorted(cookies)
    assert await c.closed_by_peer()
    assert env.export.data[4096:8192] == bytes([1]) * 4096


async def test_many_clients_at_once(env: NBDEnv) -> None:
    async def one(i: int) -> None:
        c = await client(env)
        data = os.urandom(64 << 10)
        off = i * (256 << 10)
        for k in range(4):
            await c.pwrite(off + k * len(data), data)
        for k in range(4):
            assert await c.pread(off + k * len(data), len(data)) == data
        await c.request(C.CMD_DISC)
        c.sock.close()

    async with trio.open_nursery() as n:
        for i in range(40):
            n.start_soon(one, i)


async def test_sub_page_writes_same_page_pipelined(env: NBDEnv) -> None:
    c = await client(env)
    blob = b"".join(
        c.request_bytes(C.CMD_WRITE, 8192 + i * 512, 512, payload=bytes([i + 1]) * 512)[1] for i in range(8)
    )
    await c.send(blob)
    for _ in range(8):
        assert (await c.reply()).error == 0
    assert await c.pread(8192, 4096) == b"".join(bytes([i + 1]) * 512 for i in range(8))


async def test_sub_page_writes_with_async_export(env: NBDEnv) -> None:
    """Awaited writes to the same page, overlapping ones pipelined: no lost update,
    and later writes do not overtake earlier ones."""
    exp = env.export
    exp.async_ops = {"write"}
    rnd = random.Random(1)
    exp.delay = lambda op, off, ln: rnd.random() * 0.01
    c = await client(env)
    expected = bytearray(4096)
    blob = b""
    n = 0
    for rnd_round in range(3):
        for i in range(8):
            off = i * 512 + rnd_round * 100
            data = bytes([rnd_round * 8 + i + 1]) * 512
            blob += c.request_bytes(C.CMD_WRITE, off, 512, payload=data)[1]
            expected[off : off + 512] = data
            n += 1
    await c.send(blob)
    for _ in range(n):
        assert (await c.reply()).error == 0
    exp.async_ops = set()
    assert await c.pread(0, 4096) == expected[:4096]


async def test_out_of_order_completion(env: NBDEnv) -> None:
    exp = env.export
    exp.async_ops = {"read"}
    exp.delay = lambda op, off, ln: 0.3 if off == 0 else 0.0
    c = await client(env)
    slow, data1 = c.request_bytes(C.CMD_READ, 0, 4096)
    fast, data2 = c.request_bytes(C.CMD_READ, 1 << 20, 4096)
    await c.send(data1 + data2)
    assert (await c.reply()).cookie == fast
    assert (await c.reply()).cookie == slow


async def test_sync_requests_served_while_async_write_pending(env: NBDEnv) -> None:
    exp = env.export
    exp.async_ops = {"write"}
    exp.delay = lambda op, off, ln: 0.3 if off == 0 else 0.0
    c = await client(env)
    slow, d1 = c.request_bytes(C.CMD_WRITE, 0, 4096, payload=b"1" * 4096)
    dep, d2 = c.request_bytes(C.CMD_READ, 2048, 4096)  # overlaps: must wait
    ind, d3 = c.request_bytes(C.CMD_READ, 1 << 20, 4096)  # independent: answered first
    await c.send(d1 + d2 + d3)
    r = await c.reply()
    assert r.cookie == ind
    r = await c.reply()
    assert r.cookie == slow and r.error == 0
    r = await c.reply()
    assert r.cookie == dep and r.data == b"1" * 2048 + bytes(2048)


async def test_async_errors(env: NBDEnv) -> None:
    exp = env.export
    exp.async_ops = {"read", "write", "trim", "write_zeroes", "flush"}
    exp.fail = FailOn("read", 0, 4096)
    c = await client(env, structured=True)
    r = await c.call(C.CMD_READ, 0, 512)
    assert r.error == C.EIO and r.structured
    await c.pwrite(8192, b"a" * 100)
    assert await c.pread(8192, 100) == b"a" * 100
    for cmd in (C.CMD_TRIM, C.CMD_WRITE_ZEROES):
        assert (await c.call(cmd, 8192, 4096)).error == 0
    assert (await c.call(C.CMD_FLUSH)).error == 0
    assert await c.pread(8192, 100) == bytes(100)


async def test_outstanding_bound_pauses_reading(
    nursery: trio.Nursery, short_tmp: str, nbd_errors: list
) -> None:
    exp = MemExport(16 << 20)
    env = await start_env(nursery, short_tmp, [exp], ServerConfig(max_outstanding=4))
    exp.async_ops = {"read"}
    exp.delay = 0.01
    seen = []

    orig = exp.read

    def spy(offset: int, length: int) -> object:
        seen.append(exp.in_flight)
        return orig(offset, length)

    exp.read = spy  # type: ignore[method-assign]
    c = await client(env)
    blob = b"".join(c.request_bytes(C.CMD_READ, i * 4096, 4096)[1] for i in range(50))
    await c.send(blob)
    for _ in range(50):
        assert (await c.reply()).error == 0
    assert max(seen) <= 4
    await env.stop()


# --- graceful stop ---------------------------------------------------------------------


async def test_graceful_stop_answers_in_flight(env: NBDEnv) -> None:
    exp = env.export
    exp.async_ops = {"write"}
    exp.delay = 0.2
    c = await client(env)
    cookies = []
    blob = b""
    for i in range(10):
        cookie, data = c.request_bytes(C.CMD_WRITE, i * 4096, 4096, payload=b"s" * 4096)
        cookies.append(cookie)
        blob += data
    await c.send(blob)
    with trio.fail_after(5):
        while exp.in_flight < 10:
            await trio.sleep(0.01)
    env.server.stop()
    got = sorted([(await c.reply()).cookie for _ in cookies])
    assert got == sorted(cookies)
    assert await c.closed_by_peer()
    assert exp.data[: 10 * 4096] == b"s" * 40960
    with trio.fail_after(5):
        await env.server.wait_closed()
    # no longer accepting: a new connection waits in the backlog, never greeted
    c2 = RawClient(await env.connect())
    with trio.move_on_after(0.3) as scope:
        await c2.recv_exact(18)
    assert scope.cancelled_caught


async def test_stop_cuts_partial_write_with_eshutdown(env: NBDEnv) -> None:
    c = await client(env)
    cookie, data = c.request_bytes(C.CMD_WRITE, 0, 8192, payload=b"p" * 8192)
    await c.send(data[: 28 + 100])
    with trio.fail_after(5):
        while not any(conn.tx is not None for conn in env.server._connections):
            await trio.sleep(0.01)
    await trio.sleep(0.05)
    env.server.stop()
    r = await c.reply()
    assert r.cookie == cookie and r.error == C.ESHUTDOWN
    assert await c.closed_by_peer()


async def test_stop_closes_handshaking_clients(env: NBDEnv) -> None:
    c = RawClient(await env.connect())
    await c.greeting()
    await trio.sleep(0.05)
    env.server.stop()
    assert await c.closed_by_peer()


# --- larger pipelines, small bounds, and a sequential model --------------------------------


@pytest.mark.parametrize("max_buffer_memory", [64 << 20, 1 << 20])
async def test_long_pipeline_of_reads(
    nursery: trio.Nursery, short_tmp: str, nbd_errors: list, max_buffer_memory: int
) -> None:
    """More iovecs than IOV_MAX in one batch, partial sends, and the reply-bytes bound."""
    exp = MemExport(16 << 20)
    exp.data[:] = os.urandom(16 << 20)
    env = await start_env(nursery, short_tmp, [exp], ServerConfig(max_buffer_memory=max_buffer_memory))
    c = await client(env)
    reqs = [(c.request_bytes(C.CMD_READ, (i * 4096 * 7) % (16 << 20), 4096)) for i in range(1500)]
    await c.send(b"".join(r[1] for r in reqs))
    offsets = {cookie: (i * 4096 * 7) % (16 << 20) for i, (cookie, _) in enumerate(reqs)}
    for _ in reqs:
        r = await c.reply()
        off = offsets.pop(r.cookie)
        assert r.error == 0 and r.data == exp.data[off : off + 4096]
    assert not offsets
    await env.stop()


async def test_ring_wraps_with_odd_sized_writes(
    nursery: trio.Nursery, short_tmp: str, nbd_errors: list
) -> None:
    exp = MemExport(16 << 20)
    env = await start_env(nursery, short_tmp, [exp], ServerConfig(ring_size=1 << 20))
    c = await client(env)
    expected = bytearray(16 << 20)
    blob = []
    for i in range(64):
        off = i * 100003
        data = os.urandom(100003)
        expected[off : off + len(data)] = data
        blob.append(c.request_bytes(C.CMD_WRITE, off, len(data), payload=data)[1])
    async with trio.open_nursery() as n:
        n.start_soon(c.send, b"".join(blob))
        for _ in blob:
            assert (await c.reply()).error == 0
    assert exp.data == expected
    await env.stop()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("async_ops", [(), ("write", "trim", "write_zeroes", "read")])
async def test_pipelined_random_traffic_matches_sequential_model(
    env: NBDEnv, seed: int, async_ops: tuple[str, ...]
) -> None:
    """Random pipelined requests (some invalid) must give exactly the results of
    running them one by one, whether the export answers at once or later."""
    rnd = random.Random(seed)
    exp = env.export
    exp.async_ops = set(async_ops)
    exp.delay = lambda op, off, ln: rnd.random() * 0.004
    size = 64 << 20
    area = 64 << 10  # keep requests close together so that they overlap
    model = bytearray(area)
    c = await client(env, structured=True)
    blob = []
    expect: dict[int, tuple[int, bytes]] = {}
    for _ in range(300):
        kind = rnd.choice("rrwwwtzb")
        off = rnd.randrange(area)
        ln = rnd.randrange(1, 9000)
        if kind == "b":  # invalid: beyond the end
            cookie, data = c.request_bytes(C.CMD_WRITE, size - 10, ln, payload=b"b" * ln)
            expect[cookie] = (C.ENOSPC, b"")
            blob.append(data)
            continue
        ln = min(ln, area - off)
        if kind == "r":
            cookie, data = c.request_bytes(C.CMD_READ, off, ln)
            expect[cookie] = (0, struct.pack(">Q", off) + bytes(model[off : off + ln]))
        elif kind == "w":
            payload = os.urandom(ln)
            cookie, data = c.request_bytes(C.CMD_WRITE, off, ln, payload=payload)
            model[off : off + ln] = payload
            expect[cookie] = (0, b"")
        else:
            cmd = C.CMD_TRIM if kind == "t" else C.CMD_WRITE_ZEROES
            cookie, data = c.request_bytes(cmd, off, ln)
            model[off : off + ln] = bytes(ln)
            expect[cookie] = (0, b"")
        blob.append(data)
    async with trio.open_nursery() as n:
        n.start_soon(c.send, b"".join(blob))
        for _ in blob:
            r = await c.reply()
            err, data = expect.pop(r.cookie)
            assert r.error == err
            if err == 0 and data:
                assert r.data == data, r.cookie
    assert not expect
    assert exp.data[:area] == model


# --- other transports ------------------------------------------------------------------


async def test_tcp_loopback(nursery: trio.Nursery, nbd_errors: list) -> None:
    exp = MemExport(1 << 20)
    server = NBDServer(StaticRegistry([exp]))
    listen = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listen.bind(("127.0.0.1", 0))
    listen.listen(8)
    await nursery.start(server.serve_listener, listen)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.connect(listen.getsockname())
        c = RawClient(sock)
        await c.go()
        await c.pwrite(100, b"tcp" * 1000)
        assert await c.pread(100, 3000) == b"tcp" * 1000
        server.stop()  # an idle TCP client is closed promptly too
        assert await c.closed_by_peer()
    finally:
        sock.close()
        server.stop()
        await server.wait_closed()
        listen.close()


async def test_serve_connection_on_socketpair(nbd_errors: list) -> None:
    """What a daemon does for an inherited, already connected socket."""
    exp = MemExport(1 << 20)
    a, b = socket.socketpair()
    server_side = trio.socket.from_stdlib_socket(a)
    c = RawClient(trio.socket.from_stdlib_socket(b))
    async with trio.open_nursery() as n:
        n.start_soon(serve_connection, server_side, StaticRegistry([exp]))
        await c.go()
        await c.pwrite(0, b"pair")
        assert await c.pread(0, 4) == b"pair"
        await c.request(C.CMD_DISC)
        assert await c.closed_by_peer()
    c.sock.close()
    assert exp.attached == 0 and exp.attach_calls == 1
