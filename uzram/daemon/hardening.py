"""Keeping a swap server alive under the memory pressure it relieves.

Each measure is best effort: it needs privileges the daemon may not have, and
its absence is logged, not fatal.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource

from .logs import event

log = logging.getLogger("uzram.daemon")

PR_SET_IO_FLUSHER = 57
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None


def tune_malloc() -> None:
    """Keep freed heap memory instead of trimming it after every large free:
    otherwise each large request buffer is faulted in afresh (128 KiB reads get
    3x slower), and the I/O path keeps needing new pages."""
    if _libc is not None:
        _libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
        _libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        # worker threads (backing-file I/O) share one arena instead of
        # keeping up to 8 per core of their own, each holding freed memory
        _libc.mallopt(M_ARENA_MAX, 1)


def set_io_flusher() -> bool:
    """PR_SET_IO_FLUSHER: reclaim run on our behalf must not recurse into I/O
    (Linux 5.6+, CAP_SYS_RESOURCE)."""
    if _libc is None or _libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        return False
    return True


def protect_from_oom() -> bool:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Return free heap memory to the kernel (glibc's malloc_trim)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


def apply() -> None:
    nofile = raise_fd_limit()
    tune_malloc()
    flusher = set_io_flusher()
    oom = protect_from_oom()
    event(log, logging.INFO, "hardening", io_flusher=flusher, oom_protected=oom,
          uid=os.geteuid(), nofile=nofile)
