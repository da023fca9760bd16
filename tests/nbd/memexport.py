"""A bytearray-backed BlockExport for tests and benchmarks.

Tracks allocation per 4 KiB page (for block_status), can make chosen
operations asynchronous (return awaitables that sleep first) and can inject
errors.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from uzram.nbd.constants import STATE_HOLE, STATE_ZERO

PAGE = 4096


class MemExport:
    def __init__(
        self,
        size: int,
        name: str = "mem",
        description: str = "test export",
        *,
        read_only: bool = False,
        track: bool = True,
        ordering_granularity: int = 4096,   # its async writes read-modify-write whole pages
    ) -> None:
        self.name = name
        self.ordering_granularity = ordering_granularity
        self.description = description
        self.read_only = read_only
        self.data = bytearray(size)
        self.track = track
        self.alloc = bytearray((size + PAGE - 1) // PAGE)  # 1 = allocated page
        self.async_ops: set[str] = set()  # ops that return awaitables
        self.delay: float | Callable[[str, int, int], float] = 0.0
        self.fail: Callable[[str, int, int], int | None] | None = None
        self.refuse_attach: int | None = None
        self.attached = 0
        self.attach_calls = 0
        self.flushes = 0
        self.fua_writes = 0
        self.completed: list[tuple[str, int, int]] = []  # async completions, in order
        self.in_flight = 0

    # --- helpers -------------------------------------------------------------------

    def _check(self, op: str, offset: int, length: int) -> None:
        if self.fail is not None:
            err = self.fail(op, offset, length)
            if err:
                raise OSError(err, f"injected {op} failure")

    def _later(self, op: str, offset: int, length: int, fn: Callable[[], Any]) -> Awaitable[Any]:
        delay = self.delay(op, offset, length) if callable(self.delay) else self.delay
        self.in_flight += 1

        async def run() -> Any:
            try:
                await trio.sleep(delay)
                self._check(op, offset, length)
                result = fn()
                self.completed.append((op, offset, length))
                return result
            finally:
                self.in_flight -= 1

        return run()

    def _mark(self, offset: int, length: int, value: int) -> None:
        if not self.track:
            return
        if value:
            first, last = offset // PAGE, (offset + length + PAGE - 1) // PAGE
        else:  # only whole pages become holes
            first, last = (offset + PAGE - 1) // PAGE, (offset + length) // PAGE
        if last > first:
            self.alloc[first:last] = bytes([value]) * (last - first)

    # --- BlockExport ---------------------------------------------------------------

    def size(self) -> int:
        return len(self.data)

    def attach(self) -> None:
        self.attach_calls += 1
        if self.refuse_attach:
            raise OSError(self.refuse_attach, "refused")
        self.attached += 1

    def detach(self) -> None:
        self.attached -= 1
        assert self.attached >= 0

    def read(self, offset: int, length: int) -> Any:
        if "read" in self.async_ops:  # the data is taken now, delivered later
            snapshot = bytes(self.data[offset : offset + length])
            return self._later("read", offset, length, lambda: [snapshot])
        if self.fail is not None:
            self._check("read", offset, length)
        return [self.data[offset : offset + length]]

    def write(self, offset: int, data: memoryview, fua: bool) -> Any:
        if fua:
            self.fua_writes += 1
        if "write" in self.async_ops:
            # Consume ``data`` now, as the contract says, and behave like a
            # page store doing read-modify-write: the whole pages are taken
            # now and stored back at completion, so anything that changes
            # those pages in between would be lost.
            n = len(data)
            lo, hi = offset & ~(PAGE - 1), min(len(self.data), (offset + n + PAGE - 1) & ~(PAGE - 1))
            pages = bytearray(self.data[lo:hi])
            pages[offset - lo : offset - lo + n] = data

            def apply() -> None:
                self.data[lo:hi] = pages
                self._mark(offset, n, 1)

            return self._later("write", offset, n, apply)
        n = len(data)
        if self.fail is not None:
            self._check("write", offset, n)
        self.data[offset : offset + n] = data
        if self.track:
            first = offset >> 12
            last = (offset + n + PAGE - 1) >> 12
            if last - first == 1:
                self.alloc[first] = 1
            else:
                self._mark(offset, n, 1)
        return None

    def _zero(self, offset: int, length: int, dealloc: bool) -> None:
        self.data[offset : offset + length] = bytes(length)
        self._mark(offset, length, 0 if dealloc else 1)

    def trim(self, offset: int, length: int) -> Any:
        if "trim" in self.async_ops:
            return self._later("trim", offset, length, lambda: self._zero(offset, length, True))
        self._check("trim", offset, length)
        self._zero(offset, length, True)
        return None

    def write_zeroes(self, offset: int, length: int, may_trim: bool) -> Any:
        if "write_zeroes" in self.async_ops:
            return self._later("write_zeroes", offset, length, lambda: self._zero(offset, length, may_trim))
        self._check("write_zeroes", offset, length)
        self._zero(offset, length, may_trim)
        return None

    def flush(self) -> Any:
        if "flush" in self.async_ops:
            return self._later("flush", 0, 0, self._flushed)
        self._check("flush", 0, 0)
        self._flushed()
        return None

    def _flushed(self) -> None:
        self.flushes += 1

    def cache(self, offset: int, length: int) -> Any:
        self._check("cache", offset, length)
        return None

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check("block_status", offset, length)
        end = offset + length
        extents: list[tuple[int, int]] = []
        pos = offset
        alloc = self.alloc
        while pos < end and len(extents) < 64:
            page = pos // PAGE
            state = alloc[page]
            nxt = alloc.find(b"\x00" if state else b"\x01", page)
            run_end = len(self.data) if nxt < 0 else nxt * PAGE
            run_end = min(run_end, end)
            extents.append((run_end - pos, 0 if state else STATE_HOLE | STATE_ZERO))
            pos = run_end
        return extents


class FailOn:
    """``fail`` hook: raise ``err`` for ``op`` on ranges touching ``[lo, hi)``."""

    def __init__(self, op: str, lo: int, hi: int, err: int = errno.EIO) -> None:
        self.op, self.lo, self.hi, self.err = op, lo, hi, err

    def __call__(self, op: str, offset: int, length: int) -> int | None:
        if op == self.op and offset < self.hi and self.lo < offset + length:
            return self.err
        return None
