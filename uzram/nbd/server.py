"""The trio transport of the NBD server.

One reader per connection ``recv_into``s a preallocated ring, parses every
complete request in place (:meth:`uzram.nbd.proto.Transmission.parse`),
executes it synchronously against the export (WRITE payloads are passed as
memoryviews into the ring) and queues the reply; the replies of a batch go out
together in one ``sendmsg``.  No task, coroutine or checkpoint is spent per
request on this path.

When an export call returns an awaitable, the request completes in its own
task and its reply is sent whenever it is ready (out of order).

Ordering (:mod:`uzram.nbd.ordering`): while an awaited WRITE/TRIM/WRITE_ZEROES
is outstanding, later requests overlapping it (ranges widened to the
export's ``ordering_granularity``) are deferred, a WRITE payload copied, and
run once it completes, so the outcome equals running the requests one by
one in arrival order.  Requests elsewhere keep running.

Replies never interleave: whichever task finds the send path idle becomes the
sender and drains the queue, the others only append to it.  Reading pauses
while too many requests are outstanding or too many reply bytes are queued;
sending never pauses.

Shutdown: :meth:`NBDServer.stop` stops accepting, shuts down the read side of
every connection (so blocked receives return), lets each connection finish the
requests it already received (a WRITE cut short gets ESHUTDOWN), answers
them, and closes.  Cancel the surrounding scope to stop harder.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import resource
import socket
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import trio

from . import constants as C
from .export import BlockExport, ExportRegistry
from .listen import accept_retrying
from .ordering import Ordering
from .budget import PIECE, Budget
from .proto import (
    Handshake,
    HandshakeState,
    Negotiated,
    ProtocolError,
    Transmission,
    data_chunk_header,
    read_chunk_header,
    simple_reply,
    wire_error,
)
from .tls import TLSSettings, TLSStream

__all__ = ["NBDServer", "ServerConfig", "serve_connection", "serve_listener"]

log = logging.getLogger("uzram.nbd")

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_PIECE_ALIGN = -C.PREFERRED_BLOCK_SIZE   # streamed WRITE pieces end on these boundaries
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_SIMPLE_OK = struct.Struct(">IIQ")
_LEN = struct.Struct(">I")
_COOKIE = struct.Struct(">Q")


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
    tls: TLSSettings = TLSSettings()
    """STARTTLS policy and certificates (see :mod:`uzram.nbd.tls`)."""


class NBDServer:
    """Serves exports of a registry on any number of listeners and connections."""

    def __init__(self, registry: ExportRegistry, config: ServerConfig | None = None) -> None:
        self.registry = registry
        self.config = config or ServerConfig()
        if self.config.ring_size < (1 << 20):
            raise ValueError("ring_size must be at least 1 MiB")
        self._connections: set[_Connection] = set()
        self.budget = Budget(self.config.max_buffer_memory)
        self.max_connections = self.config.max_connections or default_max_connections()
        self.refused = 0
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

    async def serve_connection(self, sock: trio.socket.SocketType) -> None:
        """Serve one accepted connection until it ends; closes ``sock``.

        Client misbehaviour never raises out of here; nor do bugs (logged)."""
        try:
            conn = _Connection(self, sock)
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

    def __init__(self, server: NBDServer, sock: trio.socket.SocketType) -> None:
        self.server = server
        self.config = server.config
        self.sock = sock
        self.fd = sock.fileno()
        # A stdlib socket object on the same fd: non-blocking calls without
        # trio's per-call checkpoints; detached (not closed) at the end.
        self.raw = socket.socket(fileno=self.fd)
        self.stopping = False
        self.broken = False
        self.disc = False
        self.out: list[Any] = []
        self.out_bytes = 0    # queued reply bytes (charged to the budget)
        self.held_extra = 0   # READ data being fetched, deferred WRITE copies (charged too)
        self.budget = server.budget
        self.pending_read: tuple[int, int, int, int, int, int] | None = None
        self.sending = False
        self.outstanding = 0  # export awaitables being awaited
        self.order = Ordering()   # the export's granularity is known after the handshake
        self.next_token = 0
        self.skip = 0
        self.progress: trio.Event | None = None
        self.yielded = False
        self.limited = False
        self.nursery: trio.Nursery | None = None
        self.tx: Transmission | None = None
        self.export: BlockExport | None = None
        self.tls: TLSStream | None = None
        """Set once STARTTLS succeeded; ``_recv_into``/``_send_list`` then go through it."""

    # --- lifecycle --------------------------------------------------------------

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        try:
            self.raw.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        self._poke()

    async def run(self) -> None:
        try:
            if self.sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            if self.config.send_buffer:
                try:
                    self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer)
                except OSError:
                    pass
            if self.server.stopping:
                return
            tls_mode = self.config.tls.mode_for(self.sock.family)
            hs = Handshake(self.server.registry, fast_zero=self.config.fast_zero, tls=tls_mode)
            ok = await self._negotiate(hs)
            neg = hs.result
            if neg is None:
                return
            try:
                if ok:
                    await self._transmission(neg, hs.trailing_data())
            finally:
                neg.export.detach()
        finally:
            if self.tls is not None:
                self.tls.close_notify()
            self.raw.detach()
            self.sock.close()

    # --- raw socket I/O ------------------------------------------------------------

    async def _recv_into(self, view: memoryview) -> int:
        """Receive at least one byte (0 = EOF).  Raises OSError on errors."""
        raw = self.raw
        while True:
            try:
                return raw.recv_into(view)
            except BlockingIOError:
                self.yielded = True
                await trio.lowlevel.wait_readable(self.fd)

    async def _send_list(self, bufs: list[Any]) -> None:
        """Send every buffer; handles partial sends and IOV_MAX."""
        raw = self.raw
        i = 0
        n = len(bufs)
        while i < n:
            chunk = bufs if (i == 0 and n <= _IOV_MAX) else bufs[i : i + _IOV_MAX]
            try:
                sent = raw.sendmsg(chunk, (), _MSG_NOSIGNAL)
            except BlockingIOError:
                self.yielded = True
                # only here, where the send would block, is it timed: a cancel
                # scope per reply costs more than a 4 KiB request
                with trio.fail_after(self.config.idle_timeout):
                    await trio.lowlevel.wait_writable(self.fd)
                continue
            while i < n:
                b = bufs[i]
                blen = b.nbytes if type(b) is memoryview else len(b)
                if sent >= blen:
                    sent -= blen
                    i += 1
                else:
                    if sent:
                        bufs[i] = memoryview(b).cast("B")[sent:]
                    break

    async def _send_bytes(self, data: bytes) -> bool:
        try:
            await self._send_list([data])
        except (OSError, *_GONE) as e:
            log.debug("NBD: send failed during handshake: %s", e)
            return False
        return True

    async def flush(self) -> None:
        """Send everything queued, unless another task is already doing so."""
        if self.sending:
            return
        self.sending = True
        try:
            while self.out:
                bufs = self.out
                nbytes = self.out_bytes
                self.out = []
                if not self.broken:
                    await self._send_timed(bufs)
                self.out_bytes -= nbytes
                self.budget.release(nbytes)
                self._poke()
        finally:
            self.sending = False

    async def _send_timed(self, bufs: list[Any]) -> None:
        """Send, or mark the connection broken: on errors, and when the client
        reads nothing for ``idle_timeout`` (its replies would pin the budget)."""
        try:
            await self._send_list(bufs)   # times out where it would block
        except trio.TooSlowError:
            log.debug("NBD: client stopped reading its replies; closing")
            self.broken = True
            self._shutdown_both()
        except OSError as e:
            if not isinstance(e, _GONE):
                log.debug("NBD: send failed: %s", e)
            self.broken = True

    def _shutdown_both(self) -> None:
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _charge(self, n: int) -> None:
        """Reply bytes queued."""
        self.out_bytes += n
        self.budget.charge(n)

    def _hold(self, n: int) -> None:
        """Bytes held for a request before its reply is queued (negative: let go)."""
        self.held_extra += n
        if n >= 0:
            self.budget.charge(n)
        else:
            self.budget.release(-n)

    def _poke(self) -> None:
        ev = self.progress
        if ev is not None:
            self.progress = None
            ev.set()

    def _paused(self) -> bool:
        """Whether to stop parsing requests for now (see :mod:`.budget`)."""
        if self.outstanding + len(self.order.deferred) >= self.config.max_outstanding:
            return True
        held = self.out_bytes + self.held_extra
        if held == 0:
            return False
        budget = self.budget
        return held >= budget.share(self.server.connection_count) or budget.used >= budget.limit

    # --- handshake ------------------------------------------------------------

    async def _start_tls(self) -> bool:
        """TLS handshake after STARTTLS's ACK went out; then all I/O is encrypted."""
        ctx = self.config.tls.context
        assert ctx is not None
        try:
            stream = TLSStream(self.raw, ctx)
            stream.send_timeout = self.config.idle_timeout
        except (OSError, ValueError) as e:
            log.debug("NBD: cannot start TLS: %s", e)
            return False
        self.tls = stream
        try:
            await stream.handshake()
        except OSError as e:  # ssl.SSLError included: bad or missing client certificate, ...
            log.info("NBD: TLS handshake failed: %s", e)
            return False
        log.debug("NBD: TLS up (%s), peer %r", stream.ssl.version(), stream.peer_subject())
        # the slower TLS path; the plaintext methods stay untouched
        self._recv_into = stream.recv_into  # type: ignore[method-assign]
        self._send_list = stream.send_list  # type: ignore[method-assign]
        return True

    async def _negotiate(self, hs: Handshake) -> bool:
        """Run option haggling; True if transmission may start."""
        buf = bytearray(65536)
        view = memoryview(buf)
        with trio.move_on_after(self.config.handshake_timeout) as scope:
            while True:
                out = hs.data_to_send()
                if out and not await self._send_bytes(out):
                    return False
                if hs.state is HandshakeState.TRANSMISSION:
                    return not self.stopping
                if hs.state is HandshakeState.CLOSED or self.stopping:
                    return False
                if hs.state is HandshakeState.STARTTLS:
                    if not await self._start_tls():
                        return False
                    hs.tls_established()
                    continue
                try:
                    n = await self._recv_into(view)
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
                    # send whatever was produced before the violation? no: drop.
                    return False
        if scope.cancelled_caught:
            log.debug("NBD: handshake timed out")
        return False

    # --- transmission -----------------------------------------------------------

    async def _transmission(self, neg: Negotiated, trailing: bytes) -> None:
        self.tx = Transmission(neg)
        self.export = neg.export
        self.order = Ordering(getattr(neg.export, "ordering_granularity", 1))
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await self._reader(trailing)
            # every awaited request has completed; send what is left
        finally:
            self.nursery = None
        await self.flush()

    async def _reader(self, trailing: bytes) -> None:
        cfg = self.config
        size = cfg.ring_size
        # private anonymous memory: pages the traffic never reaches stay uncommitted
        ring = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if cfg.prefault_ring:   # by touch: MAP_POPULATE is ignored under mlockall(MCL_ONFAULT)
            for i in range(0, size, 4096):
                ring[i] = 0
        view = memoryview(ring)
        end = len(trailing)
        ring[:end] = trailing
        pos = 0
        process = self._process
        while True:
            if end > pos and not self._paused():
                try:
                    pos = process(ring, view, pos, end)
                except ProtocolError as e:
                    log.debug("NBD: dropping client: %s", e)
                    return
            if self.out:
                await self.flush()
            if self.disc or self.broken:
                return
            if self.pending_read is not None:
                req, self.pending_read = self.pending_read, None
                await self._stream_read(req)
                continue
            if self.limited or self._paused():
                # a bound was hit: wait for room, then resume parsing
                self.limited = False
                if self._paused():
                    await self._wait_for_room()
                    self.yielded = True
                continue
            if self.stopping:
                self._answer_cut_short(ring, pos, end)
                return
            if not self.yielded:
                await trio.lowlevel.checkpoint()  # stay fair under sustained load
            self.yielded = False
            # make room for what comes next
            if pos == end:
                pos = end = 0
            elif self.skip == 0:
                need = self._bytes_needed(ring, pos, end)
                if need > size - 28 and end - pos >= 28:
                    pos, end = await self._stream_write(ring, view, pos, end)
                    if pos < 0:
                        return
                    continue
                if pos + need > size or size - end < cfg.compact_below:
                    n = end - pos
                    ring[:n] = view[pos:end]
                    pos, end = 0, n
            try:
                if self.skip:
                    # discard the rest of a rejected WRITE payload (ring is empty)
                    n = await self._recv_timed(view[: min(self.skip, size)], True)
                    if n == 0:
                        log.debug("NBD: EOF inside a rejected WRITE payload")
                        return
                    self.skip -= n
                    continue
                n = await self._recv_timed(view[end:], end > pos)
            except OSError as e:
                log.debug("NBD: receive failed: %s", e)
                return
            if n == 0:
                if self.stopping:
                    self._answer_cut_short(ring, pos, end)
                elif end > pos:
                    log.debug("NBD: EOF in the middle of a request")
                return
            end += n

    async def _recv_timed(self, view: memoryview, mid_request: bool) -> int:
        """Receive; in the middle of a request, a client silent for
        ``idle_timeout`` counts as gone (0 is returned, as at EOF)."""
        if not mid_request:
            return await self._recv_into(view)
        with trio.move_on_after(self.config.idle_timeout):
            return await self._recv_into(view)
        log.debug("NBD: client stalled in the middle of a request; closing")
        return 0

    async def _wait_for_room(self) -> None:
        """Sleep until this connection's replies drain or the budget has room."""
        ev = self.progress = trio.Event()
        poke = self._poke
        self.budget.wait_for_room(poke)
        try:
            await ev.wait()
        finally:
            self.budget.forget(poke)

    async def _wait_unordered(self, req: tuple[int, int, int, int, int, int]) -> None:
        """Wait until ``req`` no longer overlaps an outstanding mutation or an
        earlier deferred request (streamed requests are not deferred)."""
        order = self.order
        while (order.barriers or order.deferred) and order.must_wait(req):
            ev = self.progress = trio.Event()
            await ev.wait()

    def _bytes_needed(self, ring: mmap.mmap, pos: int, end: int) -> int:
        """Size of the (incomplete) request at ``pos``."""
        if end - pos < 28:
            return 28
        length: int = _LEN.unpack_from(ring, pos + 24)[0]
        return 28 + length  # only an incomplete WRITE stops the parser here

    def _answer_cut_short(self, ring: mmap.mmap, pos: int, end: int) -> None:
        """On stop: ESHUTDOWN for a request whose header arrived but not its payload."""
        if end - pos >= 28:
            cookie = _COOKIE.unpack_from(ring, pos + 8)[0]
            self.out.append(simple_reply(cookie, C.ESHUTDOWN))
            self._charge(16)

    async def _stream_write(self, ring: mmap.mmap, view: memoryview, pos: int, end: int) -> tuple[int, int]:
        """A WRITE larger than the ring: its payload is applied piece by piece
        as it arrives (pieces end on 4 KiB boundaries of the device), so no
        buffer is allocated ahead of the bytes received.  Returns the ring's
        new (pos, end), or (-1, -1) when the connection ends.

        Requests after it are parsed only once it has been applied whole.
        Until its reply, the range holds a mix of old and new data, as a
        block device's does during a large write."""
        assert self.tx is not None and self.export is not None
        req = self.tx.parse(view, pos, end)
        assert req is not None and req[0] == C.CMD_WRITE and req[5] == 0
        _, flags, cookie, offset, length, _ = req
        fua = bool(flags & C.CMD_FLAG_FUA)
        await self._wait_unordered(req)
        size = len(ring)
        start = pos + 28
        done = 0            # payload bytes applied (or, after an error, dropped)
        error: Exception | None = None
        while True:
            have = end - start
            last = done + have == length
            cut = have if last else ((offset + done + have) & _PIECE_ALIGN) - (offset + done)
            if cut > 0:
                if error is None:
                    try:
                        r = self.export.write(offset + done, view[start : start + cut], fua)
                        if r is not None:
                            await r
                    except Exception as e:
                        error = e
                done += cut
                start += cut
            if last:
                break
            n = end - start
            ring[:n] = view[start:end]
            start, end = 0, n
            try:
                got = await self._recv_timed(view[end : min(size, end + length - done - n)], True)
            except OSError as e:
                log.debug("NBD: receive failed: %s", e)
                return -1, -1
            if got == 0:
                if self.stopping:
                    self.out.append(simple_reply(cookie, C.ESHUTDOWN))
                    self._charge(16)
                else:
                    log.debug("NBD: EOF in the middle of a WRITE payload")
                return -1, -1
            end += got
        if error is None:
            self._queue(simple_reply(cookie))
        else:
            self._queue(self._failure(C.CMD_WRITE, flags, cookie, error))
        return 0, 0

    async def _stream_read(self, req: tuple[int, int, int, int, int, int]) -> None:
        """A READ larger than a budget piece: fetched and sent piece by piece,
        each piece charged to the budget while it is held.  The reply's
        header goes first, so an error after it ends the connection for
        simple replies, and is an ERROR_OFFSET chunk for structured ones."""
        assert self.tx is not None and self.export is not None
        _, flags, cookie, offset, length, _ = req
        await self._wait_unordered(req)
        while self.sending:                  # the send path is ours for the whole reply
            ev = self.progress = trio.Event()
            await ev.wait()
        self.sending = True
        try:
            if self.out:                     # earlier replies go first
                bufs, nbytes = self.out, self.out_bytes
                self.out = []
                await self._send_timed(bufs)
                self.out_bytes -= nbytes
                self.budget.release(nbytes)
            structured = self.tx.structured
            if not structured:
                await self._send_timed([simple_reply(cookie)])
            done = 0
            while done < length and not self.broken:
                n = min(PIECE, length - done)
                try:
                    r: Any = self.export.read(offset + done, n)
                    if type(r) is not list:
                        self._hold(n)
                        try:
                            r = await r
                        finally:
                            self._hold(-n)
                    bufs = self._fix_read(r, n)
                    if bufs is None:
                        raise OSError(errno.EIO, "short read")
                except Exception as e:
                    if not structured:
                        log.warning("NBD: READ failed after its reply began (%s); closing the connection", e)
                        self.broken = True
                        self._shutdown_both()
                        return
                    err = self._failure(C.CMD_READ, flags, cookie, e)
                    await self._send_timed([err])   # a final ERROR chunk ends the reply
                    return
                self._hold(n)
                try:
                    last = done + n == length
                    head = (read_chunk_header(cookie, offset + done, n) if last
                            else data_chunk_header(cookie, offset + done, n))
                    await self._send_timed([head, *bufs] if structured else bufs)
                finally:
                    self._hold(-n)
                done += n
        finally:
            self.sending = False
            self._poke()
        await self.flush()

    # --- request execution (synchronous) ----------------------------------------

    def _process(self, ring: mmap.mmap, view: memoryview, pos: int, end: int) -> int:
        """Handle every complete request in ring[pos:end]; return the new pos.

        This is the hot path: everything it needs is bound to locals."""
        tx = self.tx
        export = self.export
        assert tx is not None and export is not None
        parse = tx.parse
        read_header = tx.read_header
        write = export.write
        read = export.read
        out = self.out
        append = out.append
        pack_ok = _SIMPLE_OK.pack
        max_outstanding = self.config.max_outstanding
        budget = self.budget
        order = self.order
        barriers = order.barriers
        deferred = order.deferred
        must_wait = order.must_wait
        # this connection may hold up to its share while the budget has room
        held_at_entry = self.held_extra
        room = min(budget.share(self.server.connection_count) - held_at_entry,
                   budget.limit - budget.used + self.out_bytes)
        out_bytes = self.out_bytes
        try:
            while True:
                req = parse(ring, pos, end)
                if req is None:
                    return pos
                cmd, flags, cookie, offset, length, err = req
                if cmd == 1:  # WRITE
                    start = pos + 28
                    stop = start + length
                    if stop > end:
                        if err:  # reject now, discard the rest of the payload later
                            append(tx.error_reply(cookie, cmd, err))
                            out_bytes += 16
                            self.skip = stop - end
                            return end
                        return pos
                    pos = stop
                    if err:
                        append(tx.error_reply(cookie, cmd, err))
                        out_bytes += 16
                        continue
                    if (barriers or deferred) and must_wait(req):
                        deferred.append((req, bytes(view[start:stop])))
                        self._hold(length)
                        if self.outstanding + len(deferred) >= max_outstanding:
                            self.limited = True
                            return pos
                        continue
                    try:
                        w = write(offset, view[start:stop], flags & 1 == 1)
                    except Exception as e:
                        append(self._failure(cmd, flags, cookie, e))
                        out_bytes += 16
                        continue
                    if w is None:
                        append(pack_ok(0x67446698, 0, cookie))
                        out_bytes += 16
                    else:
                        self._start_async(w, req)
                        if self.outstanding + len(deferred) >= max_outstanding:
                            self.limited = True
                            return pos
                elif cmd == 0:  # READ
                    pos += 28
                    if length > PIECE and not err:
                        self.pending_read = req   # produced and sent in pieces by the reader
                        return pos
                    if err:
                        append(tx.error_reply(cookie, cmd, err))
                        out_bytes += 16
                        continue
                    if (barriers or deferred) and must_wait(req):
                        deferred.append((req, None))
                        if self.outstanding + len(deferred) >= max_outstanding:
                            self.limited = True
                            return pos
                        continue
                    try:
                        r = read(offset, length)
                    except Exception as e:
                        append(self._failure(cmd, flags, cookie, e))
                        out_bytes += 16
                        continue
                    if type(r) is list:
                        total = 0
                        for b in r:
                            total += len(b)
                        if total != length:
                            fixed = self._fix_read(r, length)
                            if fixed is None:
                                append(tx.error_reply(cookie, cmd, C.EIO, "short read"))
                                out_bytes += 16
                                continue
                            r = fixed
                        append(read_header(cookie, offset, length))
                        out.extend(r)
                        out_bytes += length + 32
                        if out_bytes >= room:
                            self.limited = True
                            return pos
                    else:
                        self._start_async(cast(Awaitable[Any], r), req)   # charges length
                        if (self.outstanding + len(deferred) >= max_outstanding
                                or out_bytes + self.held_extra - held_at_entry >= room):
                            self.limited = True
                            return pos
                else:
                    pos += 28
                    if cmd == C.CMD_DISC:
                        self.disc = True
                        return pos
                    budget.charge(out_bytes - self.out_bytes)
                    self.out_bytes = out_bytes
                    if err:
                        self._queue(tx.error_reply(cookie, cmd, err))
                    else:
                        self._submit(req, None)
                    out_bytes = self.out_bytes
                    if self.outstanding + len(deferred) >= max_outstanding:
                        self.limited = True
                        return pos
        finally:
            budget.charge(out_bytes - self.out_bytes)
            self.out_bytes = out_bytes

    def _queue(self, reply: bytes) -> None:
        self.out.append(reply)
        self._charge(len(reply))

    def _failure(self, cmd: int, flags: int, cookie: int, e: Exception) -> bytes:
        assert self.tx is not None
        if isinstance(e, OSError):
            return self.tx.error_reply(cookie, cmd, wire_error(e.errno, flags), e.strerror or "")
        log.error("NBD export %s failed", C.CMD_NAMES.get(cmd, cmd), exc_info=e)
        return self.tx.error_reply(cookie, cmd, C.EIO, "internal error")

    @staticmethod
    def _fix_read(bufs: list[Any], length: int) -> list[Any] | None:
        """Accept buffers whose len() is not their byte size (non-'B' formats)."""
        views = [memoryview(b).cast("B") for b in bufs]
        if sum(v.nbytes for v in views) != length:
            log.error("NBD export read returned %d bytes, expected %d", sum(v.nbytes for v in views), length)
            return None
        return views

    def _submit(self, req: tuple[int, int, int, int, int, int], payload: Any) -> None:
        """Execute a validated request now, or defer it behind conflicting ones."""
        order = self.order
        if (order.barriers or order.deferred) and order.must_wait(req):
            order.defer(req, bytes(payload) if payload is not None else None)
            if payload is not None:
                self._hold(len(payload))
        else:
            self._execute(req, payload)

    def _execute(self, req: tuple[int, int, int, int, int, int], payload: Any) -> None:
        """Run one validated request now (any command but DISC); queue its reply
        or start its completion task."""
        cmd, flags, cookie, offset, length, _ = req
        export = self.export
        tx = self.tx
        assert export is not None and tx is not None
        try:
            if cmd == C.CMD_WRITE:
                r: Any = export.write(offset, payload, bool(flags & C.CMD_FLAG_FUA))
            elif cmd == C.CMD_READ:
                r = export.read(offset, length)
                if type(r) is list:
                    self._queue_read(cookie, offset, length, r)
                    return
            elif cmd == C.CMD_FLUSH:
                r = export.flush()
            elif cmd == C.CMD_TRIM:
                r = export.trim(offset, length)
            elif cmd == C.CMD_WRITE_ZEROES:
                r = export.write_zeroes(offset, length, not flags & C.CMD_FLAG_NO_HOLE)
            elif cmd == C.CMD_CACHE:
                r = export.cache(offset, length)
            elif cmd == C.CMD_BLOCK_STATUS:
                extents = export.block_status(offset, length)
                try:
                    reply = tx.block_status_reply(cookie, flags, length, extents)
                except ValueError as e:
                    log.error("NBD export block_status: %s", e)
                    reply = tx.error_reply(cookie, cmd, C.EIO, "no extents")
                self._queue(reply)
                return
            else:  # pragma: no cover - validate() rejects these
                raise OSError(errno.EINVAL, "unknown command")
        except Exception as e:
            self._queue(self._failure(cmd, flags, cookie, e))
            return
        if r is None:
            self._queue(simple_reply(cookie))
        else:
            self._start_async(r, req)

    def _queue_read(self, cookie: int, offset: int, length: int, bufs: list[Any]) -> None:
        assert self.tx is not None
        if sum(len(b) for b in bufs) != length:
            fixed = self._fix_read(bufs, length)
            if fixed is None:
                self._queue(self.tx.error_reply(cookie, C.CMD_READ, C.EIO, "short read"))
                return
            bufs = fixed
        self.out.append(self.tx.read_header(cookie, offset, length))
        self.out.extend(bufs)
        self._charge(length + 32)

    # --- awaited export calls and ordering ----------------------------------------

    def _start_async(self, aw: Awaitable[Any], req: tuple[int, int, int, int, int, int]) -> None:
        assert self.nursery is not None
        token = self.next_token
        self.next_token += 1
        self.order.hold(token, req)
        if req[0] == C.CMD_READ:
            self._hold(req[4])  # the data being fetched
        self.outstanding += 1
        self.nursery.start_soon(self._complete, aw, req, token)

    async def _complete(
        self, aw: Awaitable[Any], req: tuple[int, int, int, int, int, int], token: int
    ) -> None:
        cmd, flags, cookie, offset, length, _ = req
        assert self.tx is not None
        try:
            try:
                try:
                    result = await aw
                finally:
                    if cmd == C.CMD_READ:
                        self._hold(-length)
            except Exception as e:
                self._queue(self._failure(cmd, flags, cookie, e))
            else:
                if cmd != C.CMD_READ:
                    self._queue(simple_reply(cookie))
                elif type(result) is list:
                    self._queue_read(cookie, offset, length, result)
                else:
                    log.error("NBD export read returned %r", type(result))
                    self._queue(self.tx.error_reply(cookie, cmd, C.EIO, "internal error"))
        finally:
            self.outstanding -= 1
            self.order.release(token)
        self._run_deferred()
        self._poke()
        await self.flush()

    def _run_deferred(self) -> None:
        """Run the deferred requests that no longer have to wait, in arrival order."""
        for req, payload in self.order.ready():
            if payload is None:
                self._execute(req, None)
            else:
                self._hold(-len(payload))
                self._execute(req, memoryview(payload))
