"""The device's state, split as zram's lifecycle splits it.

``Settings`` is what ``reset`` restores (the algorithms and their params,
the backing store, the limits); ``Disk`` exists from ``init(disksize)`` to
``reset``, and its slot table, pool and compressors are never None.
``DeviceState`` is the base of the device: those two plus the counters and
the slot-level helpers every path shares (``slot_free``, the one
decompress-and-check, the range check that yields the disk).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backing import BackingStore
from .reswap import RecentReads
from .compressors import DEFAULT_ALGORITHM, Codec, CompParams, create_codec
from .sizeclass import PAGE_SHIFT, PAGE_SIZE, build_class_table
from .slots import ALLOCATED, HUGE, SAME, SIZE_MASK, WB, SlotTable, priority_of
from .zsmalloc import ZsPool

MAX_COMPS = 4          # ZRAM_MAX_COMPS: the primary and three recompression algorithms
SECTOR_SHIFT = 9
ZERO_PAGE = bytes(PAGE_SIZE)

Decompress = Callable[[bytes | memoryview, int], bytes]


_clock_gettime = time.clock_gettime
_CLOCK_BOOTTIME = time.CLOCK_BOOTTIME


def boottime() -> int:
    return int(_clock_gettime(_CLOCK_BOOTTIME))


def oserror(code: int, message: str) -> OSError:
    return OSError(code, message)


def _default_algs() -> list[str | None]:
    return [DEFAULT_ALGORITHM] + [None] * (MAX_COMPS - 1)


def _default_params() -> list[CompParams]:
    return [CompParams() for _ in range(MAX_COMPS)]


@dataclass
class Settings:
    """What ``reset`` restores: a fresh ``Settings()`` is the default."""

    comp_algs: list[str | None] = field(default_factory=_default_algs)  # by priority
    comp_params: list[CompParams] = field(default_factory=_default_params)
    limit_pages: int = 0            # mem_limit in pages; 0: none
    wb_limit_enable: bool = False
    bd_wb_limit: int = 0            # writeback budget in 4 KiB units
    wb_batch_size: int = 32
    compressed_wb: bool = False
    backing: BackingStore | None = None


class Stats:
    """zram's ``struct zram_stats`` plus the block layer's per-disk counters."""

    __slots__ = (
        "compr_data_size", "failed_reads", "failed_writes", "notify_free", "same_pages",
        "huge_pages", "huge_pages_since", "pages_stored", "miss_free", "max_used_pages",
        "bd_reads", "bd_writes",
        "read_ios", "read_sectors", "write_ios", "write_sectors",
        "discard_ios", "discard_sectors", "flush_ios",
    )

    # declared for the type checker; __init__ sets them all
    compr_data_size: int
    failed_reads: int
    failed_writes: int
    notify_free: int
    same_pages: int
    huge_pages: int
    huge_pages_since: int
    pages_stored: int
    miss_free: int
    max_used_pages: int
    bd_reads: int
    bd_writes: int
    read_ios: int
    read_sectors: int
    write_ios: int
    write_sectors: int
    discard_ios: int
    discard_sectors: int
    flush_ios: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> list[int]:
        return [getattr(self, n) for n in self.__slots__]

    def restore(self, values: list[int]) -> None:
        for n, v in zip(self.__slots__, values):
            setattr(self, n, v)


class Disk:
    """An initialised disk (``disksize_store``): the slot table, the pool and
    the compressors, one per configured priority (the primary always)."""

    __slots__ = ("disksize", "nr_pages", "table", "pool", "comps", "compress", "decompress0", "recent")

    def __init__(self, disksize: int, settings: Settings, chain_size: int) -> None:
        comps: list[Codec | None] = [
            None if alg is None else create_codec(alg, settings.comp_params[prio])
            for prio, alg in enumerate(settings.comp_algs)
        ]
        primary = comps[0]
        if primary is None:
            raise oserror(errno.EINVAL, "no primary compression algorithm")
        self.disksize = -(-disksize // PAGE_SIZE) * PAGE_SIZE
        self.nr_pages = self.disksize >> PAGE_SHIFT
        self.table = SlotTable(self.nr_pages)
        self.pool = ZsPool(chain_size)
        self.comps = comps
        # the primary's functions, looked up once for the hot paths
        self.compress: Callable[[bytes | memoryview], bytes] = primary.compress
        self.decompress0: Decompress = primary.decompress
        self.recent: RecentReads | None = None   # with dedup: the slots read lately (reswap.py)

    @property
    def num_active_comps(self) -> int:
        return sum(c is not None for c in self.comps)

    def codec_for(self, flags: int) -> Decompress:
        """The decompressor of the priority that made a slot's object."""
        codec = self.comps[priority_of(flags)]
        assert codec is not None, "an object of an unconfigured priority"
        return codec.decompress


class DeviceState:
    """The device's data and the slot-level helpers shared by every path."""

    def __init__(self, name: str, chain_size: int, clock: Callable[[], int] | None) -> None:
        self.name = name
        self.chain_size = chain_size
        classes = build_class_table(chain_size)
        self.huge_class_size = classes.huge_class_size
        # stored size (0..PAGE_SIZE) -> the pool class a store of it takes: an
        # overwrite whose new object takes the old one's class reuses its room
        self.class_of_size = bytes(classes.for_request(max(n, 1)) for n in range(PAGE_SIZE + 1))
        self.clock = clock or boottime
        self.settings = Settings()
        self.disk: Disk | None = None
        self.disksize = 0         # the disk's size; 0 while uninitialised
        self.stats = Stats()
        self.openers = 0          # NBD clients attached (reset refuses while > 0)
        self.claimed = False      # a reset is in progress: new opens are refused
        self.async_backing_reads = False  # reads of written-back slots return PendingRead
        self.dedup = False        # a write equal to a page read lately shares its object (reswap.py)
        # Called instead of punching released backing blocks on this thread;
        # the owner then hands BackingStore.take_punches() to a worker.
        self.release_hook: Callable[[], None] | None = None

    @property
    def initialized(self) -> bool:
        return self.disk is not None

    @property
    def backing(self) -> BackingStore | None:
        return self.settings.backing

    def check_range(self, offset: int, length: int, write: bool) -> Disk | None:
        """The disk, if [offset, offset+length) lies on it, else the kernel's
        error (ENOSPC for writes, EINVAL for reads). An uninitialised device
        has size 0: only an empty request at 0 passes, and gets None."""
        disk = self.disk
        size = disk.disksize if disk is not None else 0
        if offset < 0 or length < 0 or offset + length > size:
            if write:
                raise oserror(errno.ENOSPC, f"write beyond the end of {self.name} ({size} bytes)")
            raise oserror(errno.EINVAL, f"access beyond the end of {self.name} ({size} bytes)")
        return disk

    def decompress(self, decompress: Decompress, obj: bytes | memoryview) -> bytes:
        """The one decompress-and-check: a page of exactly PAGE_SIZE bytes, or
        EIO (corrupt data must surface as an I/O error, never as a crash)."""
        try:
            page = decompress(obj, PAGE_SIZE)
        except Exception as e:
            raise oserror(errno.EIO, f"{self.name}: decompression failed: {e}") from e
        if len(page) != PAGE_SIZE:
            raise oserror(errno.EIO, f"{self.name}: decompressed {len(page)} bytes, expected {PAGE_SIZE}")
        return page

    def slot_free(self, disk: Disk, i: int) -> None:
        """``slot_free``: release whatever slot ``i`` holds; it is EMPTY after."""
        table = disk.table
        f = table.flags[i]
        table.ac_time[i] = 0
        if not f & ALLOCATED:
            if f:
                table.flags[i] = 0
            return
        st = self.stats
        if f & WB:
            backing = self.settings.backing
            assert backing is not None, "a written-back slot without a backing store"
            backing.release(table.handle[i])
        elif f & SAME:
            st.same_pages -= 1
        else:
            disk.pool.free(table.handle[i])
            st.compr_data_size -= f & SIZE_MASK
            if f & HUGE:
                st.huge_pages -= 1
        st.pages_stored -= 1
        table.flags[i] = 0
        table.handle[i] = 0

    def apply_backing_releases(self) -> None:
        """Punch out and free the backing blocks released by the last operation
        (or have ``release_hook`` arrange it off this thread)."""
        b = self.settings.backing
        if b is not None and b.pending_punches:
            if self.release_hook is not None:
                self.release_hook()
            else:
                b.apply_releases()
