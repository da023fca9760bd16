"""The trio NBD server: listeners, connections, and a graceful stop.

A connection is served by parts, each a module: :mod:`.channel` (socket
I/O and the reply queue), :mod:`.negotiate` (the handshake driver),
:mod:`.ring` (the receive ring and its reader) and :mod:`.dispatch`
(running requests against the export; :mod:`.ordering` says which must
wait).

Shutdown: :meth:`NBDServer.stop` stops accepting, shuts down the read side of
every connection (so blocked receives return), lets each connection finish the
requests it already received (a WRITE cut short gets ESHUTDOWN), answers
them, and closes.  Cancel the surrounding scope to stop harder.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .budget import Budget
from .channel import Channel
from .config import ServerConfig, default_max_connections
from .dispatch import Dispatcher
from .export import ExportRegistry
from .handover import Handover
from .listen import accept_retrying
from .negotiate import negotiate
from .handshake import Handshake
from .proto import Negotiated, Transmission
from .ring import receive

Transfer = Callable[[trio.socket.SocketType, Negotiated, bytes], Awaitable[None]]
"""Takes a negotiated connection (socket, handshake outcome, trailing bytes)
elsewhere; the caller closes its socket and detaches the export afterwards."""

__all__ = ["NBDServer", "Transfer", "ServerConfig", "default_max_connections", "serve_connection", "serve_listener"]

log = logging.getLogger("uzram.nbd")


class NBDServer:
    """Serves exports of a registry on any number of listeners and connections."""

    def __init__(self, registry: ExportRegistry, config: ServerConfig | None = None,
                 transfer: Transfer | None = None) -> None:
        self.registry = registry
        self.transfer = transfer
        """If set, a negotiated connection is given to it instead of being
        served here (see :mod:`.handover`)."""
        self.config = config or ServerConfig()
        if self.config.ring_size < (1 << 20):
            raise ValueError("ring_size must be at least 1 MiB")
        self._connections: set[_Connection] = set()
        self.budget = Budget(self.config.max_buffer_memory)
        self.max_connections = self.config.max_connections or default_max_connections()
        self.refused = 0
        self.polled = 0
        """Requests received by busy polling, over the connections ended."""
        self.poll_misses = 0
        self._refused_logged = -1e9
        self._accept_scopes: set[trio.CancelScope] = set()
        self._stopping = False
        self._idle = trio.Event()
        self._idle.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def busy_polls(self) -> tuple[int, int]:
        """Busy polls that received a request, and polls that ended without
        one, over every connection served so far, open or ended."""
        hits, misses = self.polled, self.poll_misses
        for conn in self._connections:
            hits += conn.chan.polled
            misses += conn.chan.poll_misses
        return hits, misses

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent; call from the trio thread).

        Listeners stop accepting; each connection stops reading, answers what it
        already received, then closes.  ``wait_closed()`` waits for the end."""
        self._stopping = True
        for scope in self._accept_scopes:
            scope.cancel()
        for conn in list(self._connections):
            conn.stop()

    async def wait_closed(self) -> None:
        """Wait until no connection is open."""
        while self._connections:
            await self._idle.wait()

    async def serve_listener(
        self, listen_sock: trio.socket.SocketType, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept on an already listening socket until :meth:`stop`; then wait for
        this listener's connections to end.  The socket is not closed."""
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                self._accept_scopes.add(scope)
                if self._stopping:
                    scope.cancel()
                task_status.started()
                try:
                    while True:
                        sock = await accept_retrying(listen_sock, log)
                        if len(self._connections) >= self.max_connections:
                            self._refuse(sock)
                            continue
                        nursery.start_soon(self.serve_connection, sock)
                finally:
                    self._accept_scopes.discard(scope)

    def _refuse(self, sock: trio.socket.SocketType) -> None:
        """Over the connection limit: close at once (the client sees EOF
        before the greeting), with a warning at most every few seconds."""
        sock.close()
        self.refused += 1
        now = trio.current_time()
        if now - self._refused_logged >= 10:
            self._refused_logged = now
            log.warning("NBD: %d connection(s) refused: the limit of %d is reached",
                        self.refused, self.max_connections)

    async def serve_connection(self, sock: trio.socket.SocketType,
                               handed: tuple[Handover, bytes] | None = None) -> None:
        """Serve one accepted connection until it ends; closes ``sock``.
        ``handed``: the connection was negotiated elsewhere (see
        :meth:`serve_negotiated`).

        Client misbehaviour never raises out of here; nor do bugs (logged)."""
        try:
            conn = _Connection(self, sock, handed)
        except OSError as e:
            log.debug("NBD: cannot serve socket: %s", e)
            sock.close()
            return
        self._connections.add(conn)
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await conn.run()
        except Exception:
            log.exception("NBD connection failed")
        finally:
            self._connections.discard(conn)
            if not self._connections:
                self._idle.set()

    async def serve_negotiated(self, sock: trio.socket.SocketType, state: Handover, trailing: bytes) -> None:
        """Serve a connection whose handshake another process ran, from the
        transmission phase on: the export named in ``state`` is attached
        here (a refusal closes the connection), then it is served as any.
        The connection limit applies as to accepted connections."""
        if len(self._connections) >= self.max_connections:
            self._refuse(sock)
            return
        await self.serve_connection(sock, (state, trailing))


async def serve_connection(
    sock: trio.socket.SocketType,
    registry: ExportRegistry,
    *,
    config: ServerConfig | None = None,
    server: NBDServer | None = None,
) -> None:
    """Serve one connection (see :meth:`NBDServer.serve_connection`)."""
    await (server or NBDServer(registry, config)).serve_connection(sock)


async def serve_listener(
    listen_sock: trio.socket.SocketType,
    registry: ExportRegistry,
    *,
    config: ServerConfig | None = None,
    server: NBDServer | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept and serve until ``server.stop()`` (see :meth:`NBDServer.serve_listener`)."""
    srv = server or NBDServer(registry, config)
    await srv.serve_listener(listen_sock, task_status=task_status)


class _Connection:
    """One client connection: handshake, then the transmission loop."""

    def __init__(self, server: NBDServer, sock: trio.socket.SocketType,
                 handed: tuple[Handover, bytes] | None = None) -> None:
        self.server = server
        self.handed = handed
        self.config = server.config
        self.chan = Channel(sock, server.budget, server.config.idle_timeout)
        self.tx: Transmission | None = None
        """Set when transmission begins."""

    def stop(self) -> None:
        self.chan.stop()

    async def run(self) -> None:
        chan = self.chan
        cfg = self.config
        try:
            chan.set_options(cfg.send_buffer)
            if self.server.stopping:
                return
            if self.handed is not None:
                await self._continue(*self.handed)
                return
            tls_mode = cfg.tls.mode_for(chan.sock.family)
            hs = Handshake(self.server.registry, fast_zero=cfg.fast_zero, tls=tls_mode)
            ok = await negotiate(chan, hs, cfg.tls, cfg.handshake_timeout)
            neg = hs.result
            if neg is None:
                return
            try:
                if ok and self.server.transfer is not None:
                    await self.server.transfer(chan.sock, neg, hs.trailing_data())
                elif ok:
                    await self._transmission(neg, hs.trailing_data())
            finally:
                neg.export.detach()
        finally:
            self.server.polled += chan.polled
            self.server.poll_misses += chan.poll_misses
            chan.close()

    async def _continue(self, state: Handover, trailing: bytes) -> None:
        export = self.server.registry.lookup(state.name)
        if export is None:
            log.info("NBD: handed-over connection for unknown export %r", state.name)
            return
        try:
            export.attach()
        except OSError as e:
            log.info("NBD: handed-over connection refused by %s: %s", state.name, e)
            return
        try:
            neg = Negotiated(export, state.name, state.size, state.transmission_flags,
                             state.structured_replies, state.meta_context_id, state.no_zeroes)
            await self._transmission(neg, trailing)
        finally:
            export.detach()

    async def _transmission(self, neg: Negotiated, trailing: bytes) -> None:
        self.tx = Transmission(neg)
        async with trio.open_nursery() as nursery:
            disp = Dispatcher(self.chan, self.tx, neg.export, nursery,
                              max_outstanding=self.config.max_outstanding,
                              peers=self.server._connections)
            # the reader is a task of its own: resuming it after each wait
            # then passes through no frame of this connection's setup
            nursery.start_soon(receive, self.chan, disp, self.config, trailing)
        # every awaited request has completed; send what is left
        await self.chan.flush()
