"""The zsmalloc-style pool against a dictionary model, plus RSS checks."""

import os
import random
from array import array

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uzram.zram.zsmalloc import INUSE_RATIO_100, ZsPool

PAGE = 4096


def fill(pool, rng, n, lo=1, hi=4096):
    objs = {}
    for _ in range(n):
        data = rng.randbytes(rng.randint(lo, hi))
        objs[pool.store(data)] = data
    return objs


def verify(pool, objs):
    for h, data in objs.items():
        assert bytes(pool.view(h, len(data))) == data
    pool.check()


def test_store_view_free_roundtrip():
    pool = ZsPool()
    rng = random.Random(1)
    objs = fill(pool, rng, 2000)
    verify(pool, objs)
    for h in list(objs)[::2]:
        pool.free(h)
        del objs[h]
    verify(pool, objs)
    assert pool.objects == len(objs)
    for h in list(objs):
        pool.free(h)
    assert pool.total_pages == 0
    pool.check()


def test_handles_are_reused_and_never_zero():
    pool = ZsPool()
    a = pool.malloc(100)
    pool.free(a)
    b = pool.malloc(200)
    assert a == b != 0


def test_allocation_prefers_most_used_zspage():
    pool = ZsPool()
    size = 3000  # 3008-byte class: several objects per zspage
    hs = [pool.malloc(size) for _ in range(40)]
    cls = pool._by_size[size]
    # free objects so that zspages end up at different fullness
    for h in hs[: cls.opz - 1]:        # first zspage keeps one object
        pool.free(h)
    pool.free(hs[cls.opz])             # second zspage loses one object
    pool.check()
    h = pool.malloc(size)
    where = pool.zspage_of(h)
    assert where == pool.zspage_of(hs[cls.opz + 1])  # went to the fuller zspage


def test_empty_zspage_returns_memory_at_once():
    pool = ZsPool()
    hs = [pool.malloc(2000) for _ in range(100)]
    pages = pool.total_pages
    assert pages > 0
    for h in hs[:50]:
        pool.free(h)
    assert pool.total_pages < pages
    for h in hs[50:]:
        pool.free(h)
    assert pool.total_pages == 0


def test_huge_objects_have_no_header():
    pool = ZsPool()
    data = os.urandom(PAGE)
    h = pool.store(data)
    assert pool.total_pages == 1
    assert bytes(pool.view(h, PAGE)) == data
    pool.check()


def test_size_bounds():
    pool = ZsPool()
    for bad in (0, PAGE + 1):
        with pytest.raises(ValueError):
            pool.malloc(bad)


def test_compaction_moves_objects_and_frees_pages():
    pool = ZsPool()
    rng = random.Random(2)
    objs = fill(pool, rng, 3000, 100, 3000)
    for h in rng.sample(sorted(objs), 2200):
        pool.free(h)
        del objs[h]
    before = pool.total_pages
    freeable = sum(r.freeable for r in pool.class_stats())
    assert freeable > 0
    freed = pool.compact()
    assert freed > 0
    assert pool.total_pages == before - freed
    assert pool.pages_compacted == freed
    assert sum(r.freeable for r in pool.class_stats()) == 0
    verify(pool, objs)


def test_compaction_skips_pinned_zspages_and_deferred_frees():
    pool = ZsPool()
    rng = random.Random(3)
    objs = fill(pool, rng, 400, 1000, 1000)
    hs = sorted(objs)
    pinned = hs[0]
    token = pool.pin(pinned)
    loc_before = pool._loc[pinned]
    for h in hs[1:]:
        if rng.random() < 0.8:
            pool.free(h)
            del objs[h]
    pool.compact()
    assert pool._loc[pinned] == loc_before, "a pinned object moved"
    view = pool.view(pinned, 1000)
    assert bytes(view) == objs[pinned]
    # freeing the pinned object must not let its bytes be reused while pinned
    data = objs.pop(pinned)
    pool.free(pinned)
    for _ in range(50):
        h = pool.store(b"\xee" * 1000)
        objs[h] = b"\xee" * 1000
    assert bytes(view) == data
    pool.unpin(token)
    verify(pool, objs)


def test_class_table_format():
    pool = ZsPool()
    fill(pool, random.Random(4), 100)
    text = pool.format_classes()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["class", "size", "10%", "20%"]
    assert lines[-1].split()[0] == "Total"
    rows = {int(line.split()[0]): line.split() for line in lines[1:-2]}
    assert rows[254][1] == "4096"
    total_pages = sum(int(r[15]) for r in rows.values())
    assert total_pages == pool.total_pages


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_memory_leaves_rss():
    """Memory really goes back to the OS, not only out of the counters."""
    pool = ZsPool()
    rng = random.Random(5)
    base = rss_bytes()
    block = rng.randbytes(1 << 20)
    hs = [pool.store(block[i % 200 * 4096 : i % 200 * 4096 + 2000]) for i in range(40000)]  # ~80 MB
    grown = rss_bytes() - base
    assert grown > 60 << 20
    for h in hs:
        pool.free(h)
    assert pool.total_pages == 0
    assert rss_bytes() - base < grown // 4


class PoolMachine(RuleBasedStateMachine):
    """Random malloc/free/compact/pin sequences against a dict of contents."""

    def __init__(self):
        super().__init__()
        self.pool = ZsPool(chain_size=4)
        self.objs: dict[int, bytes] = {}
        self.pins: list = []

    @rule(size=st.sampled_from([1, 24, 25, 100, 500, 1500, 2000, 3000, 3600, 4096]), fill=st.integers(0, 255))
    def alloc(self, size, fill):
        data = bytes([fill]) * size
        self.objs[self.pool.store(data)] = data

    @precondition(lambda self: self.objs)
    @rule(pick=st.randoms(use_true_random=False))
    def free(self, pick):
        h = pick.choice(sorted(self.objs))
        self.pool.free(h)
        del self.objs[h]

    @rule()
    def compact(self):
        self.pool.compact()

    @precondition(lambda self: self.objs)
    @rule(pick=st.randoms(use_true_random=False))
    def pin(self, pick):
        h = pick.choice(sorted(self.objs))
        self.pins.append((self.pool.pin(h), h, self.objs[h], self.pool.view(h, len(self.objs[h]))))

    @precondition(lambda self: self.pins)
    @rule()
    def unpin(self):
        token, h, data, view = self.pins.pop(0)
        assert bytes(view) == data, "pinned bytes changed"
        self.pool.unpin(token)

    @invariant()
    def consistent(self):
        verify(self.pool, self.objs)
        for cls in self.pool.classes:
            for zid in self.pool.group(cls, INUSE_RATIO_100):
                assert self.pool.inuse(zid) == cls.opz


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_locations_widen_past_32_bit_addresses():
    """The handle table holds 32-bit locations until a chunk lies beyond
    32 GiB of pool addresses; then it is widened, locations intact."""
    pool = ZsPool()
    rng = random.Random(5)
    objs = fill(pool, rng, 50)
    assert pool._loc.itemsize == 4
    # stand-ins for more chunks (never addressed): the next one starts at 32 GiB
    first = len(pool._chunks)
    pool._chunks += [pool._chunks[0]] * (8192 - first)
    pool._windows += pool._windows[:8] * (8192 - first)
    pool._page_zid.extend(array("i", [-1]) * ((8192 - first) * 1024))
    for ppz in list(pool._frames):
        del pool._frames[ppz]       # nothing left to take but a new chunk
    pool._recent.clear()
    h = pool.store(b"x" * 4096)
    assert pool._loc.itemsize == pool._zfree.itemsize == 8 and pool._loc[h] >= 1 << 32
    objs[h] = b"x" * 4096
    objs.update(fill(pool, rng, 50))
    verify(pool, objs)
    for h in list(objs):
        pool.free(h)
    pool.check()
