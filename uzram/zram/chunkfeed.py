"""Pool memory made resident ahead of need, by a thread of its own.

Under ``uzramd --swap`` a pool never faults in new memory on the thread that
stores pages: it takes resident frames (its reserve), else waits briefly for
this feed; if none comes in time the system is short of memory and the store
fails with ENOMEM (as zram's zs_malloc fails) instead of waiting on reclaim
that may need the very swap-out being stored. The allocations (and the
reclaim they may wait on) happen here, on the feed's thread, through calls
that take no mmap_lock (:mod:`uzram.zram.arena`).

A job is whatever the pool asks to make resident (a new chunk, freed frames);
``fill`` does it. A job that fails (ENOMEM, EFBIG) is retried after
``RETRY`` seconds, so every job asked for is delivered once memory allows.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

RETRY = 0.05
PR_SET_NAME = 15


def name_thread(name: str) -> None:
    """The calling thread's name as the kernel shows it (ps, sysrq dumps;
    cut to 15 bytes)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ChunkFeed(Generic[T]):
    def __init__(self, fill: Callable[[T], None], name: str = "uzram-feed",
                 on_start: Callable[[], object] | None = None) -> None:
        self._fill = fill
        self._on_start = on_start
        self._jobs: deque[T] = deque()
        self._ready: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.made = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name_thread(self._thread.name)
        if self._on_start is not None:
            self._on_start()     # per-thread settings (reserve.py: reclaim may do I/O)
        cond = self._cond
        while True:
            with cond:
                while not self._jobs and not self._closed:
                    cond.wait()
                if self._closed:
                    return
                job = self._jobs[0]
            try:
                self._fill(job)
            except OSError:           # no memory now: the same job again later
                self.failed += 1
                with cond:
                    cond.wait(RETRY)
                continue
            with cond:
                self._jobs.popleft()
                self._ready.append(job)
                self.made += 1
                cond.notify_all()

    def request(self, job: T) -> None:
        """Ask for ``job`` to be made resident (it comes back from :meth:`poll`/:meth:`take`)."""
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()

    def poll(self) -> T | None:
        try:
            return self._ready.popleft()
        except IndexError:
            return None

    def take(self, timeout: float) -> T | None:
        """A finished job, waiting up to ``timeout`` seconds for one."""
        with self._cond:
            if not self._ready:
                self._cond.wait_for(lambda: bool(self._ready) or self._closed, timeout)
            return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
