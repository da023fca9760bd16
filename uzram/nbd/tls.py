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

import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

__all__ = [
    "MODES",
    "TLSError",
    "TLSSettings",
    "TLSStream",
    "server_context",
    "settings",
]

MODES: Final = ("off", "on", "require")
CA_CERT: Final = "ca-cert.pem"
SERVER_CERT: Final = "server-cert.pem"
SERVER_KEY: Final = "server-key.pem"
_COALESCE: Final = 16384
"""Reply buffers smaller than this are joined before encryption (one record)."""


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

    The SSLSocket takes its own socket object on ``fd``; :meth:`detach` leaves
    the descriptor open for its owner to close."""

    def __init__(self, fd: int, context: ssl.SSLContext) -> None:
        self.fd = fd
        sock = socket.socket(fileno=fd)
        self.ssl = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.ssl.settimeout(0.0)

    async def _wait(self, e: ssl.SSLError) -> None:
        if isinstance(e, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(self.fd)
        else:
            await trio.lowlevel.wait_readable(self.fd)

    async def handshake(self) -> None:
        """Run the TLS handshake; raises ssl.SSLError/OSError when it fails."""
        while True:
            try:
                self.ssl.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                await self._wait(e)

    def peer_subject(self) -> str:
        cert = self.ssl.getpeercert()
        if not cert:
            return ""
        return ",".join("=".join(kv) for rdn in cert.get("subject", ()) for kv in rdn)

    async def recv_into(self, view: memoryview) -> int:
        """Receive at least one byte of plaintext (0 = EOF), more if already there."""
        s = self.ssl
        while True:
            try:
                n = s.recv_into(view)
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                await self._wait(e)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return 0
        if n == 0:
            return 0
        size = len(view)
        # one call returns one record (16 KiB at most): take what else is ready
        while n < size:
            try:
                m = s.recv_into(view[n:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                break
            if m == 0:
                break
            n += m
        return n

    async def _write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        s = self.ssl
        while view.nbytes:
            try:
                n = s.send(view)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                await self._wait(e)
                continue
            view = view[n:]

    async def send_list(self, bufs: Sequence[Any]) -> None:
        """Encrypt and send every buffer; small ones are joined first."""
        pending = bytearray()
        for b in bufs:
            size = b.nbytes if type(b) is memoryview else len(b)
            if size < _COALESCE:
                pending += b
                if len(pending) < 4 * _COALESCE:
                    continue
                await self._write(pending)
                pending = bytearray()
                continue
            if pending:
                await self._write(pending)
                pending = bytearray()
            await self._write(b)
        if pending:
            await self._write(pending)

    def close_notify(self) -> None:
        """Best effort, never waits: send TLS close_notify."""
        try:
            self.ssl.unwrap()
        except (OSError, ValueError):
            pass

    def detach(self) -> None:
        self.ssl.detach()
