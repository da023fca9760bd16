"""Busy polling between requests, for a client that sends one request at a
time (a queue depth of 1: a guest's synchronous swap-in, ``fio --iodepth=1``).

Sleeping in epoll between such requests costs a wakeup per request, and on a
virtual CPU an idle CPU's wakeup is the largest part of a 4 KiB read's
latency.  So, when the last wait was short and brought exactly one request
(the client is in a tight loop, one request at a time), the reader first
spins on a non-blocking ``recv`` for a few tens of microseconds, as the
kernel's ``SO_BUSY_POLL`` does on a NIC queue.

Spinning takes a CPU from whoever else could use it, so it is gated:

- after :data:`MISSES` polls in a row that found nothing, it rests for
  :data:`REST` waits: a client coming back just after the budget would
  otherwise cost a spin per request;
- only with one connection served and nothing awaited (work on other threads
  completes through the event loop, which spinning would hold up);
- only while this thread's run delay (``/proc/thread-self/schedstat``: time
  spent runnable but waiting for a CPU) stays low: above :data:`STOP_SHARE`
  of the wall time the CPUs are contended and polling stops; it resumes only
  below :data:`RESUME_SHARE` (hysteresis);
- the daemon turns it off on one CPU, for swap on the same machine
  (``--swap``) and under a real-time policy
  (:func:`uzram.daemon.hardening.busy_poll_seconds`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Gate", "NEVER", "gate", "poll"]

CHECK_NS: Final = 100_000_000
"""How often the gate reads the run delay."""
STOP_SHARE: Final = 0.02
RESUME_SHARE: Final = 0.005
MISSES: Final = 3
REST: Final = 64
"""After :data:`MISSES` polls in a row found nothing (a client coming
back just later than the budget), the next :data:`REST` waits sleep."""

_clock = time.perf_counter_ns


def poll(recv_now: Callable[[memoryview], int], view: memoryview, budget_ns: int) -> int | None:
    """``recv_now(view)`` until it returns or ``budget_ns`` pass (then None).
    The receive releases the GIL: other threads run while this one spins."""
    deadline = _clock() + budget_ns
    while True:
        try:
            return recv_now(view)
        except BlockingIOError:
            if _clock() >= deadline:
                return None


class Gate:
    """Whether polling is allowed now, from the run delay of the thread that
    asks (``path``, its schedstat; None: never allowed)."""

    __slots__ = ("path", "open", "_next", "_wall", "_delay")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.open = path is not None
        self._next = 0
        self._wall = 0
        self._delay = -1

    def allows(self, now: int) -> bool:
        """``now``: :func:`time.perf_counter_ns`.  Cheap between checks."""
        if now >= self._next and self.path is not None:
            self._check(now)
        return self.open

    def _check(self, now: int) -> None:
        self._next = now + CHECK_NS
        try:
            with open(self.path, "rb") as f:    # type: ignore[arg-type]
                delay = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            self.open = True      # no schedstat: nothing to gate on
            return
        if self._delay >= 0 and now > self._wall:
            share = (delay - self._delay) / (now - self._wall)
            if share > STOP_SHARE:
                self.open = False
            elif share < RESUME_SHARE:
                self.open = True
        self._wall, self._delay = now, delay


NEVER: Final = Gate(None)

_gates: dict[tuple[int, int], Gate] = {}


def gate() -> Gate:
    """The gate of the calling thread (one per thread: run delay is per thread)."""
    key = (os.getpid(), threading.get_native_id())
    g = _gates.get(key)
    if g is None:
        g = _gates[key] = Gate("/proc/thread-self/schedstat")
    return g
