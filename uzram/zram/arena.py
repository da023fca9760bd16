"""Pool memory: a memfd mapped once, grown, filled and given back with
``fallocate``, never with calls that change the address space.

Why (``uzramd --swap``, a swap server in the VM it serves): ``mmap``,
``munmap``, ``mlock`` and ``munlock`` take the process's mmap_lock for
writing. A writer waits for the threads holding it for reading, and every
later page fault of the process waits behind the writer. A thread whose page
fault is in direct reclaim holds it for reading until reclaim ends, and
reclaim under global pressure waits for swap-outs, which wait for the
serving thread. So one ``munlock`` of a freed frame (or the ``mmap`` of a
new chunk) while the feed thread faults in memory stops the serving thread
at its next page fault, and the guest hangs. Here:

- an arena is one ``memfd`` mapped ``MAP_SHARED`` once, 64 GiB of address
  space and no memory: the file is grown (``ftruncate``, which takes no
  mmap_lock and obeys RLIMIT_FSIZE) as chunks are added;
- :meth:`Arena.fill` faults a range in with ``MADV_POPULATE_WRITE``: its
  reclaim holds the mmap_lock for reading only, which stops nobody while
  no one asks for it for writing. Not ``fallocate``: shmem's holds the
  file's inode lock through its reclaim, and giving frames back needs that
  lock (a serving thread stuck in ``shmem_fallocate`` was seen);
- :meth:`Arena.punch` gives a range's pages back with
  ``FALLOC_FL_PUNCH_HOLE``; under ``mlockall(MCL_FUTURE | MCL_ONFAULT)`` the
  mapping is locked once and for all, so nothing is munlocked or relocked:
  a punched page is unlocked with its removal and a new one is locked when
  faulted in.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import weakref

ARENA_BYTES = 64 << 30
"""Address space of one arena (a pool that outgrows it maps another)."""
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_MADV_POPULATE_WRITE = 23

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None
if _libc is not None:
    _libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    _libc.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2), raising OSError (the GIL is released during the call)."""
    if _libc is None:
        raise OSError(38, "fallocate: no libc")
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def populate_mapping(mm: mmap.mmap, addr: int = 0, length: int = 0, fresh: bool = True,
                     strict: bool = False) -> None:
    """Fault ``length`` bytes of a mapping in (all of it by default) at
    ``addr``, with the GIL released: a thread faulting in memory under
    pressure must not stop the others. Not MAP_POPULATE, which
    mlockall(MCL_ONFAULT) turns off, nor mmap.madvise, which holds the GIL.
    Before Linux 5.14 (no MADV_POPULATE_WRITE) only a ``fresh`` (all zero)
    range is faulted in, by zeroing it. ``strict``: other failures (ENOMEM)
    raise OSError."""
    if _libc is None:
        return
    if not addr:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    length = length or len(mm)
    if _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), _MADV_POPULATE_WRITE) != 0:
        e = ctypes.get_errno()
        if strict and e != errno.EINVAL:
            raise OSError(e, os.strerror(e))
        if fresh:
            ctypes.memset(addr, 0, length)   # memset releases the GIL too


class Arena:
    """``ARENA_BYTES`` of address space over a memfd. Only offsets below
    :attr:`size` (the file's size, as far as this process grew it) may be
    touched: beyond, an access is SIGBUS."""

    def __init__(self, name: str = "uzram-pool") -> None:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, ARENA_BYTES)      # mmap wants the file as long as the mapping
            self.mm = mmap.mmap(fd, ARENA_BYTES, flags=mmap.MAP_SHARED)
            os.ftruncate(fd, 0)                # sparse and empty until chunks are added
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = 0
        self._grow = threading.Lock()    # the feed's thread grows it too
        self.mv = memoryview(self.mm)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        self._close = weakref.finalize(self, os.close, fd)

    def grow(self, end: int) -> None:
        """Extend the file to ``end`` bytes (sparse: nothing is allocated);
        never shrinks it. Raises OSError (EFBIG past RLIMIT_FSIZE)."""
        with self._grow:
            if end > self.size:
                os.ftruncate(self.fd, end)
                self.size = end

    def fill(self, offset: int, length: int) -> None:
        """Make the pages of a range resident, extending the file if needed
        (any thread: this is the feed's work). Raises OSError (ENOMEM when
        the system has no page to give, EFBIG past RLIMIT_FSIZE)."""
        self.grow(offset + length)
        populate_mapping(self.mm, self.base + offset, length, strict=True)

    def punch(self, offset: int, length: int) -> None:
        """Give a range's pages back; it reads as zeros afterwards."""
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
