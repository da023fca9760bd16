"""The slot table: one entry per 4 KiB page of the device, as zram's table.

Theory of operation
===================

Columns. Three packed columns in private anonymous mappings, so a 100 GiB
device costs no memory until its slots are touched: ``handle`` (u64),
``flags`` (u32: the stored size in the low 13 bits, the ZRAM_* flags above,
the compressor priority in two bits) and ``ac_time`` (u32, seconds of the
last access; 0 for an empty slot).

States. Every slot is in exactly one state (:class:`SlotState`, computed by
:func:`state_of`), which says what ``handle`` means:

==============  ===============================  ============================
state           flags                            handle
==============  ===============================  ============================
EMPTY           no size, no SAME, no WB          0 (reads as zeros)
SAME            SAME, size 0                     the repeated 8-byte word
                                                 (little-endian; 0: zeros)
COMPRESSED      size 1..huge_class_size-1,       pool handle of the object;
                priority 0..3                    priority says which
                                                 algorithm made it
HUGE            HUGE, size PAGE_SIZE             pool handle of the raw page
WRITTEN_BACK    WB (+ size, HUGE and priority    backing-store block
                of the object when written
                raw by compressed writeback)
==============  ===============================  ============================

Marks, on COMPRESSED and HUGE slots only (writing back, freeing or
overwriting a slot drops them):

- IDLE: set by ``idle`` (``mark_idle``) on in-RAM COMPRESSED/HUGE slots
  not accessed since a cutoff; cleared by any access.
- PP_SLOT: the slot was picked by a post-processing scan (writeback or
  recompress) that has not reached it yet; cleared by any access, write or
  free, and by the job when it takes or gives up the slot.
- INCOMPRESSIBLE: recompression found no algorithm that makes it smaller;
  a later recompress skips it. Cleared when the slot is freed or rewritten.

Transitions (each one inside a single call on the owner thread):

- write: any state -> SAME / COMPRESSED / HUGE. The new object is stored
  before the old one is freed (``slot_free``), so a failed write (ENOMEM at
  the memory limit) leaves the old contents.
- read: state unchanged; IDLE and PP_SLOT cleared, ``ac_time`` set.
- discard / write_zeroes(unmap): -> EMPTY (``slot_free``).
  write_zeroes without unmap: -> SAME with word 0.
- writeback: COMPRESSED / HUGE with PP_SLOT -> WRITTEN_BACK, only after the
  block write succeeded and only if PP_SLOT is still set then; otherwise
  the block is released and the slot keeps its newer contents.
- recompress: COMPRESSED / HUGE with PP_SLOT -> COMPRESSED at a higher
  priority, or the same state marked INCOMPRESSIBLE.
- reset: the whole table is dropped with the disk.

Guards. There are no locks: one owner thread runs every operation to
completion, and long work runs as jobs (``jobs.py``) that yield only at
checkpoints where each slot is in its old or its new state. Three rules
replace the kernel's slot lock:

- The post-processing rule: a job works on a slot only while its PP_SLOT
  mark is set; anything that touches the slot clears the mark, so the job
  sees that and leaves the slot alone. A job stopped at a checkpoint
  unmarks what it selected but did not process.
- The stable-page rule: a WRITTEN_BACK slot's block is pinned in the
  backing store while it is being read off the owner thread; releasing a
  pinned block (the slot was overwritten or discarded meanwhile) is
  deferred until the last unpin, so a read never sees the block's next
  contents, and a patch is applied only if the slot still holds that block.
- The view rule: a pool view (``ZsPool.view``) is valid until the next
  pool mutation; the core copies or consumes it before anything else runs.
"""

from __future__ import annotations

import enum
import mmap

ZRAM_FLAG_SHIFT = 13
SIZE_MASK = (1 << ZRAM_FLAG_SHIFT) - 1   # stored object size (0 for EMPTY, SAME)
SAME = 1 << 13            # ZRAM_SAME: handle is the fill word
WB = 1 << 14              # ZRAM_WB: handle is a backing-store block
PP_SLOT = 1 << 15         # ZRAM_PP_SLOT: picked by a post-processing scan
HUGE = 1 << 16            # ZRAM_HUGE: stored uncompressed
IDLE = 1 << 17            # ZRAM_IDLE
INCOMPRESSIBLE = 1 << 18  # ZRAM_INCOMPRESSIBLE: no recompression helped
PRIO_SHIFT = 19
PRIO_MASK = 3 << PRIO_SHIFT   # ZRAM_COMP_PRIORITY: 0 primary, 1..3 recompressed
NUM_PRIOS = 4   # priorities 0..3: a bound above every one of them
ALLOCATED = SIZE_MASK | SAME | WB   # any of these bits set: the slot holds data
ACCESS_CLEAR = ~(IDLE | PP_SLOT) & 0xFFFFFFFF   # what any access leaves of the flags
SPECIAL = SAME | WB | HUGE | PRIO_MASK  # slots the primary decompressor does not read

_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


class SlotState(enum.Enum):
    """What a slot holds (the table above); marks are separate flags."""

    EMPTY = "empty"
    SAME = "same-filled"
    COMPRESSED = "compressed"
    HUGE = "huge"
    WRITTEN_BACK = "written back"


def state_of(flags: int) -> SlotState:
    """The state encoded in a slot's ``flags``."""
    if not flags & ALLOCATED:
        return SlotState.EMPTY
    if flags & WB:
        return SlotState.WRITTEN_BACK
    if flags & SAME:
        return SlotState.SAME
    if flags & HUGE:
        return SlotState.HUGE
    return SlotState.COMPRESSED


def priority_of(flags: int) -> int:
    """Which compressor made the object: 0 primary, 1..3 recompression."""
    return (flags & PRIO_MASK) >> PRIO_SHIFT


def in_ram_object(flags: int) -> bool:
    """COMPRESSED or HUGE: a pool object that idle marking and
    post-processing may pick."""
    return bool(flags & SIZE_MASK) and not flags & (WB | SAME)


class SlotTable:
    """The three columns, as typed views (``handle``, ``flags``, ``ac_time``,
    for one slot at a time) and as the mmaps themselves (``*_col``, for
    whole-window byte operations, see ``lanes.py``)."""

    __slots__ = ("nr_pages", "_maps", "handle", "flags", "ac_time", "handle_col", "flags_col", "ac_col")

    def __init__(self, nr_pages: int) -> None:
        self.nr_pages = nr_pages
        self._maps = [mmap.mmap(-1, max(nr_pages, 1) * width, flags=_MAP_FLAGS) for width in (8, 4, 4)]
        self.handle_col, self.flags_col, self.ac_col = self._maps
        self.handle = memoryview(self._maps[0]).cast("Q")
        self.flags = memoryview(self._maps[1]).cast("I")
        self.ac_time = memoryview(self._maps[2]).cast("I")
