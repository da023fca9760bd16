"""The receive ring: one reader per connection ``recv_into``s a preallocated
ring and hands every complete request in it to the
:class:`~.dispatch.Dispatcher`; replies of a batch go out together.

Reading pauses while too many requests are outstanding or too many bytes
are held (see :mod:`.budget`); sending never pauses.  On stop, the requests
already received are answered (a WRITE cut short gets ESHUTDOWN).
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
from typing import Final

import trio

from . import busypoll
from . import constants as C
from .channel import Channel
from .config import ServerConfig
from .dispatch import Dispatcher
from .proto import REQUEST_SIZE, ProtocolError, simple_reply

__all__ = ["receive"]

log = logging.getLogger("uzram.nbd")

_PIECE_ALIGN: Final = -C.PREFERRED_BLOCK_SIZE   # streamed WRITE pieces end on these boundaries
_LEN = struct.Struct(">I")
_COOKIE = struct.Struct(">Q")


_SPARE_RINGS: list[mmap.mmap] = []
MAX_SPARE_RINGS = 4
"""Prefaulted rings kept for later connections (``prefault_ring``, a swap
server: mapping and unmapping memory while serving takes the mmap_lock for
writing, which a swap server under pressure must never wait for)."""


def _new_ring(cfg: ServerConfig) -> mmap.mmap:
    if cfg.prefault_ring:
        for i, spare in enumerate(_SPARE_RINGS):
            if len(spare) == cfg.ring_size:
                return _SPARE_RINGS.pop(i)
    # private anonymous memory: pages the traffic never reaches stay uncommitted
    ring = mmap.mmap(-1, cfg.ring_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if cfg.prefault_ring:   # by touch: MAP_POPULATE is ignored under mlockall(MCL_ONFAULT)
        for i in range(0, cfg.ring_size, 4096):
            ring[i] = 0
    return ring


async def receive(chan: Channel, disp: Dispatcher, cfg: ServerConfig, trailing: bytes) -> None:
    """Read and dispatch requests until DISC, EOF, an error or a stop."""
    ring = _new_ring(cfg)
    try:
        await _receive(chan, disp, cfg, trailing, ring)
    finally:
        # nothing refers to the ring now: payloads that outlive their
        # request are copied (deferred writes, write jobs); its old bytes
        # are never sent, only those a later connection receives into it
        if cfg.prefault_ring and len(_SPARE_RINGS) < MAX_SPARE_RINGS:
            _SPARE_RINGS.append(ring)


async def _receive(chan: Channel, disp: Dispatcher, cfg: ServerConfig, trailing: bytes, ring: mmap.mmap) -> None:
    size = cfg.ring_size
    view = memoryview(ring)
    end = len(trailing)
    ring[:end] = trailing
    pos = 0
    process = disp.process
    send_now = chan.send_now
    recv_now = chan.raw.recv_into
    fd = chan.fd
    wait_readable = trio.lowlevel.wait_readable
    budget = int(cfg.busy_poll * 1e9)
    arm = int(cfg.busy_poll_arm * 1e9)
    gate = busypoll.gate() if budget else busypoll.NEVER
    clock = time.perf_counter_ns
    peers = disp.peers
    armed = False
    misses = rest = 0    # polls in a row that found nothing; waits left unpolled
    while True:
        if end > pos and not disp.paused():
            try:
                pos = process(ring, view, pos, end)
            except ProtocolError as e:
                log.debug("NBD: dropping client: %s", e)
                return
        if chan.out and not send_now():
            await chan.flush()
        if disp.disc or chan.broken:
            return
        if disp.pending_read is not None:
            req, disp.pending_read = disp.pending_read, None
            await disp.stream_read(req)
            continue
        if disp.limited or disp.paused():
            # a bound was hit: wait for room, then resume parsing
            disp.limited = False
            if disp.paused():
                await chan.wait_for_room()
                chan.yielded = True
            continue
        if chan.stopping:
            _answer_cut_short(chan, ring, pos, end)
            return
        if pos == end and chan.plain and not disp.skip:
            # between requests, the common case: receive into the whole
            # ring, written out (no coroutine of the channel's per batch)
            pos = end = 0
            if not chan.yielded:
                await trio.lowlevel.checkpoint()  # stay fair under sustained load
            chan.yielded = False
            short = True     # the client came back within busy_poll_arm
            try:
                try:
                    n = recv_now(view)
                except BlockingIOError:
                    got = None
                    if armed and len(peers) == 1 and not disp.outstanding and gate.allows(clock()):
                        if rest:
                            rest -= 1
                        else:
                            got = busypoll.poll(recv_now, view, budget)
                            if got is not None:
                                chan.polled += 1
                                misses = 0
                            else:
                                chan.poll_misses += 1
                                misses += 1
                                if misses == busypoll.MISSES:   # a client just slower than the budget
                                    misses, rest = 0, busypoll.REST
                    if got is None:
                        chan.yielded = True
                        slept = clock() if budget else 0
                        await wait_readable(fd)
                        short = budget > 0 and clock() - slept < arm
                        try:
                            n = recv_now(view)
                        except BlockingIOError:
                            n = await chan.recv_timed(view, False)
                    else:
                        n = got
            except OSError as e:
                log.debug("NBD: receive failed: %s", e)
                return
            if n == 0:
                return       # EOF (or a stop) with no request begun
            if budget:
                # poll next time only for a client sending one request at a
                # time: one that keeps several in flight gets them to pile up
                # while the reader sleeps (bigger batches, less CPU each)
                armed = short and _one_request(ring, n)
            end = n
            continue
        if not chan.yielded:
            await trio.lowlevel.checkpoint()  # stay fair under sustained load
        chan.yielded = False
        # make room for what comes next
        if pos == end:
            pos = end = 0
        elif disp.skip == 0:
            need = _bytes_needed(ring, pos, end)
            if need > size - REQUEST_SIZE and end - pos >= REQUEST_SIZE:
                pos, end = await _stream_write(chan, disp, ring, view, pos, end)
                if pos < 0:
                    return
                continue
            if pos + need > size or size - end < cfg.compact_below:
                n = end - pos
                ring[:n] = view[pos:end]
                pos, end = 0, n
        try:
            if disp.skip:
                # discard the rest of a rejected WRITE payload (ring is empty)
                n = await chan.recv_timed(view[: min(disp.skip, size)], True)
                if n == 0:
                    log.debug("NBD: EOF inside a rejected WRITE payload")
                    return
                disp.skip -= n
                continue
            n = await chan.recv_timed(view[end:], end > pos)
        except OSError as e:
            log.debug("NBD: receive failed: %s", e)
            return
        if n == 0:
            if chan.stopping:
                _answer_cut_short(chan, ring, pos, end)
            elif end > pos:
                log.debug("NBD: EOF in the middle of a request")
            return
        end += n


def _bytes_needed(ring: mmap.mmap, pos: int, end: int) -> int:
    """Size of the (incomplete) request at ``pos``."""
    if end - pos < REQUEST_SIZE:
        return REQUEST_SIZE
    length: int = _LEN.unpack_from(ring, pos + 24)[0]
    return REQUEST_SIZE + length  # only an incomplete WRITE stops the parser here


def _one_request(ring: mmap.mmap, n: int) -> bool:
    """Whether ``ring[:n]`` is exactly one request (a WRITE with its payload)."""
    if n == REQUEST_SIZE:
        return True
    return n > REQUEST_SIZE and ring[7] == C.CMD_WRITE and _bytes_needed(ring, 0, n) == n


def _answer_cut_short(chan: Channel, ring: mmap.mmap, pos: int, end: int) -> None:
    """On stop: ESHUTDOWN for a request whose header arrived but not its payload."""
    if end - pos >= REQUEST_SIZE:
        cookie: int = _COOKIE.unpack_from(ring, pos + 8)[0]
        chan.queue(simple_reply(cookie, C.ESHUTDOWN))


async def _stream_write(chan: Channel, disp: Dispatcher, ring: mmap.mmap, view: memoryview,
                        pos: int, end: int) -> tuple[int, int]:
    """A WRITE larger than the ring: its payload is applied piece by piece
    as it arrives (pieces end on 4 KiB boundaries of the device), so no
    buffer is allocated ahead of the bytes received.  Returns the ring's
    new (pos, end), or (-1, -1) when the connection ends.

    Requests after it are parsed only once it has been applied whole.
    Until its reply, the range holds a mix of old and new data, as a
    block device's does during a large write."""
    req = disp.tx.parse(view, pos, end)
    assert req is not None and req[0] == C.CMD_WRITE and req[5] == 0
    _, flags, cookie, offset, length, _ = req
    fua = bool(flags & C.CMD_FLAG_FUA)
    write = disp.export.write
    await disp.wait_unordered(req)
    size = len(ring)
    start = pos + REQUEST_SIZE
    done = 0            # payload bytes applied (or, after an error, dropped)
    error: Exception | None = None
    while True:
        have = end - start
        last = done + have == length
        cut = have if last else ((offset + done + have) & _PIECE_ALIGN) - (offset + done)
        if cut > 0:
            if error is None:
                try:
                    r = write(offset + done, view[start : start + cut], fua)
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
            got = await chan.recv_timed(view[end : min(size, end + length - done - n)], True)
        except OSError as e:
            log.debug("NBD: receive failed: %s", e)
            return -1, -1
        if got == 0:
            if chan.stopping:
                chan.queue(simple_reply(cookie, C.ESHUTDOWN))
            else:
                log.debug("NBD: EOF in the middle of a WRITE payload")
            return -1, -1
        end += got
    chan.queue(simple_reply(cookie) if error is None else disp.failure(req, error))
    return 0, 0
