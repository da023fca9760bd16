"""TLS for the NBD server: policy, SSL context, and a non-blocking TLS stream.

Certificates use nbdkit's directory layout: ``ca-cert.pem``,
``server-cert.pem`` and ``server-key.pem``.  With ``verify_peer`` a client
must present a certificate signed by ``ca-cert.pem``.

The policy is nbdkit's ``--tls``: ``off`` (STARTTLS refused with
ERR_POLICY), ``on`` (STARTTLS offered, plaintext still served), ``require``
(every option but STARTTLS and ABORT refused with ERR_TLS_REQD until TLS is
up).  It applies to TCP connections; UNIX socket connections, which the
filesystem's permissions already guard, are never required to use TLS but may
start it when certificates are configured (see :meth:`TLSSettings.mode_for`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import trio

__all__ = [
    "MODES",
    "TLSError",
    "TLSSettings",
    "TLSStream",
    "server_context",
    "settings",
]

log = logging.getLogger("uzram.nbd")

MODES: Final = ("off", "on", "require")
CA_CERT: Final = "ca-cert.pem"
SERVER_CERT: Final = "server-cert.pem"
SERVER_KEY: Final = "server-key.pem"
_COALESCE: Final = 16384
"""Reply buffers smaller than this are joined before encryption (one record)."""
_RECV_SIZE: Final = 256 << 10
_SEND_SIZE: Final = 256 << 10
"""Ciphertext is sent once this much is pending (and at the end of a batch)."""
_MSG_NOSIGNAL: Final = getattr(socket, "MSG_NOSIGNAL", 0)


class TLSError(ValueError):
    """TLS is misconfigured; the message says what to do."""


@dataclass(frozen=True)
class TLSSettings:
    """The TLS policy of a server and, unless ``mode`` is off, its context."""

    mode: str = "off"
    context: ssl.SSLContext | None = None
    explicit: bool = False
    """Whether the mode was chosen explicitly (``--tls off`` allows plaintext TCP)."""

    def mode_for(self, family: int) -> str:
        """Policy for one connection: UNIX sockets never require TLS."""
        if family == socket.AF_UNIX and self.mode == "require":
            return "on"
        return self.mode

    def check_tcp(self) -> None:
        """Refuse plaintext TCP unless it was asked for with ``--tls off``."""
        if self.mode == "off" and not self.explicit:
            raise TLSError(
                "refusing to serve NBD over TCP without TLS: anyone who can reach the port "
                "could read and write the devices. Give --tls-certificates DIR (a directory "
                f"with {CA_CERT}, {SERVER_CERT} and {SERVER_KEY}) to encrypt it, "
                "or --tls off to serve plaintext anyway"
            )


def server_context(certdir: str | os.PathLike[str], *, verify_peer: bool = False) -> ssl.SSLContext:
    """A server SSLContext from an nbdkit-style certificate directory."""
    d = Path(certdir)
    if not d.is_dir():
        raise TLSError(f"TLS certificate directory {d} does not exist")
    need = [SERVER_CERT, SERVER_KEY] + ([CA_CERT] if verify_peer else [])
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise TLSError(
            f"TLS certificate directory {d} lacks {', '.join(missing)} "
            f"(expected {CA_CERT}, {SERVER_CERT}, {SERVER_KEY}, as for nbdkit)"
        )
    key_mode = (d / SERVER_KEY).stat().st_mode
    if key_mode & 0o077:
        log.warning("TLS key %s is open to group or others (mode %o): chmod 600 it",
                    d / SERVER_KEY, key_mode & 0o777)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        ctx.load_cert_chain(d / SERVER_CERT, d / SERVER_KEY)
    except (OSError, ssl.SSLError) as e:
        raise TLSError(f"cannot load {d / SERVER_CERT} with {d / SERVER_KEY}: {e}") from e
    if verify_peer:
        try:
            ctx.load_verify_locations(cafile=d / CA_CERT)
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"cannot load {d / CA_CERT}: {e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    ctx.num_tickets = 0  # no resumption: every connection does a full handshake
    return ctx


def settings(
    mode: str | None, certdir: str | os.PathLike[str] | None, verify_peer: bool = False
) -> TLSSettings:
    """Resolve ``--tls``/``--tls-certificates``/``--tls-verify-peer``.

    Without ``--tls``, certificates mean ``require`` and no certificates ``off``
    (which a TCP listener then refuses: see :meth:`TLSSettings.check_tcp`)."""
    if mode is not None and mode not in MODES:
        raise TLSError(f"bad TLS mode {mode!r}: use off, on or require")
    if verify_peer and certdir is None:
        raise TLSError("--tls-verify-peer needs --tls-certificates DIR (with its ca-cert.pem)")
    if mode is None:
        mode = "off" if certdir is None else "require"
        explicit = False
    else:
        explicit = True
    if mode == "off":
        return TLSSettings("off", None, explicit)
    if certdir is None:
        raise TLSError(f"--tls {mode} needs --tls-certificates DIR (with {SERVER_CERT} and {SERVER_KEY})")
    return TLSSettings(mode, server_context(certdir, verify_peer=verify_peer), explicit)


class TLSStream:
    """Server-side TLS over a connected non-blocking socket's file descriptor.

    An ssl.SSLObject between two MemoryBIOs: ciphertext moves in large
    ``recv``/``send`` calls on ``sock`` (several TLS records per system call),
    and the descriptor stays its owner's."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._eof = False
        self.send_timeout = math.inf
        """Seconds a send may wait for room before trio.TooSlowError."""

    async def _flush(self) -> None:
        """Send the ciphertext the SSLObject produced."""
        out = self._out
        if not out.pending:
            return
        view = memoryview(out.read())
        sock = self.sock
        while view.nbytes:
            try:
                n = sock.send(view, _MSG_NOSIGNAL)
            except BlockingIOError:
                with trio.fail_after(self.send_timeout):
                    await trio.lowlevel.wait_writable(self.fd)
                continue
            view = view[n:]

    async def _fill(self) -> None:
        """Receive more ciphertext (EOF is passed on to the SSLObject)."""
        if self._eof:
            raise ssl.SSLEOFError("EOF from the peer")
        while True:
            try:
                data = self.sock.recv(_RECV_SIZE)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
        if data:
            self._in.write(data)
        else:
            self._eof = True
            self._in.write_eof()

    async def handshake(self) -> None:
        """Run the TLS handshake; raises ssl.SSLError/OSError when it fails."""
        while True:
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError:
                await self._flush_quietly()  # the alert tells the client why
                raise
        await self._flush()

    async def _flush_quietly(self) -> None:
        try:
            with trio.move_on_after(1):
                await self._flush()
        except OSError:
            pass

    def peer_subject(self) -> str:
        cert = self.ssl.getpeercert()
        if not cert:
            return ""
        return ",".join("=".join(kv) for rdn in cert.get("subject", ()) for kv in rdn)

    async def recv_into(self, view: memoryview) -> int:
        """Receive at least one byte of plaintext (0 = EOF), more if already there."""
        s = self.ssl
        size = len(view)
        while True:
            try:
                n = _read_into(s, size, view)
                break
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._flush()
                try:
                    await self._fill()
                except ssl.SSLEOFError:
                    return 0
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return 0
        # one read returns one record (16 KiB at most): take the others received
        while 0 < n < size and self._in.pending:
            try:
                m = _read_into(s, size - n, view[n:])
            except (ssl.SSLWantReadError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                break
            if m == 0:
                break
            n += m
        return n

    async def send_list(self, bufs: Sequence[Any]) -> None:
        """Encrypt every buffer, then send the records together."""
        write = self.ssl.write
        pending = bytearray()
        out = self._out
        for b in bufs:
            size = b.nbytes if type(b) is memoryview else len(b)
            if size < _COALESCE:
                pending += b
                if len(pending) < _COALESCE:
                    continue
                write(pending)
                pending = bytearray()
            else:
                if pending:
                    write(pending)
                    pending = bytearray()
                write(b)
            if out.pending >= _SEND_SIZE:
                await self._flush()
        if pending:
            write(pending)
        await self._flush()

    def close_notify(self) -> None:
        """Best effort, never waits: send TLS close_notify."""
        try:
            self.ssl.unwrap()
        except (OSError, ValueError):
            pass
        try:
            if self._out.pending:
                self.sock.send(self._out.read(), _MSG_NOSIGNAL)
        except OSError:
            pass


def _read_into(s: ssl.SSLObject, size: int, view: memoryview) -> int:
    """``SSLObject.read`` into a buffer: it returns the byte count (typeshed
    declares ``bytes`` whatever the arguments)."""
    return cast(int, s.read(size, view))
