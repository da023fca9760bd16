"""A tiny blocking NBD client for tests (fixed newstyle, NBD_OPT_GO, simple
replies, one request at a time): attach to an export and stay connected,
read, write, trim and zero, with server errors raised as OSError."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_GO, REP_ACK = 7, 1
CMD_READ, CMD_WRITE, CMD_DISC, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 4, 6


class NBDClient:
    def __init__(self, path: Path, export: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        try:
            self.sock.settimeout(30)
            self.sock.connect(str(path))
            magic = self._recv(18)
            assert magic[:16] == b"NBDMAGICIHAVEOPT", magic
            self.sock.sendall(struct.pack(">I", 1 | 2))   # FIXED_NEWSTYLE | NO_ZEROES
            name = export.encode()
            data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
            self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
            while True:
                magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
                assert magic == OPT_REPLY_MAGIC
                self._recv(length)
                if rtype == REP_ACK:
                    break
                assert rtype < 1 << 31, f"NBD_OPT_GO refused: {rtype:#x}"
        except BaseException:
            self.sock.close()
            raise
        self.cookie = 0

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("server closed the connection")
            buf += chunk
        return buf

    def _request(self, cmd: int, offset: int, length: int, payload: bytes = b"", reply_len: int = 0) -> bytes:
        self.cookie += 1
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self.cookie, offset, length) + payload)
        magic, error, cookie = struct.unpack(">IIQ", self._recv(16))
        assert (magic, cookie) == (SIMPLE_REPLY_MAGIC, self.cookie)
        if error:
            raise OSError(error, f"NBD error {error}")
        return self._recv(reply_len) if reply_len else b""

    def pwrite(self, offset: int, data: bytes) -> None:
        self._request(CMD_WRITE, offset, len(data), data)

    def pread(self, offset: int, length: int) -> bytes:
        return self._request(CMD_READ, offset, length, reply_len=length)

    def trim(self, offset: int, length: int) -> None:
        self._request(CMD_TRIM, offset, length)

    def zero(self, offset: int, length: int) -> None:
        self._request(CMD_WRITE_ZEROES, offset, length)

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        finally:
            self.sock.close()

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
