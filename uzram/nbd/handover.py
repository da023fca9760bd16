"""Handing a negotiated connection to another process.

A server that runs the handshake in one process and the transmission phase
in another (uzramd's process-per-device mode) sends the connected socket
with SCM_RIGHTS over a UNIX SOCK_SEQPACKET socket, in one message with what
the transmission phase needs: the outcome of the handshake
(:class:`Handover`) and the bytes the client sent after it.  The receiver
serves it with :meth:`uzram.nbd.server.NBDServer.serve_negotiated`, the same
transmission code as a connection negotiated in-process.

A message is ``u32 length of the JSON header | JSON header | trailing
bytes``; TLS connections cannot be handed over (their session state stays
with the process that ran the TLS handshake).
"""

from __future__ import annotations

import array
import json
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

import trio

from .proto import Negotiated

__all__ = ["Handover", "MAX_MESSAGE", "receive_message", "send_message"]

MAX_MESSAGE = 256 << 10
"""Largest message: the header plus the handshake's trailing bytes (< 64 KiB)."""
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Handover:
    """What the transmission phase needs of a finished handshake."""

    name: str
    size: int
    transmission_flags: int
    structured_replies: bool
    meta_context_id: int | None
    no_zeroes: bool

    @classmethod
    def of(cls, neg: Negotiated) -> Handover:
        return cls(neg.name, neg.size, neg.transmission_flags, neg.structured_replies,
                   neg.meta_context_id, neg.no_zeroes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Handover:
        meta = d["meta_context_id"]
        return cls(str(d["name"]), int(d["size"]), int(d["transmission_flags"]),
                   bool(d["structured_replies"]), None if meta is None else int(meta),
                   bool(d["no_zeroes"]))


async def send_message(chan: trio.socket.SocketType, header: dict[str, Any], data: bytes = b"",
                       fd: int | None = None) -> None:
    """Send one message, with ``fd`` attached if given (the sender keeps its copy)."""
    head = json.dumps(header).encode()
    msg = _LEN.pack(len(head)) + head + data
    if len(msg) > MAX_MESSAGE:
        raise ValueError("handover message too long")
    anc = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    await chan.sendmsg([msg], anc)


async def receive_message(chan: trio.socket.SocketType) -> tuple[dict[str, Any], bytes, int | None] | None:
    """One message: header, data and the descriptor sent with it; None at EOF."""
    fds = array.array("i")
    msg, anc, flags, _ = await chan.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
    if not msg and not fds:
        return None
    for extra in fds[1:]:     # never more than one is sent; do not leak any
        socket.close(extra)
    (n,) = _LEN.unpack_from(msg)
    header = json.loads(msg[_LEN.size:_LEN.size + n])
    if not isinstance(header, dict):
        raise ValueError("bad handover header")
    return header, bytes(msg[_LEN.size + n:]), (fds[0] if fds else None)
