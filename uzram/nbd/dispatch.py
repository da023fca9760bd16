"""Transmission dispatch: requests parsed in place run against the export.

:meth:`Dispatcher.process` parses every complete request in the receive
ring (:meth:`uzram.nbd.proto.Transmission.parse`) and executes it
synchronously (a WRITE's payload is a memoryview into the ring); its reply
is queued on the :class:`~.channel.Channel`, to go out with the others of
the batch.  No task, coroutine, checkpoint or cancel scope is spent per
request on this path; each request is one call of :meth:`Dispatcher._write`,
:meth:`Dispatcher._read` or :meth:`Dispatcher._other`, which every way of
running a request shares (at once, deferred, or completed later), except a
valid READ or WRITE run at once: :meth:`process` has their bodies written
out, and takes such a request's fields from its header without building
its tuple.

When an export call returns an awaitable, the request completes in its own
task and its reply is queued whenever it is ready (out of order).

Ordering (:mod:`uzram.nbd.ordering`): while an awaited WRITE/TRIM/WRITE_ZEROES
is outstanding, later requests overlapping it (ranges widened to the
export's ``ordering_granularity``) are deferred, a WRITE payload copied, and
run once it completes, so the outcome equals running the requests one by
one in arrival order.  Requests elsewhere keep running.

READs larger than a budget piece are produced and sent piece by piece
(:meth:`Dispatcher.stream_read`); WRITEs larger than the ring are applied
as they arrive (:mod:`uzram.nbd.ring`).
"""

from __future__ import annotations

import errno
import logging
import mmap
import struct
from collections.abc import Awaitable, Sized
from typing import Any, Final, cast

import trio

from . import constants as C
from .budget import PIECE
from .channel import Channel
from .export import BlockExport, Buffer
from .ordering import Ordering, Request
from .proto import REQUEST_SIZE, Transmission, data_chunk_header, read_chunk_header, wire_error

__all__ = ["Dispatcher"]

log = logging.getLogger("uzram.nbd")

_READ: Final = C.CMD_READ
_WRITE: Final = C.CMD_WRITE
_DISC: Final = C.CMD_DISC
_FUA: Final = C.CMD_FLAG_FUA
_OK_MAGIC: Final = C.SIMPLE_REPLY_MAGIC
_REQUEST_MAGIC: Final = C.REQUEST_MAGIC
_REQ = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
# the hot path's replies: a constant prefix, then the fields that vary
_OK_HEAD = struct.Struct(">8sQ")
_OK_PREFIX: Final = struct.pack(">II", C.SIMPLE_REPLY_MAGIC, 0)
# proto.read_chunk_header's chunk
_DATA_HEAD = struct.Struct(">8sQIQ")
_DATA_PREFIX: Final = struct.pack(">IHH", C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE, C.REPLY_TYPE_OFFSET_DATA)
_DATA_HEAD_SIZE: Final = _DATA_HEAD.size


class Dispatcher:
    """Runs the requests of one connection in transmission."""

    def __init__(self, chan: Channel, tx: Transmission, export: BlockExport, nursery: trio.Nursery,
                 *, max_outstanding: int, peers: Sized) -> None:
        self.chan = chan
        self.tx = tx
        self.export = export
        self.nursery = nursery
        self.max_outstanding = max_outstanding
        self.peers = peers
        """The server's connections: the budget is shared among them."""
        self.order = Ordering(getattr(export, "ordering_granularity", 1))
        self.outstanding = 0  # export awaitables being awaited
        self.next_token = 0
        self.limited = False
        """:meth:`process` stopped at a bound (outstanding requests, bytes held)."""
        self.disc = False
        self.skip = 0
        """Bytes of a rejected WRITE's payload still to be discarded."""
        self.pending_read: Request | None = None
        """A READ larger than a piece, for :meth:`stream_read`."""
        self._export_write = export.write
        self._export_read = export.read
        self._pack_ok = _SIMPLE.pack
        self._append = chan.out.append
        self._extend = chan.out.extend

    # --- the synchronous path -------------------------------------------------------

    def process(self, ring: mmap.mmap, view: memoryview, pos: int, end: int) -> int:
        """Handle every complete request in ring[pos:end]; return the new pos.

        Stops early at DISC, at a READ for :meth:`stream_read`, and when a
        bound is reached (:attr:`limited`).  This is the hot path:
        everything it needs is bound to locals, and reply bytes are counted
        locally and charged once.  A valid READ or WRITE that runs at once
        is handled inline, from the header's fields, with no request tuple
        (the test is :meth:`.Transmission.parse`'s first one); any other
        request goes through ``parse``."""
        chan = self.chan
        tx = self.tx
        unpack = _REQ.unpack_from
        fast_mask = tx.fast_mask
        size = tx.size
        writable = not tx.read_only
        export_write = self._export_write
        export_read = self._export_read
        queue_data = self._queue_data
        queue_failure = self._queue_failure
        start_async = self._start_async
        pack_head = _DATA_HEAD.pack if tx.structured else None
        pack_ok = _OK_HEAD.pack
        append = self._append
        extend = self._extend
        reject = self._queue_error
        parse = tx.parse
        run_or_defer = self._run_or_defer
        max_outstanding = self.max_outstanding
        budget = chan.budget
        order = self.order
        barriers = order.barriers
        deferred = order.deferred
        request_magic = _REQUEST_MAGIC
        # this connection may hold up to its share while the budget has room
        held_at_entry = chan.held_extra
        room = min(budget.share(len(self.peers)) - held_at_entry,
                   budget.limit - budget.used + chan.out_bytes)
        out_bytes = chan.out_bytes
        try:
            while end - pos >= REQUEST_SIZE:
                magic, flags, cmd, cookie, offset, length = unpack(ring, pos)
                if (magic == request_magic and cmd <= 1 and not flags & fast_mask
                        and 0 < length <= 0x4000000 and offset + length <= size
                        and (cmd == _READ or writable)):
                    if cmd == _READ:
                        pos += REQUEST_SIZE
                        if length > PIECE:
                            self.pending_read = (cmd, flags, cookie, offset, length, 0)
                            return pos   # produced and sent in pieces by the reader
                        if barriers or deferred:
                            n = run_or_defer((cmd, flags, cookie, offset, length, 0), None)
                        else:
                            # _read, written out: the export's call, then its
                            # buffers queued behind the header (_queue_data's)
                            try:
                                r = export_read(offset, length)
                            except Exception as e:
                                n = queue_failure((cmd, flags, cookie, offset, length, 0), e)
                            else:
                                if type(r) is not list:
                                    start_async(cast(Awaitable[Any], r), (cmd, flags, cookie, offset, length, 0))
                                    n = 0
                                elif (len(r) == 1 and len(r[0]) == length) or sum(map(len, r)) == length:
                                    if pack_head is not None:
                                        append(pack_head(_DATA_PREFIX, cookie, 8 + length, offset))
                                        n = length + _DATA_HEAD_SIZE
                                    else:
                                        append(pack_ok(_OK_PREFIX, cookie))
                                        n = length + 16
                                    extend(r)
                                else:
                                    n = queue_data(cookie, offset, length, r)
                        if n:
                            out_bytes += n
                            if out_bytes >= room:
                                self.limited = True
                                return pos
                            continue
                    else:
                        start = pos + REQUEST_SIZE
                        stop = start + length
                        if stop > end:
                            return pos              # wait for the whole payload
                        pos = stop
                        if barriers or deferred:
                            n = run_or_defer((cmd, flags, cookie, offset, length, 0), view[start:stop])
                            if n:
                                out_bytes += n
                                continue
                        else:
                            # _write, written out
                            try:
                                w = export_write(offset, view[start:stop], flags & _FUA != 0)
                            except Exception as e:
                                out_bytes += queue_failure((cmd, flags, cookie, offset, length, 0), e)
                                continue
                            if w is None:
                                append(pack_ok(_OK_PREFIX, cookie))
                                out_bytes += 16
                                continue
                            start_async(w, (cmd, flags, cookie, offset, length, 0))
                else:
                    # anything else: parsed and validated in full
                    req = parse(ring, pos, end)
                    assert req is not None
                    cmd, flags, cookie, offset, length, err = req
                    if cmd == _WRITE:
                        start = pos + REQUEST_SIZE
                        pos = start + length
                        if pos > end:
                            if not err:
                                return start - REQUEST_SIZE   # wait for the whole payload
                            out_bytes += reject(req, err, "")  # reject now, discard the rest later
                            self.skip = pos - end
                            return end
                        n = reject(req, err, "") if err else run_or_defer(req, view[start:pos])
                        if n:
                            out_bytes += n
                            continue
                    elif cmd == _READ:
                        pos += REQUEST_SIZE
                        if err:
                            out_bytes += reject(req, err, "")
                            continue
                        if length > PIECE:
                            self.pending_read = req   # produced and sent in pieces by the reader
                            return pos
                        n = run_or_defer(req, None)
                        if n:
                            out_bytes += n
                            if out_bytes >= room:
                                self.limited = True
                                return pos
                            continue
                    else:
                        pos += REQUEST_SIZE
                        if cmd == _DISC:
                            self.disc = True
                            return pos
                        n = reject(req, err, "") if err else run_or_defer(req, None)
                        if n:
                            out_bytes += n
                            continue
                # deferred, or an export awaitable started
                if (self.outstanding + len(deferred) >= max_outstanding
                        or out_bytes + chan.held_extra - held_at_entry >= room):
                    self.limited = True
                    return pos
            return pos
        finally:
            budget.charge(out_bytes - chan.out_bytes)
            chan.out_bytes = out_bytes

    def paused(self) -> bool:
        """Whether to stop parsing requests for now (see :mod:`.budget`)."""
        if self.outstanding + len(self.order.deferred) >= self.max_outstanding:
            return True
        chan = self.chan
        held = chan.out_bytes + chan.held_extra
        if held == 0:
            return False
        budget = chan.budget
        return held >= budget.share(len(self.peers)) or budget.used >= budget.limit

    # --- running one request ------------------------------------------------------
    # Each queues the reply and returns its size in bytes, for the caller to
    # charge, or starts awaiting the export's awaitable and returns 0.

    def _write(self, req: Request, offset: int, payload: Any, flags: int, cookie: int) -> int:
        try:
            w = self._export_write(offset, payload, flags & _FUA != 0)
        except Exception as e:
            return self._queue_failure(req, e)
        if w is None:
            self._append(self._pack_ok(_OK_MAGIC, 0, cookie))
            return 16
        self._start_async(w, req)
        return 0

    def _read(self, req: Request, offset: int, length: int, cookie: int) -> int:
        try:
            r = self._export_read(offset, length)
        except Exception as e:
            return self._queue_failure(req, e)
        if type(r) is list:
            return self._queue_data(cookie, offset, length, r)
        self._start_async(cast(Awaitable[Any], r), req)   # charges the data being fetched
        return 0

    def _queue_data(self, cookie: int, offset: int, length: int, bufs: list[Any]) -> int:
        """Queue a READ's reply carrying ``bufs``."""
        if sum(map(len, bufs)) != length:
            fixed = _fix_read(bufs, length)
            if fixed is None:
                return self._queue_error((_READ, 0, cookie, offset, length, 0), C.EIO, "short read")
            bufs = fixed
        header = (read_chunk_header(cookie, offset, length) if self.tx.structured
                  else self._pack_ok(_OK_MAGIC, 0, cookie))
        self._append(header)
        self._extend(bufs)
        return length + len(header)

    def _other(self, req: Request) -> int:
        """Any command but READ, WRITE and DISC."""
        cmd, flags, cookie, offset, length, _ = req
        export = self.export
        try:
            if cmd == C.CMD_FLUSH:
                r = export.flush()
            elif cmd == C.CMD_TRIM:
                r = export.trim(offset, length)
            elif cmd == C.CMD_WRITE_ZEROES:
                r = export.write_zeroes(offset, length, not flags & C.CMD_FLAG_NO_HOLE)
            elif cmd == C.CMD_CACHE:
                r = export.cache(offset, length)
            elif cmd == C.CMD_BLOCK_STATUS:
                return self._block_status(req)
            else:  # pragma: no cover - validate() rejects these
                raise OSError(errno.EINVAL, "unknown command")
        except Exception as e:
            return self._queue_failure(req, e)
        if r is None:
            self._append(self._pack_ok(_OK_MAGIC, 0, cookie))
            return 16
        self._start_async(r, req)
        return 0

    def _block_status(self, req: Request) -> int:
        _, flags, cookie, offset, length, _ = req
        extents = self.export.block_status(offset, length)
        try:
            reply = self.tx.block_status_reply(cookie, flags, length, extents)
        except ValueError as e:
            log.error("NBD export block_status: %s", e)
            return self._queue_error(req, C.EIO, "no extents")
        self._append(reply)
        return len(reply)

    def _run_or_defer(self, req: Request, payload: memoryview | None) -> int:
        """Run ``req`` unless it must wait behind an earlier one (then it
        is deferred and 0 returned)."""
        order = self.order
        if (order.barriers or order.deferred) and order.must_wait(req):
            self.defer(req, payload)
            return 0
        return self._execute(req, payload)

    def _execute(self, req: Request, payload: Any) -> int:
        cmd, flags, cookie, offset, length, _ = req
        if cmd == _WRITE:
            return self._write(req, offset, payload, flags, cookie)
        if cmd == _READ:
            return self._read(req, offset, length, cookie)
        return self._other(req)

    def _queue_error(self, req: Request, error: int, message: str) -> int:
        reply = self.tx.error_reply(req[2], req[0], error, message)
        self._append(reply)
        return len(reply)

    def _queue_failure(self, req: Request, e: Exception) -> int:
        reply = self.failure(req, e)
        self._append(reply)
        return len(reply)

    def failure(self, req: Request, e: Exception) -> bytes:
        """The error reply for an export call that raised ``e``."""
        cmd, flags, cookie = req[0], req[1], req[2]
        if isinstance(e, OSError):
            return self.tx.error_reply(cookie, cmd, wire_error(e.errno, flags), e.strerror or "")
        log.error("NBD export %s failed", C.CMD_NAMES.get(cmd, cmd), exc_info=e)
        return self.tx.error_reply(cookie, cmd, C.EIO, "internal error")

    # --- ordering and awaited export calls -------------------------------------------

    def defer(self, req: Request, payload: memoryview | None) -> None:
        """Hold ``req`` back until the requests it conflicts with are done;
        its payload is copied (and charged)."""
        if payload is None:
            self.order.defer(req, None)
        else:
            self.order.defer(req, bytes(payload))
            self.chan.hold(len(payload))

    def _start_async(self, aw: Awaitable[Any], req: Request) -> None:
        token = self.next_token
        self.next_token += 1
        self.order.hold(token, req)
        if req[0] == _READ:
            self.chan.hold(req[4])  # the data being fetched
        self.outstanding += 1
        self.nursery.start_soon(self._complete, aw, req, token)

    async def _complete(self, aw: Awaitable[Any], req: Request, token: int) -> None:
        cmd = req[0]
        chan = self.chan
        try:
            try:
                try:
                    result = await aw
                finally:
                    if cmd == _READ:
                        chan.hold(-req[4])
            except Exception as e:
                chan.charge(self._queue_failure(req, e))
            else:
                if cmd != _READ:
                    self._append(self._pack_ok(_OK_MAGIC, 0, req[2]))
                    chan.charge(16)
                elif type(result) is list:
                    chan.charge(self._queue_data(req[2], req[3], req[4], result))
                else:
                    log.error("NBD export read returned %r", type(result))
                    chan.charge(self._queue_error(req, C.EIO, "internal error"))
        finally:
            self.outstanding -= 1
            self.order.release(token)
        self._run_deferred()
        chan.poke()
        await chan.flush()

    def _run_deferred(self) -> None:
        """Run the deferred requests that no longer have to wait, in arrival order."""
        chan = self.chan
        for req, payload in self.order.ready():
            if payload is None:
                chan.charge(self._execute(req, None))
            else:
                chan.hold(-len(payload))
                chan.charge(self._execute(req, memoryview(payload)))

    async def wait_unordered(self, req: Request) -> None:
        """Wait until ``req`` no longer overlaps an outstanding mutation or an
        earlier deferred request (streamed requests are not deferred)."""
        order = self.order
        while (order.barriers or order.deferred) and order.must_wait(req):
            await self.chan.wait_progress()

    # --- large READs ---------------------------------------------------------------

    async def stream_read(self, req: Request) -> None:
        """A READ larger than a budget piece: fetched and sent piece by piece,
        each piece charged to the budget while it is held.  The reply's
        header goes first, so an error after it ends the connection for
        simple replies, and is an ERROR_OFFSET chunk for structured ones."""
        chan = self.chan
        _, _, cookie, offset, length, _ = req
        await self.wait_unordered(req)
        await chan.take_send_path()          # the send path is ours for the whole reply
        try:
            structured = self.tx.structured
            if not structured:
                await chan.send_timed([self._pack_ok(_OK_MAGIC, 0, cookie)])
            done = 0
            while done < length and not chan.broken:
                n = min(PIECE, length - done)
                try:
                    bufs = await self._read_piece(offset + done, n)
                except Exception as e:
                    if not structured:
                        log.warning("NBD: READ failed after its reply began (%s); closing the connection", e)
                        chan.broken = True
                        chan.shutdown_both()
                        return
                    await chan.send_timed([self.failure(req, e)])   # a final ERROR chunk ends the reply
                    return
                chan.hold(n)
                try:
                    last = done + n == length
                    head = (read_chunk_header(cookie, offset + done, n) if last
                            else data_chunk_header(cookie, offset + done, n))
                    await chan.send_timed([head, *bufs] if structured else bufs)
                finally:
                    chan.hold(-n)
                done += n
        finally:
            chan.give_send_path()
        await chan.flush()

    async def _read_piece(self, offset: int, n: int) -> list[Any]:
        r = self._export_read(offset, n)
        if type(r) is not list:
            self.chan.hold(n)
            try:
                r = await cast(Awaitable[list[Buffer]], r)
            finally:
                self.chan.hold(-n)
        bufs = _fix_read(r, n)
        if bufs is None:
            raise OSError(errno.EIO, "short read")
        return bufs


def _fix_read(bufs: list[Any], length: int) -> list[Any] | None:
    """Accept buffers whose len() is not their byte size (non-'B' formats)."""
    views = [memoryview(b).cast("B") for b in bufs]
    if sum(v.nbytes for v in views) != length:
        log.error("NBD export read returned %d bytes, expected %d", sum(v.nbytes for v in views), length)
        return None
    return views
