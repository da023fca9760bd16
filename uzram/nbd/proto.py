"""Sans-I/O NBD transmission: request parsing and validation, reply encoding.

No sockets and no trio here.  :class:`Transmission` parses and validates
28-byte requests in place in a receive buffer and encodes replies.  Its
:meth:`Transmission.parse` is the server's hot path, so a request "event" is
a plain tuple ``(cmd, flags, cookie, offset, length, error)``
(:data:`~.ordering.Request`); ``error`` is 0 or the NBD errno to answer
with.  A WRITE's ``length`` payload bytes always follow its header, whether
the request is valid or not.

The handshake that precedes transmission is :mod:`.handshake`; its outcome,
:class:`Negotiated`, is defined here, where transmission consumes it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Final

from . import constants as C
from .export import BlockExport
from .ordering import MUTATING, Request

__all__ = [
    "Negotiated",
    "ProtocolError",
    "Request",
    "Transmission",
    "REQUEST_SIZE",
    "wire_error",
]

REQUEST_SIZE: Final = 28


class ProtocolError(Exception):
    """The client broke the protocol in a way that ends the connection."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """Outcome of a successful handshake; ``export`` has been attached."""

    export: BlockExport
    name: str
    size: int
    transmission_flags: int
    structured_replies: bool
    meta_context_id: int | None  # base:allocation's id, or None if not selected
    no_zeroes: bool


_REQ = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_SR_HDR = struct.Struct(">IHHQI")
_SR_DATA_HDR = struct.Struct(">IHHQIQ")
_SR_ERROR = struct.Struct(">IHHQIIH")

_KNOWN_CMD_FLAGS = (
    C.CMD_FLAG_FUA | C.CMD_FLAG_NO_HOLE | C.CMD_FLAG_DF | C.CMD_FLAG_REQ_ONE | C.CMD_FLAG_FAST_ZERO
)
_RANGE_CMDS = frozenset(
    {C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_CACHE, C.CMD_WRITE_ZEROES, C.CMD_BLOCK_STATUS}
)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return _SIMPLE.pack(C.SIMPLE_REPLY_MAGIC, error, cookie)


def read_chunk_header(cookie: int, offset: int, length: int) -> bytes:
    """Header of a final OFFSET_DATA chunk carrying ``length`` data bytes."""
    return _SR_DATA_HDR.pack(
        C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_OFFSET_DATA, cookie, 8 + length, offset
    )


def data_chunk_header(cookie: int, offset: int, length: int) -> bytes:
    """Header of an OFFSET_DATA chunk that more chunks of the same reply follow."""
    return _SR_DATA_HDR.pack(C.STRUCTURED_REPLY_MAGIC, 0, C.REPLY_TYPE_OFFSET_DATA, cookie, 8 + length, offset)


def hole_chunk(cookie: int, offset: int, length: int, *, done: bool) -> bytes:
    return _SR_HDR.pack(
        C.STRUCTURED_REPLY_MAGIC,
        C.REPLY_FLAG_DONE if done else 0,
        C.REPLY_TYPE_OFFSET_HOLE,
        cookie,
        12,
    ) + struct.pack(">QI", offset, length)


def done_chunk(cookie: int) -> bytes:
    return _SR_HDR.pack(C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_NONE, cookie, 0)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    msg = message.encode()[:4096]
    return (
        _SR_ERROR.pack(
            C.STRUCTURED_REPLY_MAGIC,
            C.REPLY_FLAG_DONE,
            C.REPLY_TYPE_ERROR,
            cookie,
            6 + len(msg),
            error,
            len(msg),
        )
        + msg
    )


def block_status_chunk(
    cookie: int, context_id: int, extents: list[tuple[int, int]], length: int, req_one: bool
) -> bytes:
    """Final BLOCK_STATUS chunk: extents clipped to ``length``, merged, ≥1 of them.

    Raises ValueError if ``extents`` describes nothing.
    """
    lens: list[int] = []
    flags: list[int] = []
    total = 0
    for elen, eflags in extents:
        if elen <= 0:
            break
        eflags &= C.STATE_HOLE | C.STATE_ZERO
        elen = min(elen, length - total)
        if flags and flags[-1] == eflags:
            lens[-1] += elen
        else:
            if req_one and lens:
                break
            if len(lens) >= C.MAX_EXTENTS:
                break
            lens.append(elen)
            flags.append(eflags)
        total += elen
        if total >= length:
            break
    if not lens:
        raise ValueError("block_status returned no extents")
    body = struct.pack(f">I{2 * len(lens)}I", context_id, *[v for pair in zip(lens, flags) for v in pair])
    return (
        _SR_HDR.pack(
            C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_BLOCK_STATUS, cookie, len(body)
        )
        + body
    )


def wire_error(host_errno: int | None, flags: int = 0) -> int:
    """Host errno -> NBD error, refined per command flags as nbdkit does."""
    err = C.nbd_errno(host_errno)
    if err == C.ENOTSUP and not flags & C.CMD_FLAG_FAST_ZERO:
        return C.EINVAL
    if err == C.EOVERFLOW and not flags & C.CMD_FLAG_DF:
        return C.EINVAL
    return err


class Transmission:
    """Request validation and reply encoding for one negotiated connection."""

    __slots__ = (
        "size",
        "flags",
        "structured",
        "meta_context_id",
        "read_only",
        "fast_mask",
        "_unpack",
    )

    def __init__(self, negotiated: Negotiated) -> None:
        self.size = negotiated.size
        self.flags = negotiated.transmission_flags
        self.structured = negotiated.structured_replies
        self.meta_context_id = negotiated.meta_context_id
        self.read_only = bool(self.flags & C.FLAG_READ_ONLY)
        self.fast_mask = 0xFFFF & ~C.CMD_FLAG_FUA if self.flags & C.FLAG_SEND_FUA else 0xFFFF
        """Flag bits that send a READ or WRITE down the full validation."""
        self._unpack = _REQ.unpack_from

    def parse(self, buf: bytes | bytearray | memoryview | mmap.mmap, pos: int, end: int) -> Request | None:
        """The request whose header starts at ``buf[pos]``, or None if < 28 bytes.

        Raises ProtocolError on a bad magic or an absurdly large WRITE payload.
        """
        if end - pos < 28:
            return None
        magic, flags, cmd, cookie, offset, length = self._unpack(buf, pos)
        # the test Dispatcher.process repeats inline
        if (
            magic == 0x25609513
            and cmd <= 1
            and not flags & self.fast_mask
            and 0 < length <= 0x4000000
            and offset + length <= self.size
            and (cmd == 0 or not self.read_only)
        ):
            return (cmd, flags, cookie, offset, length, 0)
        if magic != C.REQUEST_MAGIC:
            raise ProtocolError(f"bad request magic 0x{magic:08x}")
        if cmd == C.CMD_WRITE and length > C.MAX_SKIP_PAYLOAD:
            raise ProtocolError(f"WRITE payload of {length} bytes is too large to skip")
        return (cmd, flags, cookie, offset, length, self.validate(cmd, flags, offset, length))

    def validate(self, cmd: int, flags: int, offset: int, length: int) -> int:
        """NBD errno for a request (0 if valid); same checks and order as nbdkit."""
        if cmd == C.CMD_DISC:
            return 0
        if self.read_only and cmd in MUTATING:
            return C.EPERM
        if cmd in _RANGE_CMDS:
            if length == 0:
                return C.EINVAL
            if offset + length > self.size:
                return C.ENOSPC if cmd in (C.CMD_WRITE, C.CMD_WRITE_ZEROES) else C.EINVAL
        elif cmd == C.CMD_FLUSH:
            if offset or length:
                return C.EINVAL
        else:
            return C.EINVAL  # unknown command
        if flags & ~_KNOWN_CMD_FLAGS:
            return C.EINVAL
        if flags & C.CMD_FLAG_NO_HOLE and cmd != C.CMD_WRITE_ZEROES:
            return C.EINVAL
        if flags & C.CMD_FLAG_FAST_ZERO and (
            cmd != C.CMD_WRITE_ZEROES or not self.flags & C.FLAG_SEND_FAST_ZERO
        ):
            return C.EINVAL
        if flags & C.CMD_FLAG_DF:  # SEND_DF is never advertised
            return C.EINVAL
        if flags & C.CMD_FLAG_REQ_ONE and cmd != C.CMD_BLOCK_STATUS:
            return C.EINVAL
        if flags & C.CMD_FLAG_FUA and not self.flags & C.FLAG_SEND_FUA:
            return C.EINVAL
        if cmd in (C.CMD_READ, C.CMD_WRITE) and length > C.MAX_PAYLOAD:
            return C.EINVAL
        if cmd == C.CMD_BLOCK_STATUS and self.meta_context_id is None:
            return C.EINVAL
        return 0

    # --- replies ---------------------------------------------------------------

    def read_header(self, cookie: int, offset: int, length: int) -> bytes:
        """What precedes ``length`` bytes of READ data."""
        if self.structured:
            return read_chunk_header(cookie, offset, length)
        return _SIMPLE.pack(C.SIMPLE_REPLY_MAGIC, 0, cookie)

    def error_reply(self, cookie: int, cmd: int, error: int, message: str = "") -> bytes:
        """Error reply: a structured ERROR chunk for READ/BLOCK_STATUS under SR."""
        if self.structured and (cmd == C.CMD_READ or cmd == C.CMD_BLOCK_STATUS):
            return error_chunk(cookie, error, message)
        return _SIMPLE.pack(C.SIMPLE_REPLY_MAGIC, error, cookie)

    def block_status_reply(
        self, cookie: int, flags: int, length: int, extents: list[tuple[int, int]]
    ) -> bytes:
        assert self.meta_context_id is not None
        return block_status_chunk(
            cookie, self.meta_context_id, extents, length, bool(flags & C.CMD_FLAG_REQ_ONE)
        )
