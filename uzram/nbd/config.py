"""The NBD server's configuration."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from .tls import TLSSettings

__all__ = ["ServerConfig", "default_max_connections"]


def default_max_connections() -> int:
    """One descriptor per connection, 32 kept for everything else
    (listeners, control clients, backing files, FUSE), at most 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(4, min(1024, soft - 32))


@dataclass(frozen=True)
class ServerConfig:
    ring_size: int = 4 << 20
    """Receive ring per connection; larger WRITEs get a buffer of their own."""
    max_outstanding: int = 256
    """Requests awaiting an export awaitable or deferred, before reading pauses."""
    max_buffer_memory: int = 64 << 20
    """The server-wide budget for bytes held on behalf of requests (see
    :mod:`uzram.nbd.budget`); reading pauses while it is spent."""
    idle_timeout: float = 60.0
    """A connection that stalls this long in the middle of a request (a
    header or payload cut short, replies it does not read) is closed."""
    handshake_timeout: float = 30.0
    fast_zero: bool = True
    compact_below: int = 256 << 10
    """Move a partial request to the ring's start when less room than this is left."""
    max_connections: int | None = None
    """Connections served at once; more are closed on accept.  None: sized
    from the descriptor limit (see :func:`default_max_connections`)."""
    prefault_ring: bool = False
    """Fault the receive ring in whole at connection start (and so lock it,
    under mlockall): a swap server must not page-fault while the kernel
    copies a swap-out's payload into it."""
    send_buffer: int | None = 2 << 20
    """SO_SNDBUF for connections (None: leave the default).  A larger send
    buffer lets big READ replies go out in fewer wakeups."""
    busy_poll: float = 0.0
    """Seconds to spin on the socket between requests before sleeping, for
    a client sending one request at a time (0: never; see :mod:`.busypoll`)."""
    busy_poll_arm: float = 1e-3
    """Polling is armed only after a wait for a request shorter than this."""
    tls: TLSSettings = TLSSettings()
    """STARTTLS policy and certificates (see :mod:`uzram.nbd.tls`)."""
