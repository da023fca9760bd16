"""The slot table: one entry per 4 KiB page of the device, as zram's table.

Three packed columns in private anonymous mappings, so a 100 GiB device costs
no memory until its slots are touched: ``handle`` (pool handle, fill word of
a same-filled page, or backing block), ``flags`` (stored size in the low 13
bits and the ZRAM_* flags above), ``ac_time`` (last access, seconds).
"""

from __future__ import annotations

import mmap

import numpy as np

ZRAM_FLAG_SHIFT = 13
SIZE_MASK = (1 << ZRAM_FLAG_SHIFT) - 1
SAME = 1 << 13
WB = 1 << 14
PP_SLOT = 1 << 15
HUGE = 1 << 16
IDLE = 1 << 17
INCOMPRESSIBLE = 1 << 18
PRIO_SHIFT = 19
PRIO_MASK = 3 << PRIO_SHIFT
ALLOCATED = SIZE_MASK | SAME | WB   # any of these bits set: the slot holds data
ACCESS_CLEAR = ~(IDLE | PP_SLOT) & 0xFFFFFFFF

_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


class SlotTable:
    __slots__ = ("nr_pages", "_maps", "handle", "flags", "ac_time")

    def __init__(self, nr_pages: int) -> None:
        self.nr_pages = nr_pages
        self._maps = [mmap.mmap(-1, max(nr_pages, 1) * width, flags=_MAP_FLAGS) for width in (8, 4, 4)]
        self.handle = memoryview(self._maps[0]).cast("Q")
        self.flags = memoryview(self._maps[1]).cast("I")
        self.ac_time = memoryview(self._maps[2]).cast("I")

    def np_handle(self) -> np.ndarray:
        return np.frombuffer(self._maps[0], dtype=np.uint64, count=self.nr_pages)

    def np_flags(self) -> np.ndarray:
        return np.frombuffer(self._maps[1], dtype=np.uint32, count=self.nr_pages)

    def np_ac_time(self) -> np.ndarray:
        return np.frombuffer(self._maps[2], dtype=np.uint32, count=self.nr_pages)
