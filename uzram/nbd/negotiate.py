"""The handshake driver: runs the sans-I/O :class:`~.proto.Handshake` over a
:class:`~.channel.Channel`, with STARTTLS and a time limit."""

from __future__ import annotations

import logging

import trio

from .channel import Channel
from .handshake import Handshake, HandshakeState
from .proto import ProtocolError
from .tls import TLSSettings, TLSStream

__all__ = ["negotiate"]

log = logging.getLogger("uzram.nbd")


async def negotiate(chan: Channel, hs: Handshake, tls: TLSSettings, timeout: float) -> bool:
    """Run option haggling; True if transmission may start."""
    buf = bytearray(65536)
    view = memoryview(buf)
    with trio.move_on_after(timeout) as scope:
        while True:
            out = hs.data_to_send()
            if out and not await chan.send_bytes(out):
                return False
            if hs.state is HandshakeState.TRANSMISSION:
                return not chan.stopping
            if hs.state is HandshakeState.CLOSED or chan.stopping:
                return False
            if hs.state is HandshakeState.STARTTLS:
                stream = _tls_stream(chan, tls)
                if stream is None or not await _start_tls(chan, stream):
                    return False
                hs.tls_established()
                continue
            try:
                n = await chan.recv_into(view)
            except OSError as e:
                log.debug("NBD: receive failed during handshake: %s", e)
                return False
            if n == 0:
                log.debug("NBD: client closed during handshake")
                return False
            try:
                hs.receive_data(bytes(view[:n]))
            except ProtocolError as e:
                log.debug("NBD: dropping client: %s", e)
                return False
    if scope.cancelled_caught:
        log.debug("NBD: handshake timed out")
    return False


def _tls_stream(chan: Channel, tls: TLSSettings) -> TLSStream | None:
    ctx = tls.context
    assert ctx is not None
    try:
        stream = TLSStream(chan.raw, ctx)
    except (OSError, ValueError) as e:
        log.debug("NBD: cannot start TLS: %s", e)
        return None
    stream.send_timeout = chan.idle_timeout
    chan.tls = stream   # from now on the channel ends with the TLS close_notify
    return stream


async def _start_tls(chan: Channel, stream: TLSStream) -> bool:
    """TLS handshake after STARTTLS's ACK went out; then all I/O is encrypted."""
    try:
        await stream.handshake()
    except OSError as e:  # ssl.SSLError included: bad or missing client certificate, ...
        log.info("NBD: TLS handshake failed: %s", e)
        return False
    log.debug("NBD: TLS up (%s), peer %r", stream.ssl.version(), stream.peer_subject())
    chan.use_tls(stream.recv_into, stream.send_list)   # the plaintext methods stay untouched
    return True
