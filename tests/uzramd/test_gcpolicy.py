"""uzramd's garbage-collection policy: no automatic full collection inside
requests; full ones at quiet moments, and at the latest every few minutes."""

from __future__ import annotations

import gc

import trio

from uzram.daemon import gcpolicy


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
        with trio.move_on_after(0.3):
            await gcpolicy.collect_when_quiet(lambda: 7)   # quiet
        assert len(full) >= 2
        monkeypatch.setattr(gcpolicy, "MAX_INTERVAL", 0.05)
        full.clear()
        with trio.move_on_after(0.3):
            await gcpolicy.collect_when_quiet(activity)   # busy, but overdue
        assert full
    finally:
        gc.set_threshold(*saved)
