"""The transport's TLS path: an in-process server on loopback TCP, raw clients."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from uzram.nbd import constants as C
from uzram.nbd.export import StaticRegistry
from uzram.nbd.server import NBDServer, ServerConfig
from uzram.nbd.tls import settings

from ..tlscerts import Certs, make_certs
from .memexport import MemExport
from .rawclient import RawClient


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


class _StreamSock:
    """What RawClient needs of a socket, over a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def send(self, data: bytes | memoryview) -> int:
        await self.stream.send_all(data)
        return len(data)

    async def recv(self, n: int) -> bytes:
        return await self.stream.receive_some(n)


@dataclass
class TCPEnv:
    server: NBDServer
    export: MemExport
    port: int
    socks: list[trio.socket.SocketType]

    async def connect(self) -> RawClient:
        s = trio.socket.socket()
        self.socks.append(s)
        await s.connect(("127.0.0.1", self.port))
        return RawClient(s)


async def start_tcp(nursery: trio.Nursery, config: ServerConfig) -> TCPEnv:
    listen = trio.socket.socket()
    await listen.bind(("127.0.0.1", 0))
    listen.listen(16)
    export = MemExport(64 << 20)
    server = NBDServer(StaticRegistry([export]), config)
    await nursery.start(server.serve_listener, listen)
    return TCPEnv(server, export, listen.getsockname()[1], [listen])


@pytest.fixture
async def tcp(nursery: trio.Nursery, certs: Certs) -> AsyncIterator[TCPEnv]:
    env = await start_tcp(nursery, ServerConfig(tls=settings("require", certs.server), handshake_timeout=5))
    yield env
    env.server.stop()
    with trio.fail_after(10):
        await env.server.wait_closed()
    for s in env.socks:
        s.close()


async def starttls(c: RawClient, certs: Certs) -> trio.SSLStream[trio.SocketStream]:
    assert await c.option(C.OPT_STARTTLS) == [(C.REP_ACK, b"")]
    ctx = ssl.create_default_context(cafile=str(certs.anon / "ca-cert.pem"))
    assert isinstance(c.sock, trio.socket.SocketType)
    stream = trio.SSLStream(trio.SocketStream(c.sock), ctx, server_hostname="127.0.0.1")
    await stream.do_handshake()
    c.sock = _StreamSock(stream)  # type: ignore[assignment]
    return stream


async def go(c: RawClient) -> int:
    """GO for the default export after the greeting; returns its size."""
    replies = await c.option(C.OPT_GO, struct.pack(">IH", 0, 0))
    assert replies[-1][0] == C.REP_ACK, replies
    info = [p for t, p in replies if t == C.REP_INFO and p[:2] == b"\0\0"][0]
    return struct.unpack(">HQH", info)[1]


async def test_tls_transmission_pipelined(tcp: TCPEnv, certs: Certs) -> None:
    """Many pipelined requests, large and small, both ways, over TLS."""
    c = await tcp.connect()
    await c.greeting()
    await starttls(c, certs)
    assert await go(c) == 64 << 20
    big = bytes(range(256)) * (4 << 12)  # 4 MiB: larger than any TLS record or socket buffer
    await c.pwrite(1 << 20, big)
    cookies = []
    payload = b""
    for i in range(64):
        cookie, data = c.request_bytes(C.CMD_WRITE, i * 4096, 4096, payload=bytes([i]) * 4096)
        cookies.append(cookie)
        payload += data
    for i in range(8):
        cookie, data = c.request_bytes(C.CMD_READ, 1 << 20, 4 << 20)
        payload += data
    await c.send(payload)
    reads = 0
    for _ in range(72):
        r = await c.reply()
        assert r.error == 0
        if r.data:
            assert r.data == big
            reads += 1
    assert reads == 8
    for i in range(64):
        assert tcp.export.data[i * 4096 : (i + 1) * 4096] == bytes([i]) * 4096


async def test_stalled_tls_handshake_times_out(tcp: TCPEnv, certs: Certs) -> None:
    """A client that sends STARTTLS and then nothing is dropped at the handshake
    timeout; the server goes on serving others."""
    stalled = await tcp.connect()
    await stalled.greeting()
    assert await stalled.option(C.OPT_STARTTLS) == [(C.REP_ACK, b"")]
    garbage = await tcp.connect()
    await garbage.greeting()
    assert await garbage.option(C.OPT_STARTTLS) == [(C.REP_ACK, b"")]
    await garbage.send(b"GET / HTTP/1.0\r\n\r\n" * 20)  # not a ClientHello
    assert await garbage.closed_by_peer(timeout=10)
    good = await tcp.connect()
    await good.greeting()
    await starttls(good, certs)
    await go(good)
    await good.pwrite(0, b"x" * 4096)
    assert await stalled.closed_by_peer(timeout=30)
    assert await good.pread(0, 4096) == b"x" * 4096


async def test_pipelined_plaintext_after_starttls_is_dropped(tcp: TCPEnv) -> None:
    """Plaintext queued behind STARTTLS (an injection) is never acted on."""
    c = await tcp.connect()
    await c.greeting()
    go = struct.pack(">I", 0) + struct.pack(">H", 0)
    await c.send(struct.pack(">QII", C.IHAVEOPT, C.OPT_STARTTLS, 0)
                 + struct.pack(">QII", C.IHAVEOPT, C.OPT_GO, len(go)) + go)
    assert await c.closed_by_peer(timeout=10)
    assert not tcp.export.attached


async def test_stop_during_tls_transmission(tcp: TCPEnv, certs: Certs) -> None:
    c = await tcp.connect()
    await c.greeting()
    await starttls(c, certs)
    await go(c)
    await c.pwrite(0, b"s" * 4096)
    tcp.server.stop()
    with trio.fail_after(10):
        await tcp.server.wait_closed()


async def test_unix_connection_not_required(nursery: trio.Nursery, certs: Certs, tmp_path: Path) -> None:
    path = f"/tmp/uzt-{id(tmp_path)}.sock"
    listen = trio.socket.socket(socket.AF_UNIX)
    await listen.bind(path)
    listen.listen(4)
    try:
        server = NBDServer(StaticRegistry([MemExport(1 << 20)]), ServerConfig(tls=settings("require", certs.server)))
        await nursery.start(server.serve_listener, listen)
        s = trio.socket.socket(socket.AF_UNIX)
        await s.connect(path)
        c = RawClient(s)
        await c.greeting()
        assert await go(c) == 1 << 20  # no ERR_TLS_REQD on a UNIX socket
        s.close()
        server.stop()
        with trio.fail_after(10):
            await server.wait_closed()
    finally:
        listen.close()
        Path(path).unlink()
