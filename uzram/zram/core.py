"""The zram core: lifecycle, settings, and the slot operations that
post-processing and maintenance build on. The data paths are in
``readpath.py`` and ``writepath.py``; the attribute ABI on top is
``attrs.py`` (through ``device.ZramDevice``).

Semantics follow drivers/block/zram/zram_drv.c. One owner: every method
runs to completion on the caller's thread. Work whose cost grows with the
device is also offered as a job (``*_steps``, see ``jobs.py``) that an event
loop drives in steps of about a millisecond; the plain methods run those
jobs to completion.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Sequence
from itertools import compress

from . import lanes
from .backing import BackingStore
from .compressors import CompParams
from .disk import Disk, Settings, Stats, oserror
from .jobs import Job, run
from .reswap import RecentReads
from .sizeclass import CHAIN_SIZE_DEFAULT, PAGE_SIZE
from .slots import (
    ALLOCATED, HUGE, IDLE, INCOMPRESSIBLE, NUM_PRIOS, PP_SLOT, PRIO_MASK, PRIO_SHIFT, SAME, SIZE_MASK, WB,
    SlotState, SlotTable, in_ram_object, priority_of, state_of,
)
from .writepath import STEP_SCAN, WritePath
from .zsmalloc import ZsPool

PP_BUCKET_SHIFT = 6   # pp_select reports each object's size >> PP_BUCKET_SHIFT
_NOT_PP = ~PP_SLOT & 0xFFFFFFFF

# The flags' bytes (see slots.py): byte 0 the size's low bits; byte 1 the
# size's high bits, SAME, WB, PP_SLOT; byte 2 HUGE, IDLE, INCOMPRESSIBLE and
# the priority. Lane tables for the scans below.
assert SIZE_MASK == 0x1FFF and (SAME | WB | PP_SLOT) == 0xE000 and PRIO_SHIFT == 19
_SIZE_HI = lanes.table(lambda x: (x & 0x1F) != 0)           # byte 1: size >= 256
_UNMARKED = lanes.table(lambda x: not x & 0xE0)             # byte 1: no SAME, WB, PP_SLOT
_IN_RAM = lanes.table(lambda x: not x & 0x60)               # byte 1: no SAME, WB
_BUCKET_LO = lanes.table(lambda x: x >> PP_BUCKET_SHIFT)    # byte 0's share of size >> 6
_BUCKET_HI = lanes.table(lambda x: (x & 0x1F) << (8 - PP_BUCKET_SHIFT))


@functools.lru_cache(maxsize=64)
def _byte2_test(need: int, skip: int, below_prio: int) -> bytes:
    """Byte-2 table: every bit of ``need``, none of ``skip``, priority below ``below_prio``."""
    assert not (need | skip) & 0xFFFF
    n2, s2 = need >> 16, skip >> 16
    return lanes.table(lambda x: (x & n2) == n2 and not x & s2 and (x >> (PRIO_SHIFT - 16)) & 3 < below_prio)


def _in_ram_lanes(table: SlotTable, lo: int, hi: int) -> tuple[bytes, bytes, int]:
    """Bytes 0 and 1 of the flags in [lo, hi), and as a ``vec`` 1 for the
    slots holding a pool object (size set, neither SAME nor WB)."""
    b0 = lanes.lane(table.flags_col, 4, 0, lo, hi)
    b1 = lanes.lane(table.flags_col, 4, 1, lo, hi)
    sized = lanes.vec(b0.translate(lanes.NONZERO)) | lanes.vec(b1.translate(_SIZE_HI))
    return b0, b1, sized & lanes.vec(b1.translate(_IN_RAM))


class ZramCore(WritePath):
    """One zram device without its attribute ABI (see ``device.ZramDevice``)."""

    def __init__(self, name: str = "zram0", *, chain_size: int = CHAIN_SIZE_DEFAULT,
                 clock: Callable[[], int] | None = None) -> None:
        super().__init__(name, chain_size, clock)

    # -- lifecycle ------------------------------------------------------------

    def init(self, disksize: int) -> None:
        """``disksize_store`` after parsing: allocate the table, pool and compressors."""
        if self.disk is not None:
            raise oserror(errno.EBUSY, "device already initialised; reset it first")
        disk = Disk(disksize, self.settings, self.chain_size)
        if self.dedup:
            disk.recent = RecentReads(disk.nr_pages)
        self.stats = Stats()
        self.disk = disk
        self.disksize = disk.disksize

    def require_disk(self) -> Disk:
        """The disk, or EINVAL as the kernel's stores answer before init."""
        if self.disk is None:
            raise oserror(errno.EINVAL, f"{self.name} is not initialised (set disksize first)")
        return self.disk

    def reset(self) -> None:
        """``zram_reset_device``: free everything and return to defaults."""
        run(self.reset_steps())

    def reset_steps(self, claimed: bool = False) -> Job[None]:
        """Reset as a job: the device returns to defaults in the first step;
        the old pool is then released in steps. ``claimed``: the caller has
        set ``self.claimed`` itself (and made sure no punch is in flight)."""
        if self.openers or (self.claimed and not claimed):
            raise oserror(errno.EBUSY, f"{self.name} is in use by {self.openers} client(s)")
        backing, disk = self.settings.backing, self.disk
        if backing is not None and backing.pending_punches and self.release_hook is None:
            backing.apply_releases()
        self.disk = None
        self.disksize = 0
        self.stats = Stats()
        self.settings = Settings()
        if backing is not None:
            backing.close()
        if disk is not None:
            yield from disk.pool.release_steps()

    # -- settings (what reset restores) -------------------------------------------

    @property
    def comp_algs(self) -> list[str | None]:
        """The algorithm of each priority (0 primary, 1..3 recompression)."""
        return self.settings.comp_algs

    @property
    def comp_params(self) -> list[CompParams]:
        return self.settings.comp_params

    def set_algorithm(self, prio: int, name: str) -> None:
        """The algorithm of a priority; EBUSY once initialised."""
        if self.disk is not None:
            raise oserror(errno.EBUSY, "can't change algorithm for an initialised device; reset it first")
        self.settings.comp_algs[prio] = name

    def set_comp_params(self, prio: int, params: CompParams) -> None:
        self.settings.comp_params[prio] = params

    def set_backing(self, path: str) -> None:
        """``backing_dev_store``: an existing regular file or block device."""
        if self.disk is not None:
            raise oserror(errno.EBUSY, "backing_dev can only be set before disksize")
        store = BackingStore(path)
        if self.settings.backing is not None:
            self.settings.backing.close()
        self.settings.backing = store

    def set_compressed_writeback(self, enable: bool) -> None:
        if self.disk is not None:
            raise oserror(errno.EBUSY, "compressed_writeback can only be set before disksize")
        self.settings.compressed_wb = enable

    def set_mem_limit(self, limit_bytes: int) -> None:
        self.settings.limit_pages = -(-limit_bytes // PAGE_SIZE)

    def reset_mem_used_max(self) -> None:
        """``mem_used_max`` back to what the pool holds now."""
        if self.disk is not None:
            self.stats.max_used_pages = self.disk.pool.total_pages

    def set_writeback_limit(self, units: int) -> None:
        """The writeback budget, in 4 KiB units (whole pages)."""
        per_page = PAGE_SIZE // 4096
        self.settings.bd_wb_limit = units // per_page * per_page

    def set_writeback_limit_enable(self, enable: bool) -> None:
        self.settings.wb_limit_enable = enable

    def set_writeback_batch_size(self, size: int) -> None:
        self.settings.wb_batch_size = size

    # -- state for callers outside the core --------------------------------------------

    @property
    def table(self) -> SlotTable | None:
        return self.disk.table if self.disk is not None else None

    @property
    def pool(self) -> ZsPool | None:
        return self.disk.pool if self.disk is not None else None

    @property
    def nr_pages(self) -> int:
        return self.disk.nr_pages if self.disk is not None else 0

    @property
    def num_active_comps(self) -> int:
        return self.disk.num_active_comps if self.disk is not None else 0

    def state(self, i: int) -> SlotState:
        """What slot ``i`` holds (see slots.py)."""
        return state_of(self.require_disk().table.flags[i])

    def slot_state(self, i: int) -> tuple[int, int, int]:
        """(handle, flags, ac_time) of slot ``i``, for tests and debugfs."""
        t = self.require_disk().table
        return t.handle[i], t.flags[i], t.ac_time[i]

    # -- post-processing primitives (the PP_SLOT protocol, see slots.py) ---------------------

    def pp_select(self, lo: int, hi: int, need: int, skip: int = 0, below_prio: int = NUM_PRIOS) -> tuple[list[int], bytes]:
        """Mark PP_SLOT on the in-RAM objects in [lo, hi) that have every flag
        of ``need``, none of ``skip``, a priority below ``below_prio`` and no
        mark yet; returns their indexes and their stored sizes >>
        PP_BUCKET_SHIFT (one byte each)."""
        table = self.require_disk().table
        n = hi - lo
        b0, b1, in_ram = _in_ram_lanes(table, lo, hi)
        b2 = lanes.lane(table.flags_col, 4, 2, lo, hi)
        ok = in_ram & lanes.vec(b1.translate(_UNMARKED)) & lanes.vec(b2.translate(_byte2_test(need, skip, below_prio)))
        if not ok:
            return [], b""
        picked = lanes.unvec(ok, n)
        lanes.put_lane(table.flags_col, 4, 1, lo, lanes.unvec(lanes.vec(b1) | ok << 7, n))   # PP_SLOT is bit 7 of byte 1
        buckets = lanes.unvec(lanes.vec(b0.translate(_BUCKET_LO)) | lanes.vec(b1.translate(_BUCKET_HI)), n)
        return list(compress(range(lo, hi), picked)), bytes(compress(buckets, picked))

    def pp_unmark(self, slots: Sequence[int]) -> None:
        """Give up marked slots (nothing to do after a reset)."""
        if self.disk is not None:
            flags = self.disk.table.flags
            for i in slots:
                flags[i] &= _NOT_PP

    def pp_marked(self, i: int) -> bool:
        """Whether slot ``i`` is still marked (untouched since the scan)."""
        return bool(self.require_disk().table.flags[i] & PP_SLOT)

    def pp_take(self, i: int) -> bool:
        """Take slot ``i`` for processing: clears its mark; False if it was
        touched since the scan."""
        flags = self.require_disk().table.flags
        if not flags[i] & PP_SLOT:
            return False
        flags[i] &= ~PP_SLOT
        return True

    def wb_budget_exhausted(self) -> bool:
        s = self.settings
        return s.wb_limit_enable and s.bd_wb_limit == 0

    def wb_budget_charge(self) -> None:
        s = self.settings
        if s.wb_limit_enable and s.bd_wb_limit > 0:
            s.bd_wb_limit -= PAGE_SIZE // 4096

    def wb_budget_refund(self) -> None:
        if self.settings.wb_limit_enable:
            self.settings.bd_wb_limit += PAGE_SIZE // 4096

    def wb_copy_out(self, i: int) -> tuple[bytes, int]:
        """Slot ``i``'s data as a page-sized buffer for writeback, and the flags
        a compressed writeback must keep to decode it later."""
        disk = self.require_disk()
        f = disk.table.flags[i]
        raw = self.settings.compressed_wb
        size = f & SIZE_MASK
        obj = disk.pool.view(disk.table.handle[i], size)
        if size == PAGE_SIZE:
            return bytes(obj), (f & (SIZE_MASK | HUGE | PRIO_MASK)) if raw else 0
        if raw:
            return bytes(obj) + bytes(PAGE_SIZE - size), f & (SIZE_MASK | PRIO_MASK)
        return self.decompress(disk.codec_for(f), obj), 0

    def wb_abandon(self, i: int, block: int) -> None:
        """Give up slot ``i`` before its write: the block back, the mark off."""
        assert self.settings.backing is not None
        self.settings.backing.release(block)
        self.require_disk().table.flags[i] &= ~PP_SLOT

    def wb_done(self, i: int, block: int, kept: int, error: OSError | None) -> None:
        """A block write finished: on success the slot's data now lives in
        ``block`` and the in-RAM object goes, if the slot is still marked;
        otherwise the block is released (and a failed page's budget refunded)."""
        disk = self.require_disk()
        backing = self.settings.backing
        assert backing is not None
        flags = disk.table.flags
        if error is not None:
            self.wb_budget_refund()
            backing.release(block)
            flags[i] &= ~PP_SLOT
            return
        self.stats.bd_writes += 1
        if not flags[i] & PP_SLOT:
            backing.release(block)
            return
        self.slot_free(disk, i)
        flags[i] = WB | kept
        disk.table.handle[i] = block
        self.stats.pages_stored += 1

    def recompress_slot(self, i: int, prio: int, prio_max: int, threshold: int) -> bool:
        """``recompress_slot``; returns whether the attempt counts against max_pages."""
        disk = self.require_disk()
        table, pool = disk.table, disk.pool
        f = table.flags[i]
        size = f & SIZE_MASK
        if not in_ram_object(f) or size < threshold:
            return False
        obj = pool.view(table.handle[i], size)
        page = bytes(obj) if size == PAGE_SIZE else self.decompress(disk.codec_for(f), obj)
        f &= ~IDLE
        table.flags[i] = f
        prio = max(prio, priority_of(f) + 1)
        if prio >= prio_max:
            return False
        old_class = pool.class_of(size)
        found = None
        while prio < prio_max:
            codec = disk.comps[prio]
            if codec is not None:
                comp = codec.compress(page)
                n = len(comp)
                if n < self.huge_class_size and pool.class_of(n) < old_class and not (threshold and n >= threshold):
                    found = comp
                    break
            prio += 1
        if found is None:
            if prio >= disk.num_active_comps:
                table.flags[i] = f | INCOMPRESSIBLE
            return True
        h = pool.store(found)
        self.slot_free(disk, i)
        table.handle[i] = h
        table.flags[i] = len(found) | (prio << PRIO_SHIFT)
        self.stats.compr_data_size += len(found)
        self.stats.pages_stored += 1
        return True

    # -- maintenance ----------------------------------------------------------------------

    def mark_idle(self, cutoff: int | None) -> None:
        """``mark_idle``: IDLE on allocated, in-RAM, not same-filled slots last
        accessed before ``cutoff`` seconds (None = all); cleared on the younger."""
        run(self.mark_idle_steps(cutoff))

    def mark_idle_steps(self, cutoff: int | None) -> Job[None]:
        """``mark_idle`` as a job, STEP_SCAN slots per step."""
        disk = self.require_disk()
        table = disk.table
        for start in range(0, disk.nr_pages, STEP_SCAN):
            if self.disk is not disk:
                return  # reset meanwhile
            stop = min(disk.nr_pages, start + STEP_SCAN)
            n = stop - start
            eligible = _in_ram_lanes(table, start, stop)[2] << 1   # IDLE is bit 1 of byte 2
            b2 = lanes.vec(lanes.lane(table.flags_col, 4, 2, start, stop))
            if cutoff is None:
                b2 |= eligible
            else:
                old = eligible & ~(_not_before(table, start, stop, max(cutoff, 0)) << 1)
                b2 = (b2 & ~eligible) | old
            lanes.put_lane(table.flags_col, 4, 2, start, lanes.unvec(b2, n))
            yield None

    def compact(self) -> int:
        """``zs_compact`` on the pool; returns pages freed."""
        return self.require_disk().pool.compact()

    def debugfs(self, name: str) -> str:
        """zram's and zsmalloc's debugfs files: ``block_state`` and ``classes``."""
        if name not in ("block_state", "classes"):
            raise oserror(errno.ENOENT, f"no debug file {name!r} (block_state, classes)")
        disk = self.require_disk()
        return self.block_state() if name == "block_state" else disk.pool.format_classes()

    def block_state(self) -> str:
        """debugfs ``block_state``: one line per allocated slot."""
        table = self.require_disk().table
        flags = table.flags
        lines = []
        for i in compress(range(table.nr_pages), lanes.nonzero_slots(table.flags_col, 4, 0, table.nr_pages)):
            f = flags[i]
            if not f & ALLOCATED:
                continue
            marks = "".join(c if f & bit else "." for c, bit in (("s", SAME), ("w", WB), ("h", HUGE), ("i", IDLE)))
            marks += "r" if f & PRIO_MASK else "."
            marks += "n" if f & INCOMPRESSIBLE else "."
            lines.append("%12d %12d.000000 %s\n" % (i, table.ac_time[i], marks))
        return "".join(lines)


def _not_before(table: SlotTable, lo: int, hi: int, cutoff: int) -> int:
    """As a ``vec``, 1 for the slots in [lo, hi) accessed at or after
    ``cutoff``: each u32 ``ac_time`` widened to a u64 lane, plus 2**32 -
    cutoff, carries into bit 32 exactly when ``ac_time >= cutoff``."""
    n = hi - lo
    if cutoff <= 0:
        return lanes.vec(b"\x01" * n)
    if cutoff > 0xFFFFFFFF:
        return 0
    wide = bytearray(8 * n)
    for k in range(4):
        wide[k::8] = lanes.lane(table.ac_col, 4, k, lo, hi)
    ones = lanes.vec(b"\x01\0\0\0\0\0\0\0" * n)
    total = lanes.vec(wide) + ones * ((1 << 32) - cutoff)
    return lanes.vec(lanes.unvec(total, 8 * n)[4::8])
