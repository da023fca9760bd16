"""The read path's one-page and multi-page bodies: corrupt objects, shared
same-filled pages, and the access marks, page by page."""

from __future__ import annotations

import errno
import random

import pytest

from tests.zram import pages
from uzram.zram.device import ZramDevice
from uzram.zram.slots import IDLE, SIZE_MASK

PAGE = 4096


def device(clock: list[int], nr_pages: int = 8) -> ZramDevice:
    dev = ZramDevice("zram0", clock=lambda: clock[0])
    dev.store("disksize", str(nr_pages * PAGE))
    return dev


def corrupt(dev: ZramDevice, i: int) -> None:
    """Overwrite slot i's stored object so that it no longer decompresses to a page."""
    t, pool = dev.table, dev.pool
    assert t is not None and pool is not None
    obj = pool.view(t.handle[i], t.flags[i] & SIZE_MASK)
    obj[:] = b"\xff" * len(obj)


@pytest.mark.parametrize("length", [PAGE, 3 * PAGE])
def test_corrupt_object_reads_as_eio_and_counts(length: int) -> None:
    clock = [10]
    dev = device(clock)
    rng = random.Random(1)
    data = b"".join(pages.compressible(rng) for _ in range(3))
    dev.write(0, data)
    corrupt(dev, 1)
    clock[0] = 20
    with pytest.raises(OSError) as e:
        dev.read_chunks(PAGE if length == PAGE else 0, length)
    assert e.value.errno == errno.EIO
    assert dev.stats.failed_reads == 1
    assert dev.stats.read_ios == 1
    t = dev.table
    assert t is not None
    # the slots read up to the failing one, that one included, were accessed
    assert list(t.ac_time[:3]) == ([10, 20, 10] if length == PAGE else [20, 20, 10])
    # the other pages still read
    assert dev.read_chunks(0, PAGE) == [data[:PAGE]]
    assert dev.read_chunks(2 * PAGE, PAGE) == [data[2 * PAGE:]]


def test_same_filled_pages_any_number_of_words() -> None:
    """More distinct fill words than are kept shared: every read is right."""
    clock = [10]
    n = 200
    dev = device(clock, n)
    words = [(k * 0x0101010101010101 + 1) & 0xFFFFFFFFFFFFFFFF for k in range(n)]
    for i, w in enumerate(words):
        dev.write(i * PAGE, pages.same(w))
    for _ in range(2):
        for i, w in enumerate(words):
            assert dev.read_chunks(i * PAGE, PAGE) == [pages.same(w)]
        assert b"".join(dev.read_chunks(0, n * PAGE)) == b"".join(pages.same(w) for w in words)  # type: ignore[arg-type]
    assert dev.stats.same_pages == n


@pytest.mark.parametrize("length", [PAGE, 4 * PAGE])
def test_read_clears_idle_and_sets_access_time(length: int) -> None:
    clock = [100]
    dev = device(clock)
    rng = random.Random(2)
    dev.write(0, pages.compressible(rng) + pages.same(7) + pages.incompressible(rng))   # slot 3 stays empty
    dev.store("idle", "all")
    t = dev.table
    assert t is not None
    marked = (0, 2)   # same-filled slots are never marked idle (mark_idle)
    assert [i for i in range(4) if t.flags[i] & IDLE] == list(marked)
    clock[0] = 250
    dev.read_chunks(0, length)
    touched = range(length // PAGE)
    for i in range(4):
        if i in touched and i < 3:
            assert not t.flags[i] & IDLE and t.ac_time[i] == 250
        elif i < 3:
            assert bool(t.flags[i] & IDLE) == (i in marked) and t.ac_time[i] == 100
        else:
            assert t.flags[i] == 0 and t.ac_time[i] == 0   # never written: no access recorded
    # a second read of a page already accessed leaves its flags as they were
    before = bytes(t.flags)
    clock[0] = 300
    dev.read_chunks(0, length)
    assert bytes(t.flags) == before
    assert t.ac_time[0] == 300
