"""The pool reserve under ``--swap``: each device stores into prefaulted memory.

A swap-out under global memory pressure must not need memory that only a
swap-out can free. For each device this task gives the pool a
:class:`uzram.zram.chunkfeed.ChunkFeed` (a thread that prefaults pool chunks
ahead of need) and a reserve size, and prefaults the slot table; the trio
thread that serves NBD then never faults in pool memory itself (see
:mod:`uzram.zram.zsmalloc`). When the feed cannot keep up (the system is
short of memory) stores fail with ENOMEM, counted in the pool's
``reserve_misses`` and logged once per episode.

Under sustained global pressure the feed wins pages slowly (the process
that fills memory takes most pages a swap-out frees), so what the reserve
holds when pressure starts is what the pool can grow by at first: size it
for the swap-out at the onset of an episode (``--reserve``). The automatic
size is larger while the machine's ``vm`` settings are below what swap
needs (:func:`hardening.vm_settings`): the kernel then keeps so few pages
free that the feed falls behind at the onset; it is lowered once they are
raised (``systemd/uzram-swap`` raises them after uzramd has started). While
a reserve runs low the daemon sheds the work that would take from it
(``admission.py``).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Awaitable, Callable

import trio

from ..zram import ZramDevice
from ..zram.arena import populate_mapping
from ..zram.chunkfeed import ChunkFeed
from ..zram.reswap import RecentReads
from ..zram.slots import SlotTable
from ..zram.zsmalloc import CHUNK_BYTES, ZsPool
from .admission import Admission
from .config import AUTO_RESERVE
from .hardening import FEED_PREFIX, allow_reclaim_io, vm_settings
from .logs import event
from .registry import DeviceRegistry

log = logging.getLogger("uzram.daemon")

AUTO = AUTO_RESERVE
MIN_AUTO, MAX_AUTO = 8 << 20, 256 << 20
MIN_AUTO_SHORT_VM = 32 << 20
"""The automatic reserve's floor while the vm settings are short: in a
384 MiB guest without them, 12 MiB ran out at the onset of pressure in most
runs (writes refused, the guest hung), 32 MiB in none."""
VM_CHECK_EVERY = 2.0   # seconds between reads of the vm settings (not while a reserve is low)
MAX_TABLE_PREFAULT = 64 << 20       # slot tables larger than this fault in as used


def mem_total() -> int:
    """The machine's RAM in bytes (MemTotal), 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reserve_for(disksize: int, setting: int, ram: int | None = None, vm_short: bool = False) -> int:
    """Bytes to keep in reserve: ``setting``, or for AUTO the smaller of 1/8
    of the disk size and 1/32 of the machine's RAM, within 8..256 MiB
    (32..256 MiB while ``vm_short``), rounded up to whole pool chunks. The
    reserve bridges the moments when the feed waits for reclaim (which then
    waits for the swap-outs the reserve stores); memory it holds is memory
    the machine has not, so on a small VM it stays small (12 MiB of a 384
    MiB guest with the vm settings swap needs, 32 MiB without)."""
    if setting != AUTO:
        want = setting
    else:
        ram = mem_total() if ram is None else ram
        floor = MIN_AUTO_SHORT_VM if vm_short else MIN_AUTO
        want = min(max(min(disksize // 8, ram // 32 if ram else disksize), floor), MAX_AUTO)
    return -(-want // CHUNK_BYTES) * CHUNK_BYTES


def vm_short() -> bool:
    """Whether the machine's vm settings are below what swap needs."""
    return "vm_short" in vm_settings()


WORKER_THREADS = 4
"""Worker threads started at once and kept (writeback, reads of written-back
pages, punches): more are started only when more run at the same time."""


def keep_worker_threads() -> bool:
    """trio ends a worker thread idle for 10 s and starts another later; a
    thread's start and exit map and unmap memory (its Python frame stack),
    which a swap server must not do while it serves (see
    :mod:`uzram.zram.arena`). Keep them: trio reads the timeout from its
    thread cache module each time a worker waits. False if trio changed."""
    try:
        cache = importlib.import_module("trio._core._thread_cache")
    except ImportError:
        return False
    if not isinstance(getattr(cache, "IDLE_TIMEOUT", None), (int, float)):
        return False
    setattr(cache, "IDLE_TIMEOUT", -1)    # Lock.acquire(timeout=-1): no timeout
    return True


async def start_worker_threads(n: int = WORKER_THREADS) -> None:
    """Start ``n`` worker threads now, all at once, so later work finds them."""
    barrier = threading.Barrier(n)

    def meet() -> None:
        try:
            barrier.wait(5)
        except threading.BrokenBarrierError:
            pass

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(trio.to_thread.run_sync, meet)


def prefault_table(table: SlotTable, recent: RecentReads | None = None) -> None:
    """Fault the slot table in, and dedup's table of recent reads (a store
    into a new slot must not fault)."""
    maps = [*table._maps, *(recent.maps if recent is not None else ())]
    if sum(len(m) for m in maps) <= MAX_TABLE_PREFAULT:
        for m in maps:
            populate_mapping(m, fresh=False)


SHRINK_MIN_PAGES = 64
"""Compact a pool for its low reserve only if that would free this much."""


async def keep_reserves(registry: DeviceRegistry, setting: int, locked: bool,
                        admission: Admission | None = None,
                        shrink: Callable[[ZramDevice], Awaitable[int]] | None = None,
                        every: float = 0.1) -> None:
    """Give each device's pool its feed and reserve; report refused stores
    and (``admission``) entering and leaving the low-reserve state; compact
    (``shrink``) a pool whose reserve is below half."""
    if keep_worker_threads():
        await start_worker_threads()
    else:
        event(log, logging.WARNING, "worker threads are not kept: trio's thread cache changed")
    shrinking: set[str] = set()

    async def compact(dev: ZramDevice) -> None:
        assert shrink is not None
        try:
            freed = await shrink(dev)
            event(log, logging.INFO, "compacted for a low pool reserve", device=dev.name, pages=freed)
        except OSError as e:
            event(log, logging.INFO, "no compaction for a low pool reserve", device=dev.name, error=str(e))
        finally:
            shrinking.discard(dev.name)

    async with trio.open_nursery() as nursery:
        await _keep(registry, setting, locked, admission, every,
                    lambda dev: nursery.start_soon(compact, dev) if shrink is not None else None, shrinking)


def _worth_compacting(pool: ZsPool) -> bool:
    return pool.reserve_free * 2 < pool.reserve_pages and \
        sum(c.can_compact() for c in pool.classes) >= SHRINK_MIN_PAGES


async def _keep(registry: DeviceRegistry, setting: int, locked: bool, admission: Admission | None,
                every: float, start_shrink: Callable[[ZramDevice], None], shrinking: set[str]) -> None:
    pools: dict[int, tuple[ZsPool, str, int]] = {}   # id -> pool, device, misses reported
    short = vm_short()
    checked = trio.current_time()
    while True:
        live: set[int] = set()
        if short and trio.current_time() - checked >= VM_CHECK_EVERY and \
                not (admission is not None and admission.low):
            checked = trio.current_time()
            if not vm_short():   # raised (uzram-swap): the reserves go back to their usual size
                short = False
                for dev in registry.devices():
                    pool = dev.pool
                    if pool is not None and id(pool) in pools:
                        pool.set_reserve(reserve_for(dev.disksize, setting) >> 12)
                        event(log, logging.INFO, "pool reserve", device=dev.name,
                              reserve=pool.reserve_pages << 12, why="vm settings raised")
        for dev in registry.devices():
            pool = dev.pool
            if pool is None:
                continue
            live.add(id(pool))
            if id(pool) not in pools:
                pools[id(pool)] = (pool, dev.name, 0)
                disk = dev.disk
                if disk is not None:
                    await trio.to_thread.run_sync(prefault_table, disk.table, disk.recent)
                if dev.pool is pool:
                    pool.set_feed(ChunkFeed(pool.feed_fill, f"{FEED_PREFIX}-{dev.name}", allow_reclaim_io),
                                  reserve_for(dev.disksize, setting, vm_short=short) >> 12)
                    event(log, logging.INFO, "pool reserve", device=dev.name,
                          reserve=pool.reserve_pages << 12, locked=locked, vm_short=short)
            pool.refill()
            if dev.name not in shrinking and _worth_compacting(pool):
                shrinking.add(dev.name)
                start_shrink(dev)
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
