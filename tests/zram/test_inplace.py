"""An overwrite whose new object takes the old one's pool class reuses the
old object's room: the contents, the statistics and the class's object
count must be what a store of the new object and a free of the old one
leave, and the pool's invariants hold (only the zspage holding the object,
and so the pool's page count, may differ)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from uzram.zram.device import ZramDevice
from uzram.zram.slots import HUGE, IDLE, PP_SLOT, PRIO_SHIFT, SIZE_MASK

from .test_device_model import NR_PAGES, make
from .test_postprocess_model import PostProcessMachine

PAGE = 4096


def page(fill: int, seed: int) -> bytes:
    """``fill`` random bytes, then zeros: compresses to a little more than ``fill``."""
    return _random(fill, seed) + bytes(PAGE - fill)


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def device(pages: int = 16) -> ZramDevice:
    dev = ZramDevice("zram0")
    dev.store("disksize", str(pages * PAGE))
    return dev


def same_class_pair(dev: ZramDevice, fill: int = 1000) -> tuple[bytes, bytes]:
    """Two different pages whose objects take the same class."""
    disk = dev.disk
    assert disk is not None
    a = page(fill, 1)
    cls = dev.class_of_size[len(disk.compress(a))]
    for seed in range(2, 200):
        b = page(fill, seed)
        if dev.class_of_size[len(disk.compress(b))] == cls and b != a:
            return a, b
    raise AssertionError("no two pages of one class")


def counts(dev: ZramDevice) -> tuple[int, ...]:
    st = dev.stats
    pool = dev.pool
    assert pool is not None
    return (st.pages_stored, st.huge_pages, pool.objects, pool.pages_allocated)


@pytest.mark.parametrize("size", [PAGE, 2 * PAGE])
def test_compressed_over_compressed_of_one_class(size: int) -> None:
    dev = device()
    a, b = same_class_pair(dev)
    dev.write(PAGE, a * (size // PAGE))
    before = counts(dev)
    h = dev.slot_state(1)[0]
    dev.write(PAGE, b * (size // PAGE))
    assert dev.slot_state(1)[0] == h            # the same object, rewritten
    assert dev.read(PAGE, size) == b * (size // PAGE)
    assert counts(dev) == before
    disk = dev.disk
    assert disk is not None
    assert dev.stats.compr_data_size == len(disk.compress(b)) * (size // PAGE)
    assert dev.slot_state(1)[1] == len(disk.compress(b))
    assert dev.pool is not None
    dev.pool.check()


def test_huge_over_huge() -> None:
    dev = device()
    dev.write(0, _random(PAGE, 1))
    h = dev.slot_state(0)[0]
    dev.write(0, _random(PAGE, 2))
    assert dev.slot_state(0)[0] == h
    assert dev.slot_state(0)[1] == HUGE | PAGE
    assert dev.read(0, PAGE) == _random(PAGE, 2)
    st = dev.stats
    assert (st.huge_pages, st.huge_pages_since, st.pages_stored, st.compr_data_size) == (1, 2, 1, PAGE)
    assert dev.pool is not None
    dev.pool.check()


def test_other_class_stores_and_frees() -> None:
    dev = device()
    dev.write(0, page(1000, 1))
    dev.write(0, page(3000, 1))
    assert dev.read(0, PAGE) == page(3000, 1)
    assert dev.pool is not None and dev.pool.objects == 1
    assert dev.stats.pages_stored == 1
    assert dev.disk is not None
    assert dev.stats.compr_data_size == len(dev.disk.compress(page(3000, 1)))
    dev.pool.check()


def test_marks_are_dropped() -> None:
    dev = device()
    a, b = same_class_pair(dev)
    dev.write(0, a)
    dev.mark_idle(None)
    assert dev.disk is not None
    dev.disk.table.flags[0] |= PP_SLOT     # as a post-processing scan marks it
    assert dev.slot_state(0)[1] & (IDLE | PP_SLOT) == IDLE | PP_SLOT
    dev.write(0, b)
    assert dev.slot_state(0)[1] & (IDLE | PP_SLOT) == 0
    assert not dev.pp_marked(0)


def test_recompressed_object_is_replaced() -> None:
    """An object made by a recompression algorithm is freed, not rewritten:
    its priority must not survive the write."""
    dev = device()
    a, b = same_class_pair(dev)
    dev.write(0, a)
    assert dev.disk is not None
    dev.disk.table.flags[0] |= 1 << PRIO_SHIFT   # as if recompressed (the primary decodes it here)
    dev.disk.comps[1] = dev.disk.comps[0]
    dev.write(0, b)
    f = dev.slot_state(0)[1]
    assert f >> PRIO_SHIFT == 0 and f & SIZE_MASK == len(dev.disk.compress(b))
    assert dev.read(0, PAGE) == b
    assert dev.pool is not None and dev.pool.objects == 1
    dev.pool.check()


def test_memory_limit_keeps_store_then_free() -> None:
    """With mem_limit set, an overwrite stores before it frees, as the kernel
    does (so it fails at the limit as the kernel's would)."""
    dev = device()
    a, b = same_class_pair(dev)
    dev.write(0, a)
    dev.store("mem_limit", str(1 << 20))
    h = dev.slot_state(0)[0]
    dev.write(0, b)
    assert dev.read(0, PAGE) == b
    assert dev.slot_state(0)[0] != h
    assert dev.pool is not None
    dev.pool.check()


# -- the same, interleaved with everything else ---------------------------------

class InPlaceMachine(PostProcessMachine):
    """The post-processing model (writeback batches copied out and completed
    later, recompression, pending reads of written-back pages, discards,
    compaction) plus writes that change one word of pages: their objects
    mostly keep their class, so most of them are rewritten in place, also
    while a writeback of the slot is in flight."""

    @rule(first=st.integers(0, NR_PAGES - 1), count=st.integers(1, 3), at=st.integers(0, PAGE - 8),
          seed=st.integers(0, 2**32))
    def modify_word(self, first: int, count: int, at: int, seed: int) -> None:
        count = min(count, NR_PAGES - first)
        data = bytearray(self.model.read(first * PAGE, count * PAGE))
        rnd = random.Random(seed)
        for k in range(count):
            data[k * PAGE + at : k * PAGE + at + 8] = rnd.randbytes(8)
        self.dev.write(first * PAGE, data)
        self.model.write(first * PAGE, bytes(data))


TestInPlaceMachine = InPlaceMachine.TestCase
TestInPlaceMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 7), st.lists(st.sampled_from(["zero", "same", "random", "text", "half"]),
                                                                  min_size=1, max_size=4), st.integers(0, 2**32)),
                       min_size=1, max_size=12),
       limit=st.sampled_from([0, 1 << 20]))
def test_one_page_path_equals_the_run(writes: list[tuple[int, list[str], int]], limit: int) -> None:
    """A 4 KiB write (``_write_page``) leaves what ``_write_run`` leaves for
    the same page: the same slot flags, statistics and pool occupancy."""
    one, run = device(), device()
    for dev in (one, run):
        if limit:
            dev.store("mem_limit", str(limit))
    for first, kinds, seed in writes:
        rnd = random.Random(seed)
        data = b"".join(make(k, rnd) for k in kinds)[: (16 - first) * PAGE]
        for k in range(len(data) // PAGE):
            one.write((first + k) * PAGE, data[k * PAGE:(k + 1) * PAGE])
        assert run.disk is not None
        run._write_run(run.disk, first, memoryview(data), len(data) // PAGE, run.clock())
    assert one.read(0, 16 * PAGE) == run.read(0, 16 * PAGE)
    assert [one.slot_state(i)[1] for i in range(16)] == [run.slot_state(i)[1] for i in range(16)]
    skip = {"write_ios", "write_sectors"}
    assert [getattr(one.stats, n) for n in one.stats.__slots__ if n not in skip] == \
        [getattr(run.stats, n) for n in run.stats.__slots__ if n not in skip]
    assert one.pool is not None and run.pool is not None
    assert (one.pool.objects, one.pool.pages_allocated) == (run.pool.objects, run.pool.pages_allocated)
    one.pool.check()
    run.pool.check()
