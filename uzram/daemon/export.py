"""A zram device seen as an NBD block export."""

from __future__ import annotations

import errno
from collections.abc import Awaitable

import trio

from ..zram import ZramDevice
from ..zram.device import PendingRead
from . import marker

STATE_HOLE = 1
STATE_ZERO = 2


class ZramExport:
    """Adapts ZramDevice to ``uzram.nbd.export.BlockExport``.

    Every call is synchronous on the trio thread; the device consumes write
    payloads before returning, so views into the NBD receive ring never outlive
    the request.
    """

    read_only = False

    def __init__(self, dev: ZramDevice) -> None:
        self.dev = dev
        self.name = dev.name
        # bound methods, looked up once for the hot path
        self._read_chunks = dev.read_chunks
        self.trim = dev.discard
        self.write = dev.write

    def read(self, offset: int, length: int) -> list[bytes] | Awaitable[list[bytes]]:
        chunks = self._read_chunks(offset, length)
        if type(chunks) is list:
            return chunks
        return self._read_backing(chunks)  # type: ignore[arg-type]

    async def _read_backing(self, pending: PendingRead) -> list[bytes]:
        """Fetch written-back blocks in a worker thread; they stay pinned
        until ``finish_read`` (which always runs, even if cancelled)."""
        backing = self.dev.backing
        with trio.CancelScope(shield=True):
            results = await trio.to_thread.run_sync(backing.read_blocks, pending.blocks)  # type: ignore[union-attr]
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

    def write_zeroes(self, offset: int, length: int, may_trim: bool) -> None:
        self.dev.write_zeroes(offset, length, unmap=may_trim)

    def flush(self) -> None:
        self.dev.flush()

    def cache(self, offset: int, length: int) -> None:
        return None

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(n, state) for n, state in self.dev.allocation_map(offset, length)]
