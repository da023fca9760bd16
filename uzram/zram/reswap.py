"""Pages swapped in and out again share one object (``--dedup``).

Why: once swap is more than half full, the kernel frees a swap slot as its
page is swapped in. zram hears of it (``swap_slot_free_notify``) and frees
the object at once; an NBD server hears nothing until swap discards the
whole 256-slot cluster. When the page, unchanged, is swapped out again to
another slot, the pool would hold it twice: under memory pressure, the
memory a swap-out was meant to free.

How: every write computes its object's key (CRC-32 and length) and keeps
it with the slot; every read of an in-RAM object made by the primary
algorithm (or stored raw) records the slot in a direct-mapped table under
that key. A write whose new object
has a recorded key takes a reference to the recorded slot's object instead
of storing a copy (``ZsPool.share``), if that slot still holds an object of
the same shape and the very same bytes. The table holds hints only: every
hit is checked against the slot's flags and the object's bytes, so a stale
or colliding entry costs a comparison, never a wrong page. A shared object
is never written in place; each slot's free drops one reference.

Each slot counts its object in ``compr_data_size`` and ``pages_stored`` as
if it were its own (the kernel's accounting per slot); ``mem_used_total``
shows what sharing saves.
"""

from __future__ import annotations

import mmap
import zlib

from .slots import HUGE, PRIO_MASK, SAME, SIZE_MASK, WB, SlotTable
from .zsmalloc import ZsPool

SHAPE = SIZE_MASK | SAME | WB | HUGE | PRIO_MASK   # what a shared object's slots have in common
MAX_ENTRIES = 1 << 21   # 8 MiB of table at most (a 8 GiB device)

_crc32 = zlib.crc32


class RecentReads:
    """Slots read lately, by a key of their object's bytes (``key``), and
    each slot's key as its last write computed it (so a read costs two
    lookups, not a checksum)."""

    __slots__ = ("_maps", "slots", "keys", "size")

    def __init__(self, nr_pages: int) -> None:
        # one entry per slot: a page read from a slot is usually written
        # again within the next tens of thousands of reads (the LRU's length)
        self.size = min(max(nr_pages, 1021), MAX_ENTRIES) | 1
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        self._maps = (mmap.mmap(-1, self.size * 4, flags=flags), mmap.mmap(-1, max(nr_pages, 1) * 4, flags=flags))
        self.slots = memoryview(self._maps[0]).cast("I")   # by key: slot + 1; 0: none
        self.keys = memoryview(self._maps[1]).cast("I")    # by slot: its object's key

    @property
    def maps(self) -> tuple[mmap.mmap, mmap.mmap]:
        """The two tables' mappings (prefaulted with the slot table under --swap)."""
        return self._maps

    def key(self, obj: bytes | memoryview, n: int) -> int:
        """The table index of an object of ``n`` bytes: its CRC-32 (about
        0.3 µs for a 2 KiB object) and its length."""
        return (_crc32(obj) ^ n << 20) % self.size

    def note(self, i: int) -> None:
        """Slot ``i`` was read."""
        self.slots[self.keys[i]] = i + 1

    def find(self, i: int, comp: bytes | memoryview, n: int, new_flags: int, table: SlotTable, pool: ZsPool) -> int:
        """A new reference to a recorded object equal to ``comp`` (``n`` bytes,
        to be stored in slot ``i`` with ``new_flags``), or 0. Records the
        key as slot ``i``'s (a write that fails after this leaves a key
        that misses: a hint, checked like any other)."""
        k = self.key(comp, n)
        self.keys[i] = k
        j = self.slots[k] - 1
        if j < 0 or table.flags[j] & SHAPE != new_flags:
            return 0
        h = table.handle[j]
        data = comp if type(comp) is bytes else bytes(comp)
        if not data.startswith(pool.view(h, n)):   # equal lengths: a memcmp
            return 0
        pool.share(h)
        return h
