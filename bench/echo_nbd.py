"""The least a trio NBD server can do: a baseline for uzram's latency.

A minimal fixed-newstyle NBD server in pure Python on trio, on a UNIX
socket: it answers every option but NBD_OPT_GO (and NBD_OPT_EXPORT_NAME)
with NBD_REP_ERR_UNSUP, serves one export of ``size`` bytes, and replies to
reads with simple replies carrying the same 4 KiB page (no storage, no
copy), to writes, flushes and trims with success. One task per connection,
requests served in order: the cost of trio's socket calls and of parsing a
request, without anything of uzram's.

    python bench/echo_nbd.py SOCKET [SIZE]
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import trio

NBDMAGIC, IHAVEOPT = b"NBDMAGIC", b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST, SIMPLE_REPLY = 0x25609513, 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_GO = 1, 2, 7
REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, (1 << 31) | 1
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
HAS_FLAGS, SEND_FLUSH, SEND_TRIM = 1, 4, 32
REQ = struct.Struct(">IHHQQI")
PAGE = bytes(range(256)) * 16


class Conn:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = bytearray()

    async def recv(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view):]


async def serve(sock: trio.socket.SocketType, size: int) -> None:
    c = Conn(sock)
    flags = HAS_FLAGS | SEND_FLUSH | SEND_TRIM
    try:
        await c.send(NBDMAGIC + IHAVEOPT + struct.pack(">H", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        await c.recv(4)
        while True:   # options
            _, opt, length = struct.unpack(">QII", await c.recv(16))
            await c.recv(length)
            if opt == OPT_EXPORT_NAME:
                await c.send(struct.pack(">QH", size, flags))
                break
            if opt == OPT_ABORT:
                return
            if opt == OPT_GO:
                info = struct.pack(">HQH", 0, size, flags)
                await c.send(struct.pack(">QIII", OPT_REPLY_MAGIC, opt, REP_INFO, len(info)) + info
                             + struct.pack(">QIII", OPT_REPLY_MAGIC, opt, REP_ACK, 0))
                break
            await c.send(struct.pack(">QIII", OPT_REPLY_MAGIC, opt, REP_ERR_UNSUP, 0))
        while True:   # transmission
            _, _, cmd, handle, _, length = REQ.unpack(await c.recv(REQ.size))
            reply = struct.pack(">IIQ", SIMPLE_REPLY, 0, handle)
            if cmd == CMD_DISC:
                return
            if cmd == CMD_READ:
                await c.send(reply + (PAGE if length == len(PAGE) else bytes(length)))
                continue
            if cmd == CMD_WRITE:
                await c.recv(length)
            await c.send(reply)
    except (EOFError, OSError):
        pass
    finally:
        sock.close()


async def main(path: Path, size: int) -> None:
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(16)
    async with trio.open_nursery() as nursery:
        while True:
            sock, _ = await listener.accept()
            nursery.start_soon(serve, sock, size)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30)
