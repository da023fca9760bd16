"""Which requests of one connection must wait for which: pure bookkeeping,
no I/O, no trio.

Requests normally run the moment they are parsed.  An export call may
instead return an awaitable, and the request then completes later, while
the connection goes on with the next ones.  For the outcome to equal
running every request one by one in arrival order:

* an outstanding (awaited) mutation — WRITE, TRIM, WRITE_ZEROES — is a
  *barrier* over its range;
* a later request whose range overlaps a barrier, or conflicts with an
  earlier request already waiting, is *deferred* (two requests conflict if
  their ranges overlap and either one mutates);
* when a barrier goes, the deferred requests that no longer overlap a
  barrier or conflict with one still waiting before them run, in arrival
  order; the others keep waiting, in order.

Ranges are widened to the export's ordering granularity (a zram device
read-modify-writes whole 4 KiB pages, so two writes to different bytes of
one page are ordered; an export that updates bytes in place declares 1).
An awaited READ is no barrier: the export chose its data when it was
called.  FLUSH is not ordered: it covers the writes already answered, as
the protocol requires.  Requests that carry no range order nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from . import constants as C

MUTATING = frozenset({C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES})
ORDERED = frozenset({C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES, C.CMD_CACHE,
                     C.CMD_BLOCK_STATUS})

Request = tuple[int, int, int, int, int, int]
"""(command, flags, cookie, offset, length, error) as parsed by proto.Transmission."""


class Ordering:
    __slots__ = ("granularity", "_mask", "barriers", "deferred")

    def __init__(self, granularity: int = 1) -> None:
        if granularity < 1 or granularity & (granularity - 1):
            raise ValueError(f"ordering granularity must be a power of two, not {granularity}")
        self.granularity = granularity
        self._mask = -granularity
        self.barriers: dict[int, tuple[int, int]] = {}
        """Outstanding mutations: token -> widened (start, end)."""
        self.deferred: deque[tuple[Request, Any]] = deque()
        """Waiting requests and their (owned) payloads, in arrival order."""

    def span(self, offset: int, length: int) -> tuple[int, int]:
        mask = self._mask
        return offset & mask, (offset + length + self.granularity - 1) & mask

    def must_wait(self, req: Request) -> bool:
        """Whether ``req`` must be deferred (callers test ``barriers or
        deferred`` first: with neither, nothing waits)."""
        cmd = req[0]
        if cmd not in ORDERED:
            return False
        lo, hi = self.span(req[3], req[4])
        return self._conflicts(lo, hi, cmd in MUTATING, self.deferred)

    def hold(self, token: int, req: Request) -> None:
        """``req`` is now outstanding; a mutation becomes a barrier."""
        if req[0] in MUTATING:
            self.barriers[token] = self.span(req[3], req[4])

    def release(self, token: int) -> None:
        self.barriers.pop(token, None)

    def defer(self, req: Request, payload: Any) -> None:
        self.deferred.append((req, payload))

    def ready(self) -> Iterator[tuple[Request, Any]]:
        """The deferred requests that may run now, in arrival order, each
        removed as it is yielded.  Run each before taking the next (running
        one may add a barrier that holds back those after it), and exhaust
        the iterator."""
        if not self.deferred:
            return
        pending = list(self.deferred)
        kept = self.deferred      # the same deque throughout: callers may hold it
        kept.clear()
        for item in pending:
            req = item[0]
            lo, hi = self.span(req[3], req[4])
            if self._conflicts(lo, hi, req[0] in MUTATING, kept):
                kept.append(item)
            else:
                yield item

    def _conflicts(self, lo: int, hi: int, mutating: bool, earlier: deque[tuple[Request, Any]]) -> bool:
        for blo, bhi in self.barriers.values():
            if lo < bhi and blo < hi:
                return True
        for (dcmd, _, _, doff, dlen, _), _ in earlier:
            if mutating or dcmd in MUTATING:
                dlo, dhi = self.span(doff, dlen)
                if lo < dhi and dlo < hi:
                    return True
        return False
