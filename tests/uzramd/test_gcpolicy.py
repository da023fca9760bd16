"""uzramd's garbage-collection policy: no automatic full collection inside
requests; full ones at quiet moments, and at the latest every few minutes."""

from __future__ import annotations

import gc
from collections.abc import Callable

import trio

from uzram.daemon import gcpolicy


async def run_until(cond: Callable[[], bool], activity: Callable[[], int]) -> None:
    """Run the policy until ``cond`` holds (on a loaded machine its 10 ms
    sleeps may take far longer: a fixed window could end too soon)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gcpolicy.collect_when_quiet, activity)
        with trio.fail_after(10):
            while not cond():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_full_collections_only_when_quiet_or_overdue(monkeypatch) -> None:
    saved = gc.get_threshold()
    full: list[float] = []
    monkeypatch.setattr(gcpolicy, "QUIET_INTERVAL", 0.01)
    monkeypatch.setattr(gcpolicy, "MIN_INTERVAL", 0.0)
    monkeypatch.setattr(gcpolicy, "MAX_INTERVAL", 3600.0)
    monkeypatch.setattr(gcpolicy.gc, "collect", lambda *a: full.append(trio.current_time()))
    try:
        gcpolicy.take_over()
        assert gc.get_threshold()[2] == gcpolicy.NEVER
        busy = [0]

        def activity() -> int:
            busy[0] += 1        # something happens every interval
            return busy[0]

        with trio.move_on_after(0.3):
            await gcpolicy.collect_when_quiet(activity)
        assert full == []       # never while busy (and not yet overdue)
        await run_until(lambda: len(full) >= 2, lambda: 7)   # quiet
        monkeypatch.setattr(gcpolicy, "MAX_INTERVAL", 0.05)
        full.clear()
        await run_until(lambda: bool(full), activity)   # busy, but overdue
    finally:
        gc.set_threshold(*saved)
