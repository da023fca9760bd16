"""A zram device seen as an NBD block export."""

from __future__ import annotations

import errno
from collections.abc import Awaitable
from typing import cast

import trio

from ..zram import ZramDevice
from ..zram.device import Extent, PendingRead
from ..zram.jobs import Job
from ..zram.sizeclass import PAGE_SIZE
from . import marker
from .jobs import drive, puncher

STATE_HOLE = 1
STATE_ZERO = 2
# the device's extent states as NBD base:allocation flags
_ALLOCATION = {Extent.DATA: 0, Extent.ZERO: STATE_ZERO, Extent.UNALLOCATED: STATE_HOLE | STATE_ZERO}
SYNC_PAGES = 256  # TRIM/WRITE_ZEROES up to this many pages run in the call (~1 ms)


class ZramExport:
    """Adapts ZramDevice to ``uzram.nbd.export.BlockExport``.

    Calls run on the trio thread. Quick ones complete in the call; a large
    TRIM or WRITE_ZEROES, and a sub-page write into a written-back page,
    return an awaitable that drives the device's job (``jobs.drive``); the
    server holds back later requests on those pages meanwhile. Write payloads
    are consumed (or copied for the job) before returning, so views into the
    NBD receive ring never outlive the request.
    """

    read_only = False
    ordering_granularity = 4096   # partial-page writes read-modify-write the whole page

    def __init__(self, dev: ZramDevice) -> None:
        self.dev = dev
        self.name = dev.name
        # bound methods, looked up once for the hot path
        self._read_chunks = dev.read_chunks
        self._write = dev.write
        # Released backing blocks are punched in a worker thread; a request
        # that released some is answered once they are (bd_stat is exact).
        self._punch = puncher(dev)

    async def _job(self, job: Job[None]) -> None:
        try:
            await drive(job)
        finally:
            await self._punch.wait()

    def write(self, offset: int, data: memoryview, fua: bool = False) -> None | Awaitable[None]:
        if (offset | len(data)) & (PAGE_SIZE - 1) and self.dev.write_needs_backing(offset, len(data)):
            return self._job(self.dev.write_steps(offset, bytes(data)))
        self._write(offset, data, fua)
        return self._punch.wait() if self._punch.running else None

    def trim(self, offset: int, length: int) -> None | Awaitable[None]:
        if length <= SYNC_PAGES * PAGE_SIZE:
            self.dev.discard(offset, length)
            return self._punch.wait() if self._punch.running else None
        return self._job(self.dev.discard_steps(offset, length))

    def read(self, offset: int, length: int) -> list[bytes] | Awaitable[list[bytes]]:
        chunks = self._read_chunks(offset, length)
        if type(chunks) is list:
            return chunks
        # type() is the cheapest test on the request path but does not narrow for mypy
        return self._read_backing(cast(PendingRead, chunks))

    async def _read_backing(self, pending: PendingRead) -> list[bytes]:
        """Fetch written-back blocks in a worker thread; they stay pinned
        until ``finish_read`` (which always runs, even if cancelled)."""
        backing = self.dev.backing
        assert backing is not None  # the pending read's blocks are pinned in it
        with trio.CancelScope(shield=True):
            results = await trio.to_thread.run_sync(backing.read_blocks, pending.blocks)
        return self.dev.finish_read(pending, results)

    @property
    def description(self) -> str:
        alg = self.dev.comp_algs[0]
        return f"uzram {self.name} ({alg}, {self.dev.disksize} bytes)"

    def size(self) -> int:
        return self.dev.disksize

    def attach(self) -> None:
        if self.dev.claimed:
            raise OSError(errno.EBUSY, f"{self.name} is being reset")
        marker.check_open(self.dev)  # EIO after an unclean exit, until a reset
        self.dev.openers += 1

    def detach(self) -> None:
        self.dev.openers -= 1

    def write_zeroes(self, offset: int, length: int, may_trim: bool) -> None | Awaitable[None]:
        dev = self.dev
        if length <= SYNC_PAGES * PAGE_SIZE and not dev.write_needs_backing(offset, length):
            dev.write_zeroes(offset, length, unmap=may_trim)
            return self._punch.wait() if self._punch.running else None
        return self._job(dev.write_zeroes_steps(offset, length, unmap=may_trim))

    def flush(self) -> None:
        self.dev.flush()

    def cache(self, offset: int, length: int) -> None:
        return None

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(n, _ALLOCATION[state]) for n, state in self.dev.extents(offset, length)]
