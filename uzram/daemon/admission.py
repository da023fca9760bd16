"""Admission under memory pressure: while a pool reserve runs low, shed the
work that needs memory and keep what frees it.

Under ``--swap`` (or any ``--reserve``) each pool keeps a reserve of
resident frames that swap-outs are stored into (``reserve.py``). When one
(once it has been filled) falls below a quarter of its size, the daemon is
in the *low-reserve* state until every reserve is back to half (the gap
keeps it from flapping):

- refused with EAGAIN, as a request to try again later: attribute stores
  that allocate (``recompress``, ``idle`` marking scans, ``disksize``) and
  ``hot_add``; ``writeback``, ``compact``, ``reset`` and ``hot_remove``
  are always admitted (they free memory: compaction moves objects into
  zspages already there and frees the emptied ones, allocating nothing),
  and so is every request that only reads (status, attributes,
  ``hardening``);
- the daemon compacts a pool whose reserve is below half by itself
  (``reserve.keep_reserves``), as zsmalloc's shrinker compacts when the
  kernel reclaims: freed frames refill the reserve;
- a job already running goes on: holding it would keep the device lock
  from the writeback that frees memory (they are serialised).

Entering and leaving the state is logged (a warning each, with how long it
lasted and what was shed); the counters are in the control socket's
``hardening`` reply (:meth:`Admission.state`).
"""

from __future__ import annotations

import errno
import logging
import time
import weakref
from typing import Any

from ..zram.zsmalloc import ZsPool
from .logs import event
from .registry import DeviceRegistry

log = logging.getLogger("uzram.daemon")

SHED_STORES = frozenset({"recompress", "idle", "disksize"})
"""Attribute stores that allocate and can wait: refused while the reserve is low."""


class Admission:
    """The low-reserve state of the daemon's pools, and what it shed."""

    def __init__(self, registry: DeviceRegistry) -> None:
        self.registry = registry
        self.low = False
        self.episodes = 0          # times the low-reserve state was entered
        self.shed = 0              # requests refused with EAGAIN, since start
        self.shrinks = 0           # compactions the daemon ran for a low reserve
        self.shrunk_pages = 0      # pages they freed
        self._since = 0.0
        self._shed_at_entry = 0
        self._low_devices: list[str] = []
        self._filled: weakref.WeakSet[ZsPool] = weakref.WeakSet()   # reserves full at least once

    def _reserves(self) -> tuple[int, int, list[str], list[str]]:
        """Pages kept and free over every pool with a reserve, the devices
        below a quarter of theirs and those below half. A reserve counts
        once it has been full (not while the feed first fills it)."""
        kept = free = 0
        quarter: list[str] = []
        half: list[str] = []
        for dev in self.registry.devices():
            pool = dev.pool
            if pool is None or not pool.reserve_pages or pool.feed is None:
                continue
            kept += pool.reserve_pages
            free += pool.reserve_free
            if pool not in self._filled:
                if pool.reserve_free < pool.reserve_pages:
                    continue
                self._filled.add(pool)
            if pool.reserve_free * 4 < pool.reserve_pages:
                quarter.append(dev.name)
            if pool.reserve_free * 2 < pool.reserve_pages:
                half.append(dev.name)
        return kept, free, quarter, half

    def update(self) -> bool:
        """Re-evaluate the state (logging a change); True while low."""
        kept, free, quarter, half = self._reserves()
        if not self.low and quarter:
            self.low = True
            self.episodes += 1
            self._since = time.monotonic()
            self._shed_at_entry = self.shed
            self._low_devices = quarter
            event(log, logging.WARNING, "pool reserve low: shedding recompression, "
                  "idle scans, disksize and hot_add until it recovers", devices=" ".join(quarter),
                  reserve=kept << 12, reserve_free=free << 12, episode=self.episodes)
        elif self.low and not half:
            self.low = False
            event(log, logging.WARNING, "pool reserve recovered", devices=" ".join(self._low_devices),
                  reserve=kept << 12, reserve_free=free << 12,
                  seconds=round(time.monotonic() - self._since, 3), shed=self.shed - self._shed_at_entry)
        return self.low

    def admit(self, what: str) -> None:
        """Raise EAGAIN for ``what`` (work that allocates) while the reserve is low."""
        if self.update():
            self.shed += 1
            event(log, logging.INFO, "shed while the pool reserve is low", request=what)
            raise OSError(errno.EAGAIN, f"{what}: the pool reserve is low (memory pressure); "
                          "try again later")

    def state(self) -> dict[str, Any]:
        """The fields of the ``hardening`` reply about the reserves."""
        kept, free, _, _ = self._reserves()
        return {"reserve": kept << 12, "reserve_free": free << 12, "low_reserve": self.update(),
                "low_reserve_episodes": self.episodes, "shed_requests": self.shed,
                "pressure_compactions": self.shrinks, "pressure_compacted_pages": self.shrunk_pages,
                "refused_writes": sum(d.pool.reserve_misses for d in self.registry.devices()
                                      if d.pool is not None),
                "dedup": any(d.dedup for d in self.registry.devices()),
                "dedup_pages": sum(d.pool.shared_refs for d in self.registry.devices() if d.pool is not None),
                "dedup_shares": sum(d.pool.shares for d in self.registry.devices() if d.pool is not None)}
