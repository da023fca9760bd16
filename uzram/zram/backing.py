"""The backing store for writeback: a regular file or a block device, cut
into 4 KiB blocks.

Block bookkeeping (the bitmap, pins, releases) belongs to the owner thread.
The I/O methods (``write_blocks``, ``read_blocks``) only issue syscalls on the
file descriptor and may run in worker threads.

A released block is punched out of a backing file (FALLOC_FL_PUNCH_HOLE) so
disk space returns; until the punch is done the block is not handed out
again. A block that is being read is pinned: releasing it is deferred until
the last reader unpins it, so a read never sees the block's next contents.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Sequence

from .sizeclass import PAGE_SIZE

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
IOV_MAX = 1024

FREE, USED, PUNCH = 0, 1, 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class BackingStore:
    """Blocks of a backing file or block device."""

    def __init__(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise OSError(e.errno, f"backing_dev {path}: {e.strerror}") from e
        self.is_block = stat.S_ISBLK(st.st_mode)
        if not self.is_block and not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ENOTBLK, f"backing_dev {path}: not a regular file or block device")
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if self.is_block else 0)
        self.fd = os.open(path, flags)
        try:
            size = os.lseek(self.fd, 0, os.SEEK_END) if self.is_block else st.st_size
        except OSError:
            os.close(self.fd)
            raise
        self.path = path
        self.nr_blocks = size // PAGE_SIZE
        if self.nr_blocks == 0:
            os.close(self.fd)
            raise OSError(errno.EINVAL, f"backing_dev {path}: smaller than one page")
        self.state = bytearray(self.nr_blocks)
        self.used = 0                        # blocks not FREE (bd_count)
        self._low = 0                        # no FREE block below this index
        self._pins: dict[int, int] = {}
        self._release_after_unpin: set[int] = set()
        self._to_punch: list[int] = []
        self.punch_supported = not self.is_block

    # -- bookkeeping (owner thread) ----------------------------------------------

    def alloc(self) -> int:
        """The lowest free block, marked used; -1 when the store is full."""
        i = self.state.find(FREE, self._low)
        if i < 0:
            self._low = self.nr_blocks
            return -1
        self.state[i] = USED
        self._low = i + 1
        self.used += 1
        return i

    def release(self, block: int) -> None:
        """Give a block back (deferred while pinned); its space is punched out."""
        if block in self._pins:
            self._release_after_unpin.add(block)
            return
        self.state[block] = PUNCH
        self._to_punch.append(block)

    def pin(self, block: int) -> None:
        self._pins[block] = self._pins.get(block, 0) + 1

    def unpin(self, block: int) -> None:
        n = self._pins[block] - 1
        if n:
            self._pins[block] = n
            return
        del self._pins[block]
        if block in self._release_after_unpin:
            self._release_after_unpin.discard(block)
            self.release(block)

    @property
    def pending_punches(self) -> int:
        return len(self._to_punch)

    def take_punches(self) -> list[tuple[int, int]]:
        """Released blocks as coalesced (first, count) runs, to hand to
        ``punch``; ``punched`` must follow once they are done."""
        blocks = sorted(self._to_punch)
        self._to_punch.clear()
        runs: list[tuple[int, int]] = []
        for b in blocks:
            if runs and runs[-1][0] + runs[-1][1] == b:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((b, 1))
        return runs

    def punch(self, runs: Sequence[tuple[int, int]]) -> None:
        """Punch holes for released runs (any thread). Failure is harmless: the
        space simply stays allocated."""
        if not self.punch_supported:
            return
        for first, count in runs:
            try:
                punch_hole(self.fd, first * PAGE_SIZE, count * PAGE_SIZE)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    self.punch_supported = False
                    return

    def punched(self, runs: Sequence[tuple[int, int]]) -> None:
        """Mark punched runs free for reuse (owner thread)."""
        for first, count in runs:
            for b in range(first, first + count):
                self.state[b] = FREE
            self.used -= count
            if first < self._low:
                self._low = first

    def flush_releases(self) -> None:
        """Punch and free every released block now, on the calling thread."""
        if self._to_punch:
            runs = self.take_punches()
            self.punch(runs)
            self.punched(runs)

    # -- I/O (any thread) ------------------------------------------------------------

    def write_blocks(self, blocks: Sequence[int], bufs: Sequence[bytes | bytearray | memoryview]) -> list[OSError | None]:
        """Write one page-sized buffer per block, contiguous blocks in one
        ``pwritev``; returns an error (or None) per block."""
        return self._vectored(os.pwritev, blocks, bufs)

    def read_blocks(self, blocks: Sequence[int]) -> list[bytes | OSError]:
        """Read whole blocks; each result is the page or the error."""
        bufs = [bytearray(PAGE_SIZE) for _ in blocks]
        errors = self._vectored(os.preadv, blocks, bufs)
        return [e if e is not None else bytes(b) for b, e in zip(bufs, errors)]

    def _vectored(self, call, blocks: Sequence[int], bufs: Sequence) -> list[OSError | None]:  # type: ignore[no-untyped-def]
        order = sorted(range(len(blocks)), key=blocks.__getitem__)
        errors: list[OSError | None] = [None] * len(blocks)
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and j - i < IOV_MAX and blocks[order[j]] == blocks[order[j - 1]] + 1:
                j += 1
            run = order[i:j]
            try:
                done = call(self.fd, [bufs[k] for k in run], blocks[run[0]] * PAGE_SIZE)
            except OSError as e:
                for k in run:
                    errors[k] = e
                i = j
                continue
            complete = done // PAGE_SIZE
            if complete == 0 and done < len(run) * PAGE_SIZE:
                # nothing whole was transferred and no error: end of file or device
                errors[run[0]] = OSError(errno.EIO, f"short transfer on {self.path}")
                complete = 1
            # a short transfer: retry from the first incomplete block, which
            # either succeeds or reports the real error (ENOSPC, EIO)
            i += complete
        return errors

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
