"""One server-wide budget for the bytes held on behalf of requests.

What counts: reply bytes queued and not yet sent, READs whose data is being
fetched (an export awaitable, e.g. a backing-file read), and WRITE payloads
copied because they must wait behind an overlapping request.  WRITE payloads
are not counted: they are applied as they arrive, from the connection's
fixed receive ring, so nothing is allocated ahead of the bytes that came in.

Admission (checked by each connection before it parses more requests): a
connection may take on more while it holds less than its share of the
budget (the budget divided among the connections, at least ``MIN_SHARE``)
and the budget is not spent; a connection that holds nothing may always take
one more request, so one client that never reads its replies cannot stop
the others.  The overshoot is bounded: one request of at most ``PIECE``
bytes per connection (larger READs are produced and sent in pieces).  When
bytes are released, connections that paused are woken.
"""

from __future__ import annotations

from collections.abc import Callable

PIECE = 1 << 20
"""Largest piece of a READ reply produced at once."""
MIN_SHARE = 256 << 10
"""Every connection may hold this much (QD2 of 128 KiB), whatever the count."""


class Budget:
    __slots__ = ("limit", "used", "peak", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < PIECE:
            raise ValueError(f"the buffer budget must be at least {PIECE} bytes")
        self.limit = limit
        self.used = 0
        self.peak = 0
        """Highest ``used`` since the owner last reset it (e.g. after a heap trim)."""
        self._waiters: set[Callable[[], None]] = set()

    def share(self, connections: int) -> int:
        return max(self.limit // max(1, connections), MIN_SHARE)

    def exhausted(self) -> bool:
        return self.used >= self.limit

    def charge(self, n: int) -> None:
        used = self.used = self.used + n
        if used > self.peak:
            self.peak = used

    def release(self, n: int) -> None:
        self.used -= n
        if self._waiters and self.used < self.limit:
            waiters = list(self._waiters)
            self._waiters.clear()
            for wake in waiters:
                wake()

    def wait_for_room(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (once) the next time bytes are released below the limit."""
        self._waiters.add(wake)

    def forget(self, wake: Callable[[], None]) -> None:
        self._waiters.discard(wake)
