"""The pool reserve under ``--swap``: each device stores into prefaulted memory.

A swap-out under global memory pressure must not need memory that only a
swap-out can free. For each device this task gives the pool a
:class:`uzram.zram.chunkfeed.ChunkFeed` (a thread that prefaults pool chunks
ahead of need) and a reserve size, and prefaults the slot table; the trio
thread that serves NBD then never faults in pool memory itself (see
:mod:`uzram.zram.zsmalloc`). When the feed cannot keep up (the system is
short of memory) stores fail with ENOMEM, counted in the pool's
``reserve_misses`` and logged once per episode.

Under sustained global pressure the feed rarely wins a page (the process
that fills memory takes every page a swap-out frees), so what the reserve
holds when pressure starts is what the pool can grow by: size it for the
swap-out of one pressure episode (``--reserve``). While a reserve runs low
the daemon sheds the work that would take from it (``admission.py``).
"""

from __future__ import annotations

import logging

import trio

from ..zram.chunkfeed import ChunkFeed
from ..zram.slots import SlotTable
from ..zram.zsmalloc import CHUNK_BYTES, ZsPool, populate_mapping, prefaulted_chunk
from .admission import Admission
from .config import AUTO_RESERVE
from .logs import event
from .registry import DeviceRegistry

log = logging.getLogger("uzram.daemon")

AUTO = AUTO_RESERVE
MIN_AUTO, MAX_AUTO = 16 << 20, 256 << 20
MAX_TABLE_PREFAULT = 64 << 20       # slot tables larger than this fault in as used


def reserve_for(disksize: int, setting: int) -> int:
    """Bytes to keep in reserve: ``setting``, or for AUTO 1/8 of the disk
    size within 16..256 MiB (at 2:1, room for a quarter of the disk to be
    swapped out while the system cannot give the daemon a page), rounded up
    to whole pool chunks."""
    want = min(max(disksize // 8, MIN_AUTO), MAX_AUTO) if setting == AUTO else setting
    return -(-want // CHUNK_BYTES) * CHUNK_BYTES


def prefault_table(table: SlotTable) -> None:
    """Fault the slot table in (a store into a new slot must not fault)."""
    maps = table._maps
    if sum(len(m) for m in maps) <= MAX_TABLE_PREFAULT:
        for m in maps:
            populate_mapping(m, fresh=False)


async def keep_reserves(registry: DeviceRegistry, setting: int, locked: bool,
                        admission: Admission | None = None, every: float = 0.1) -> None:
    """Give each device's pool its feed and reserve; report refused stores
    and (``admission``) entering and leaving the low-reserve state."""
    pools: dict[int, tuple[ZsPool, str, int]] = {}   # id -> pool, device, misses reported
    while True:
        live: set[int] = set()
        for dev in registry.devices():
            pool = dev.pool
            if pool is None:
                continue
            live.add(id(pool))
            if id(pool) not in pools:
                pools[id(pool)] = (pool, dev.name, 0)
                pool.locked = locked
                if dev.table is not None:
                    await trio.to_thread.run_sync(prefault_table, dev.table)
                if dev.pool is pool:
                    pool.set_feed(ChunkFeed(prefaulted_chunk, f"uzram-feed-{dev.name}"),
                                  reserve_for(dev.disksize, setting) >> 12)
                    event(log, logging.INFO, "pool reserve", device=dev.name,
                          reserve=pool.reserve_pages << 12, locked=locked)
            p, name, reported = pools[id(pool)]
            if pool.reserve_misses != reported:
                event(log, logging.WARNING, "pool reserve ran out: writes failed with ENOMEM "
                      "while the system was short of memory", device=name,
                      refused=pool.reserve_misses - reported, total_refused=pool.reserve_misses)
                pools[id(pool)] = (p, name, pool.reserve_misses)
        for k in list(pools):
            if k not in live:
                pool = pools.pop(k)[0]
                pool.set_feed(None, 0)
        if admission is not None:
            admission.update()
        await trio.sleep(every)
