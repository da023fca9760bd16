"""The backing store for writeback: a regular file or a block device, cut
into 4 KiB blocks.

Block bookkeeping (the bitmap, pins, releases) belongs to the owner thread.
The I/O methods (``write_blocks``, ``read_blocks``) only issue syscalls on the
file descriptor and may run in worker threads.

A released block is punched out of a backing file (FALLOC_FL_PUNCH_HOLE) so
disk space returns; until the punch is done the block is not handed out
again. A block that is being read is pinned: releasing it is deferred until
the last reader unpins it, so a read never sees the block's next contents.

The store holds other processes' memory (swap), so opening it is strict:

- the path is opened with ``O_NOFOLLOW`` and checked on the descriptor
  (``fstat``), never stat-then-open; a symlink is followed only to a block
  device (udev's ``/dev/disk/by-*`` names);
- a regular file must belong to the daemon's user (else EPERM) and be
  private, mode 0600 or stricter (else EACCES): ``chmod 600 FILE``;
- it is exclusive: ``flock(LOCK_EX|LOCK_NB)`` plus a check of the inode
  against the stores this process holds, so a second device or a second
  daemon gets EBUSY (block devices are also opened ``O_EXCL``);
- a block counts as written only once the disk said so, and written-back
  pages do not stay in the page cache (RAM, which writeback exists to
  free): I/O is ``O_DIRECT`` through page-aligned buffers, so a write
  returns when the device completed it, with its error if any, as the
  kernel's zram waits for each bio. Where the filesystem refuses
  ``O_DIRECT``, every batch of writes is followed by ``fdatasync``, whose
  failure fails the whole batch (the pages stay in RAM), then
  ``POSIX_FADV_DONTNEED`` drops the batch from the page cache; reads drop
  theirs too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence

from .arena import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from .sizeclass import PAGE_SIZE

IOV_MAX = 1024

FREE, USED, PUNCH = 0, 1, 2

log = logging.getLogger("uzram.zram")

Buffer = bytes | bytearray | memoryview

USE_O_DIRECT = True  # False forces the fdatasync + POSIX_FADV_DONTNEED path

# (st_dev, st_ino) or st_rdev of every store open in this process
_held: set[tuple[int, int]] = set()
_held_lock = threading.Lock()


def punch_hole(fd: int, offset: int, length: int) -> None:
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def _refuse(path: str, code: int, why: str) -> OSError:
    log.warning("backing_dev %s refused: %s", path, why)
    return OSError(code, f"backing_dev {path}: {why}")


def open_backing(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` read-write for a backing store and check it on the
    descriptor; returns (fd, fstat). Errors say what to do."""
    # O_EXCL without O_CREAT claims a block device exclusively and is ignored
    # for a regular file; O_NONBLOCK keeps a FIFO or odd device from blocking.
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_EXCL | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            fd = _open_device_link(path, flags)
        elif e.errno == errno.EISDIR:
            raise OSError(errno.ENOTBLK, f"backing_dev {path}: not a regular file or block device") from e
        else:
            raise OSError(e.errno, f"backing_dev {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        _check(path, st)
        os.set_blocking(fd, True)
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def _open_device_link(path: str, flags: int) -> int:
    """A symlink is accepted only when it names a block device."""
    target = os.path.realpath(path)
    try:
        fd = os.open(target, flags)
    except OSError as e:
        raise OSError(e.errno, f"backing_dev {path} -> {target}: {e.strerror}") from e
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(path, errno.ELOOP, "is a symbolic link; name the file itself "
                      "(only links to block devices, as /dev/disk/by-id/*, are followed)")
    return fd


def _check(path: str, st: os.stat_result) -> None:
    if stat.S_ISBLK(st.st_mode):
        return  # its node's owner and mode are udev's; O_EXCL made it ours
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.ENOTBLK, f"backing_dev {path}: not a regular file or block device")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise _refuse(path, errno.EPERM, f"owned by uid {st.st_uid}, not by this daemon's user "
                      f"(uid {uid}): chown {uid} {path} && chmod 600 {path}")
    if st.st_mode & 0o077:
        raise _refuse(path, errno.EACCES, f"mode {stat.S_IMODE(st.st_mode):04o} lets other users read "
                      f"swapped-out memory: chmod 600 {path}")


def _lock(fd: int, path: str) -> None:
    """An exclusive flock: a second daemon (or device) gets EBUSY."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(errno.EBUSY, f"backing_dev {path}: locked by another process "
                          "(another uzramd?)") from None
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(e.errno, f"backing_dev {path}: flock: {e.strerror}") from None
        # no flock on this filesystem: the inode check still guards this process


class BackingStore:
    """Blocks of a backing file or block device."""

    def __init__(self, path: str) -> None:
        fd, st = open_backing(path)
        self.is_block = stat.S_ISBLK(st.st_mode)
        key = (-1, st.st_rdev) if self.is_block else (st.st_dev, st.st_ino)
        try:
            size = os.lseek(fd, 0, os.SEEK_END) if self.is_block else st.st_size
            if size < PAGE_SIZE:
                raise OSError(errno.EINVAL, f"backing_dev {path}: smaller than one page")
            with _held_lock:
                if key in _held:
                    raise OSError(errno.EBUSY, f"backing_dev {path}: already the backing store of another device")
                _lock(fd, path)
                _held.add(key)
        except BaseException:
            os.close(fd)
            raise
        self._key: tuple[int, int] | None = key
        self.fd = fd
        self.path = path
        self.nr_blocks = size // PAGE_SIZE
        self.state = bytearray(self.nr_blocks)
        self.used = 0                        # blocks not FREE (bd_count)
        self._low = 0                        # no FREE block below this index
        self._pins: dict[int, int] = {}
        self._release_after_unpin: set[int] = set()
        self._to_punch: list[int] = []
        self.punch_supported = not self.is_block
        self.direct = USE_O_DIRECT and _set_direct(fd)

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
        return _runs(blocks)

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

    def apply_releases(self) -> None:
        """Punch and free every released block now, on the calling thread."""
        if self._to_punch:
            runs = self.take_punches()
            self.punch(runs)
            self.punched(runs)

    # -- I/O (any thread) ------------------------------------------------------------

    def write_blocks(self, blocks: Sequence[int], bufs: Sequence[bytes | bytearray | memoryview]) -> list[OSError | None]:
        """Write one page-sized buffer per block, contiguous blocks in one
        ``pwritev``; returns an error (or None) per block."""
        if self.direct:
            errors: list[OSError | None] = []
            with ALIGNED.take() as views:
                for k in range(0, len(bufs), len(views)):
                    part = bufs[k : k + len(views)]
                    for view, buf in zip(views, part):
                        view[: len(buf)] = buf
                    errors += self._vectored(os.pwritev, blocks[k : k + len(views)], views[: len(part)])
            return errors
        errors = self._vectored(os.pwritev, blocks, bufs)
        written = [b for b, e in zip(blocks, errors) if e is None]
        if written:
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                failed = OSError(e.errno, f"backing_dev {self.path}: fdatasync: {e.strerror}")
                return [failed if err is None else err for err in errors]
            self._drop_cache(written)
        return errors

    def read_blocks(self, blocks: Sequence[int]) -> list[bytes | OSError]:
        """Read whole blocks; each result is the page or the error."""
        if self.direct:
            results: list[bytes | OSError] = []
            with ALIGNED.take() as views:
                for k in range(0, len(blocks), len(views)):
                    part = blocks[k : k + len(views)]
                    errs = self._vectored(os.preadv, part, views[: len(part)])
                    results += [e if e is not None else bytes(v) for v, e in zip(views, errs)]
            return results
        bufs = [bytearray(PAGE_SIZE) for _ in blocks]
        errors = self._vectored(os.preadv, blocks, bufs)
        self._drop_cache(blocks)
        return [e if e is not None else bytes(b) for b, e in zip(bufs, errors)]

    def _vectored(self, call: Callable[[int, list[Buffer], int], int], blocks: Sequence[int],
                  bufs: Sequence[Buffer]) -> list[OSError | None]:
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

    def _drop_cache(self, blocks: Sequence[int]) -> None:
        """POSIX_FADV_DONTNEED over the runs of ``blocks`` (clean pages only,
        so after fdatasync for writes); advice, so failures are ignored."""
        for first, count in _runs(sorted(blocks)):
            try:
                os.posix_fadvise(self.fd, first * PAGE_SIZE, count * PAGE_SIZE, os.POSIX_FADV_DONTNEED)
            except OSError:
                return

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1
        if self._key is not None:
            with _held_lock:
                _held.discard(self._key)
            self._key = None


def _set_direct(fd: int) -> bool:
    """Switch ``fd`` to O_DIRECT; False where the filesystem refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        return False
    return True


class AlignedBuffers:
    """Page-aligned buffers for O_DIRECT I/O, made once and kept: a swap
    server must not map (or unmap) memory while it serves (see
    :mod:`uzram.zram.arena`). ``count`` areas of ``pages`` pages; a thread
    that finds none free waits for one."""

    def __init__(self, count: int = 2, pages: int = 256) -> None:
        self.count, self.pages = count, pages
        self._free: list[list[memoryview]] = []
        self._made = 0
        self._cond = threading.Condition()

    def prepare(self) -> None:
        """Make every area now (at start, before any pressure)."""
        with self._cond:
            while self._made < self.count:
                self._free.append(self._area())
                self._made += 1

    def _area(self) -> list[memoryview]:
        whole = memoryview(mmap.mmap(-1, self.pages * PAGE_SIZE))
        return [whole[k * PAGE_SIZE : (k + 1) * PAGE_SIZE] for k in range(self.pages)]

    @contextlib.contextmanager
    def take(self) -> Iterator[list[memoryview]]:
        with self._cond:
            if not self._free and self._made < self.count:
                self._free.append(self._area())
                self._made += 1
            self._cond.wait_for(lambda: bool(self._free))
            views = self._free.pop()
        try:
            yield views
        finally:
            with self._cond:
                self._free.append(views)
                self._cond.notify()


ALIGNED = AlignedBuffers()
"""The process's O_DIRECT buffers, shared by every backing store."""


def _runs(blocks: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted block numbers as (first, count) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif not runs or runs[-1][0] + runs[-1][1] < b:
            runs.append((b, 1))
    return runs
