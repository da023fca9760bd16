"""One connection's socket I/O: receiving, the reply queue, and sending.

Receives and sends are non-blocking calls on a stdlib socket object sharing
the trio socket's descriptor, so a call that need not wait spends no trio
checkpoint.  After STARTTLS, :attr:`Channel.recv_into` and
:attr:`Channel.send_list` are replaced by the TLS stream's.

Replies never interleave: whichever task finds the send path idle becomes
the sender and drains the queue (:meth:`Channel.flush`; the reader first
tries :meth:`Channel.send_now`, one plain call), the others only append to
it.  Queued reply bytes, and bytes held for requests before their
reply is queued, are charged to the server-wide :class:`~.budget.Budget`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .budget import Budget
from .tls import TLSStream

__all__ = ["Channel"]

log = logging.getLogger("uzram.nbd")

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


class Channel:
    """The socket of one connection, its reply queue and its budget share."""

    def __init__(self, sock: trio.socket.SocketType, budget: Budget, idle_timeout: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # A stdlib socket object on the same fd: non-blocking calls without
        # trio's per-call checkpoints; detached (not closed) at the end.
        self.raw = socket.socket(fileno=self.fd)
        self.budget = budget
        self.idle_timeout = idle_timeout
        self.stopping = False
        """No more requests are read (the read side is shut down)."""
        self.broken = False
        """Sending failed: replies are dropped from now on."""
        self.out: list[Any] = []
        """Queued reply buffers.  Always the same list (the dispatcher binds
        its ``append``): sending takes its contents."""
        self.out_bytes = 0    # queued reply bytes (charged to the budget)
        self.held_extra = 0   # READ data being fetched, deferred WRITE copies (charged too)
        self.sending = False
        self.progress: trio.Event | None = None
        self.yielded = False
        """Set whenever a receive or send waited (so the reader need not
        add a checkpoint of its own)."""
        self.tls: TLSStream | None = None
        """Set once STARTTLS began; :meth:`close` then sends its close_notify."""
        self.recv_into: Callable[[memoryview], Awaitable[int]] = self._recv_into
        """Receive at least one byte (0 = EOF).  Raises OSError on errors."""
        self.send_list: Callable[[list[Any]], Awaitable[None]] = self._send_list
        """Send every buffer (the list may be modified)."""
        self.plain = True
        """No TLS: the reply queue may be sent by the socket directly."""
        self.polled = 0
        """Requests that busy polling received (see :mod:`.busypoll`)."""
        self.poll_misses = 0
        """Polls that ended without a request (the reader then slept)."""

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close_notify()
        self.raw.detach()
        self.sock.close()

    def use_tls(self, recv_into: Callable[[memoryview], Awaitable[int]],
                send_list: Callable[[list[Any]], Awaitable[None]]) -> None:
        """From now on all I/O goes through a TLS stream."""
        self.recv_into = recv_into
        self.send_list = send_list
        self.plain = False

    def stop(self) -> None:
        """Stop reading: shut down the read side, so a blocked receive returns."""
        if self.stopping:
            return
        self.stopping = True
        try:
            self.raw.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        self.poke()

    def shutdown_both(self) -> None:
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def set_options(self, send_buffer: int | None) -> None:
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if send_buffer:
            try:
                self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            except OSError:
                pass

    # --- plaintext socket I/O ---------------------------------------------------

    async def _recv_into(self, view: memoryview) -> int:
        raw = self.raw
        while True:
            try:
                return raw.recv_into(view)
            except BlockingIOError:
                self.yielded = True
                await trio.lowlevel.wait_readable(self.fd)

    async def _send_list(self, bufs: list[Any]) -> None:
        """Handles partial sends and IOV_MAX."""
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
                with trio.fail_after(self.idle_timeout):
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

    async def recv_timed(self, view: memoryview, mid_request: bool) -> int:
        """Receive; in the middle of a request, a client silent for
        ``idle_timeout`` counts as gone (0 is returned, as at EOF)."""
        if not mid_request:
            return await self.recv_into(view)
        if self.plain:
            try:
                return self.raw.recv_into(view)   # no timer for bytes already here
            except BlockingIOError:
                pass
            with trio.move_on_after(self.idle_timeout):
                self.yielded = True
                await trio.lowlevel.wait_readable(self.fd)
                return await self.recv_into(view)
        else:
            with trio.move_on_after(self.idle_timeout):
                return await self.recv_into(view)
        log.debug("NBD: client stalled in the middle of a request; closing")
        return 0

    async def send_bytes(self, data: bytes) -> bool:
        """Send during the handshake; False if the connection failed."""
        try:
            await self.send_list([data])
        except (OSError, *_GONE) as e:
            log.debug("NBD: send failed during handshake: %s", e)
            return False
        return True

    # --- the reply queue -----------------------------------------------------------

    def queue(self, reply: bytes) -> None:
        """Queue a reply.  Whatever joins :attr:`out` is charged its exact
        size in bytes, so :attr:`out_bytes` tells a complete send."""
        self.out.append(reply)
        self.charge(len(reply))

    def charge(self, n: int) -> None:
        """Reply bytes queued."""
        self.out_bytes += n
        self.budget.charge(n)

    def hold(self, n: int) -> None:
        """Bytes held for a request before its reply is queued (negative: let go)."""
        self.held_extra += n
        if n >= 0:
            self.budget.charge(n)
        else:
            self.budget.release(-n)

    def send_now(self) -> bool:
        """Send the whole queue in one call if the send path is idle and the
        socket takes it all at once; True if nothing is left queued.
        Otherwise nothing, or part, went out: :meth:`flush` sends the rest."""
        out = self.out
        if not out:
            return True
        if self.sending or not self.plain or self.broken or len(out) > _IOV_MAX:
            return False
        nbytes = self.out_bytes
        try:
            sent = self.raw.sendmsg(out, (), _MSG_NOSIGNAL)
        except BlockingIOError:
            return False
        except OSError as e:
            self._send_failed(e)
            sent = nbytes          # dropped, as flush() would
        if sent != nbytes:
            if sent:
                out[:] = _after(out, sent)
                self.out_bytes = nbytes - sent
                self.budget.release(sent)
                self.poke()
            return False
        out.clear()
        self.out_bytes = 0
        self.budget.release(nbytes)
        self.poke()
        return True

    async def flush(self) -> None:
        """Send everything queued, unless another task is already doing so."""
        if self.sending:
            return
        self.sending = True
        try:
            while self.out:
                await self._send_queued()
        finally:
            self.sending = False

    async def _send_queued(self) -> None:
        out = self.out
        nbytes = self.out_bytes
        sent = 0
        if self.plain and not self.broken and len(out) <= _IOV_MAX:
            # the common case: the whole queue in one call, neither copied
            # nor walked (``out_bytes`` is its exact size)
            try:
                sent = self.raw.sendmsg(out, (), _MSG_NOSIGNAL)
            except BlockingIOError:
                pass
            except OSError as e:
                self._send_failed(e)
        if sent == nbytes or self.broken:
            out.clear()
        else:
            bufs = out.copy()
            out.clear()
            await self.send_timed(_after(bufs, sent) if sent else bufs)
        self.out_bytes -= nbytes
        self.budget.release(nbytes)
        self.poke()

    async def take_send_path(self) -> None:
        """Become the only sender (until :meth:`give_send_path`), once what
        is already queued has been sent."""
        while self.sending:
            await self.wait_progress()
        self.sending = True
        if self.out:
            await self._send_queued()

    def give_send_path(self) -> None:
        self.sending = False
        self.poke()

    async def send_timed(self, bufs: list[Any]) -> None:
        """Send, or mark the connection broken: on errors, and when the client
        reads nothing for ``idle_timeout`` (its replies would pin the budget)."""
        try:
            await self.send_list(bufs)   # times out where it would block
        except trio.TooSlowError:
            log.debug("NBD: client stopped reading its replies; closing")
            self.broken = True
            self.shutdown_both()
        except OSError as e:
            self._send_failed(e)

    def _send_failed(self, e: OSError) -> None:
        if not isinstance(e, _GONE):
            log.debug("NBD: send failed: %s", e)
        self.broken = True

    # --- waiting for progress ----------------------------------------------------

    def poke(self) -> None:
        """Wake the task waiting in :meth:`wait_progress`, if any."""
        ev = self.progress
        if ev is not None:
            self.progress = None
            ev.set()

    async def wait_progress(self) -> None:
        """Sleep until the next :meth:`poke` (replies sent, a request completed)."""
        ev = self.progress = trio.Event()
        await ev.wait()

    async def wait_for_room(self) -> None:
        """Sleep until replies drain, a request completes or the budget has room."""
        poke = self.poke
        self.budget.wait_for_room(poke)
        try:
            await self.wait_progress()
        finally:
            self.budget.forget(poke)


def _after(bufs: list[Any], sent: int) -> list[Any]:
    """What of ``bufs`` remains once their first ``sent`` bytes went out."""
    for i, b in enumerate(bufs):
        blen = b.nbytes if type(b) is memoryview else len(b)
        if sent < blen:
            rest = bufs[i:]
            if sent:
                rest[0] = memoryview(b).cast("B")[sent:]
            return rest
        sent -= blen
    return []
