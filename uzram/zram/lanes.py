"""Whole-column operations on the slot table with the standard library.

The table's columns are little-endian integers packed in mmaps. A scan over
thousands of slots must not loop in Python, so these functions work on one
byte *lane* of a column at a time: ``lane`` slices byte ``k`` of every slot
out of a window (an extended slice, copied in C); ``bytes.translate`` maps
every byte of a lane through a 256-entry table; and a lane read as one big
integer (``vec``) combines lanes bytewise with ``&``, ``|`` and ``^``,
since those never carry from one byte into the next. The result goes back
into the column with an extended-slice assignment (``put_lane``), and the
slots it selects come out with ``itertools.compress``.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable


def table(f: Callable[[int], int]) -> bytes:
    """A ``bytes.translate`` table: byte ``x`` becomes ``f(x)``."""
    return bytes(f(x) & 0xFF for x in range(256))


NONZERO = table(lambda x: x != 0)      # 1 where the byte is not zero


def lane(col: mmap.mmap, width: int, k: int, lo: int, hi: int) -> bytes:
    """Byte ``k`` of each slot in [lo, hi) of a column ``width`` bytes wide."""
    return col[lo * width + k : hi * width : width]


def put_lane(col: mmap.mmap, width: int, k: int, lo: int, data: bytes) -> None:
    """Store ``data`` as byte ``k`` of the slots from ``lo`` on."""
    col[lo * width + k : (lo + len(data)) * width : width] = data


def vec(b: bytes | bytearray) -> int:
    """A lane as one integer, for bytewise ``&``, ``|``, ``^``."""
    return int.from_bytes(b, "little")


def unvec(x: int, n: int) -> bytes:
    """The ``n``-byte lane of a ``vec`` (bytes beyond ``n`` must be zero)."""
    return x.to_bytes(n, "little")


def nonzero_slots(col: mmap.mmap, width: int, lo: int, hi: int) -> bytes:
    """One byte per slot in [lo, hi): 1 where the slot's value is not 0."""
    n = hi - lo
    acc = 0
    for k in range(width):
        acc |= vec(lane(col, width, k, lo, hi))
    return unvec(acc, n).translate(NONZERO)


def is_zero(col: mmap.mmap, width: int, lo: int, hi: int) -> bool:
    """Whether every slot in [lo, hi) is 0 (a copy and a memcmp)."""
    window = col[lo * width : hi * width]
    return window == bytes(len(window))


def nonzero_indexes(col: mmap.mmap, width: int, lo: int, hi: int, limit: int) -> list[int]:
    """Up to ``limit`` slots in [lo, hi) whose value is not 0, in order.
    Scans windows growing from 512 slots, so a dense range costs about what
    the slots found cost, and an empty one a few memcmps."""
    found: list[int] = []
    start, size = lo, 512
    while start < hi and len(found) < limit:
        end = min(hi, start + size)
        window = col[start * width : end * width]
        if window != bytes(len(window)):
            marks = window.translate(NONZERO)
            at = marks.find(1)
            while at >= 0 and len(found) < limit:
                slot = at // width
                found.append(start + slot)
                at = marks.find(1, (slot + 1) * width)
        start, size = end, size * 4
    return found
