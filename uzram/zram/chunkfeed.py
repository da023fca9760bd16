"""Prefaulted pool chunks, made ahead by a thread of their own.

Under ``uzramd --swap`` a pool never faults in new memory on the thread that
stores pages: it takes resident frames (its reserve), else a chunk this feed
has prefaulted, else waits briefly for the one being made; if none comes in
time the system is short of memory and the store fails with ENOMEM (as
zram's zs_malloc fails) instead of waiting on reclaim that may need the very
swap-out being stored. The page faults happen here, on the feed's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ChunkFeed(Generic[T]):
    def __init__(self, make: Callable[[], T], name: str = "uzram-feed") -> None:
        self._make = make
        self._ready: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._wanted = threading.Semaphore(0)
        self._closed = False
        self.made = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed:
                return
            try:
                chunk = self._make()
            except OSError:           # ENOMEM from mmap: asked again later
                self.failed += 1
                continue
            self.made += 1
            self._ready.put(chunk)

    def request(self, n: int = 1) -> None:
        """Ask for ``n`` more chunks (they arrive in :meth:`poll`/:meth:`take`)."""
        if n > 0:
            self._wanted.release(n)

    def poll(self) -> T | None:
        try:
            return self._ready.get_nowait()
        except queue.Empty:
            return None

    def take(self, timeout: float) -> T | None:
        """A chunk, waiting up to ``timeout`` seconds for one being made."""
        try:
            return self._ready.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closed = True
        self._wanted.release()
