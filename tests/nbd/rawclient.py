"""A minimal NBD client on a raw trio socket, for traffic real clients won't send."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

from uzram.nbd import constants as C


@dataclass
class Reply:
    cookie: int
    error: int
    data: bytes = b""
    structured: bool = False
    rtype: int = 0
    flags: int = 0


class RawClient:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.read_lengths: dict[int, int] = {}  # cookie -> length, for simple READ replies
        self.next_cookie = 1

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = await self.sock.send(view)
            view = view[n:]

    async def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (EOF/reset) within ``timeout``."""
        with trio.move_on_after(timeout):
            try:
                while True:
                    chunk = await self.sock.recv(65536)
                    if not chunk:
                        return True
            except (ConnectionResetError, BrokenPipeError):
                return True
        return False

    # --- handshake ---------------------------------------------------------------

    async def greeting(self, cflags: int = C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES) -> int:
        magic, opt, hflags = struct.unpack(">QQH", await self.recv_exact(18))
        assert magic == C.NBDMAGIC and opt == C.IHAVEOPT
        await self.send(struct.pack(">I", cflags))
        return hflags

    async def send_option(self, opt: int, data: bytes = b"") -> None:
        await self.send(struct.pack(">QII", C.IHAVEOPT, opt, len(data)) + data)

    async def option_reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", await self.recv_exact(20))
        assert magic == C.OPT_REPLY_MAGIC, hex(magic)
        return opt, rtype, await self.recv_exact(length)

    async def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; collect replies up to ACK or an error."""
        await self.send_option(opt, data)
        replies = []
        while True:
            o, rtype, payload = await self.option_reply()
            assert o == opt
            replies.append((rtype, payload))
            if rtype == C.REP_ACK or rtype & (1 << 31):
                return replies

    async def go(
        self, name: str = "", *, structured: bool = False, meta: bool = False, infos: tuple[int, ...] = ()
    ) -> tuple[int, int]:
        """Greeting + options + GO; returns (size, transmission flags)."""
        await self.greeting()
        if structured:
            assert (await self.option(C.OPT_STRUCTURED_REPLY))[-1][0] == C.REP_ACK
        if meta:
            q = C.META_BASE_ALLOCATION.encode()
            n = name.encode()
            data = struct.pack(">I", len(n)) + n + struct.pack(">II", 1, len(q)) + q
            assert (await self.option(C.OPT_SET_META_CONTEXT, data))[-1][0] == C.REP_ACK
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(f">H{len(infos)}H", len(infos), *infos)
        replies = await self.option(C.OPT_GO, data)
        assert replies[-1][0] == C.REP_ACK, replies
        for rtype, payload in replies:
            if rtype == C.REP_INFO and struct.unpack_from(">H", payload)[0] == C.INFO_EXPORT:
                _, size, tflags = struct.unpack(">HQH", payload)
                return size, tflags
        raise AssertionError("no INFO_EXPORT")

    # --- transmission ------------------------------------------------------------

    def request_bytes(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        cookie: int | None = None,
        payload: bytes = b"",
        magic: int = C.REQUEST_MAGIC,
    ) -> tuple[int, bytes]:
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        if cmd == C.CMD_READ:
            self.read_lengths[cookie] = length
        return cookie, struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + payload

    async def request(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        payload: bytes = b"",
        cookie: int | None = None,
    ) -> int:
        cookie, data = self.request_bytes(cmd, offset, length, flags, cookie, payload)
        await self.send(data)
        return cookie

    async def reply(self) -> Reply:
        """Read one reply (simple) or one chunk (structured)."""
        (magic,) = struct.unpack(">I", await self.recv_exact(4))
        if magic == C.SIMPLE_REPLY_MAGIC:
            err, cookie = struct.unpack(">IQ", await self.recv_exact(12))
            data = b""
            if err == 0 and cookie in self.read_lengths:
                data = await self.recv_exact(self.read_lengths[cookie])
            self.read_lengths.pop(cookie, None)
            return Reply(cookie, err, data)
        assert magic == C.STRUCTURED_REPLY_MAGIC, hex(magic)
        flags, rtype, cookie, length = struct.unpack(">HHQI", await self.recv_exact(16))
        payload = await self.recv_exact(length)
        err = 0
        if rtype & (1 << 15):
            err = struct.unpack_from(">I", payload)[0]
        if flags & C.REPLY_FLAG_DONE:
            self.read_lengths.pop(cookie, None)
        return Reply(cookie, err, payload, True, rtype, flags)

    async def call(
        self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b""
    ) -> Reply:
        cookie = await self.request(cmd, offset, length, flags, payload)
        r = await self.reply()
        assert r.cookie == cookie
        return r

    async def pread(self, offset: int, length: int) -> bytes:
        r = await self.call(C.CMD_READ, offset, length)
        assert r.error == 0, r.error
        return r.data[8:] if r.structured else r.data

    async def pwrite(self, offset: int, data: bytes, flags: int = 0) -> None:
        r = await self.call(C.CMD_WRITE, offset, len(data), flags, data)
        assert r.error == 0, r.error
