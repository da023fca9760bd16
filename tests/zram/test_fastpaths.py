"""The fast paths against the plain ones: a multi-page request must leave
exactly what the same pages written or read one request at a time leave,
and the pool's remembered allocation target must always be the zspage
zsmalloc's rule picks."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.zram import pages
from tests.zram.model import DeviceModel
from uzram.zram.device import ZramDevice
from uzram.zram.zsmalloc import ZsPool

PAGE = 4096
NR_PAGES = 24
SIZE = NR_PAGES * PAGE
KINDS = ("zero", "same", "compressible", "half", "incompressible")


def make_page(kind: str, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "zero":
        return pages.zero()
    if kind == "same":
        return pages.same(rng.choice([1, 0x0101010101010101, 0xFFFFFFFFFFFFFFFF, seed + 1]))
    if kind == "compressible":
        return pages.compressible(rng)
    if kind == "half":
        return pages.half_random(rng)
    return pages.incompressible(rng)


page_specs = st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 16))
requests = st.tuples(st.integers(0, NR_PAGES - 1), st.lists(page_specs, min_size=1, max_size=8))


def device(clock: list[int]) -> ZramDevice:
    dev = ZramDevice("zram0", clock=lambda: clock[0])
    dev.store("disksize", str(SIZE))
    return dev


def state(dev: ZramDevice) -> tuple[object, ...]:
    t = dev.table
    assert t is not None and dev.pool is not None
    dev.pool.check()
    return (dev.peek(0, SIZE), dev.show("mm_stat"), bytes(t.flags), bytes(t.ac_time),
            dev.pool.format_classes())


@settings(max_examples=60, deadline=None)
@given(reqs=st.lists(requests, min_size=1, max_size=12), limit_pages=st.sampled_from([0, 3, 6, 12]))
def test_multi_page_writes_match_page_by_page(reqs: list[tuple[int, list[tuple[str, int]]]], limit_pages: int) -> None:
    clock = [100]
    batched, single = device(clock), device(clock)
    model = DeviceModel(NR_PAGES)
    for dev in (batched, single):
        if limit_pages:
            dev.store("mem_limit", str(limit_pages * PAGE))
    for first, specs in reqs:
        clock[0] += 1
        specs = specs[: NR_PAGES - first]
        data = b"".join(make_page(k, s) for k, s in specs)
        failed_at = None
        try:
            batched.write(first * PAGE, data)
        except OSError as e:
            assert e.errno == errno.ENOMEM
            failed_at = e
        written = 0
        for n in range(len(specs)):
            try:
                single.write((first + n) * PAGE, data[n * PAGE:(n + 1) * PAGE])
            except OSError as e:
                assert e.errno == errno.ENOMEM
                break
            written += 1
        assert (failed_at is None) == (written == len(specs))
        model.write(first * PAGE, data[: written * PAGE])
        assert batched.peek(0, SIZE) == model.read(0, SIZE)
        assert state(batched)[:4] == state(single)[:4]
        bm, sm = batched.show("io_stat").split(), single.show("io_stat").split()
        assert bm[1] == sm[1]   # failed writes: one per failing request in both
    exp = model.expected_stats()
    mm = [int(x) for x in batched.show("mm_stat").split()]
    assert (mm[0], mm[1], mm[5], mm[7]) == (exp["orig"], exp["compr"], exp["same"], exp["huge"])


@settings(max_examples=40, deadline=None)
@given(reqs=st.lists(requests, min_size=1, max_size=10), reads=st.lists(st.tuples(st.integers(0, SIZE - 1),
                                                                                     st.integers(1, 6 * PAGE))))
def test_multi_page_reads_match_page_by_page(reqs: list[tuple[int, list[tuple[str, int]]]],
                                             reads: list[tuple[int, int]]) -> None:
    clock = [100]
    batched, single = device(clock), device(clock)
    for first, specs in reqs:
        data = b"".join(make_page(k, s) for k, s in specs[: NR_PAGES - first])
        batched.write(first * PAGE, data)
        single.write(first * PAGE, data)
    for dev in (batched, single):
        dev.store("idle", "all")
    for offset, length in reads:
        clock[0] += 1
        length = min(length, SIZE - offset)
        got = b"".join(batched.read_chunks(offset, length))   # type: ignore[arg-type]  # no backing: never pending
        first, last = offset // PAGE, (offset + length - 1) // PAGE
        parts = [b"".join(single.read_chunks(i * PAGE, PAGE)) for i in range(first, last + 1)]  # type: ignore[arg-type]
        whole = b"".join(parts)
        assert got == whole[offset - first * PAGE: offset - first * PAGE + length]
        assert state(batched) == state(single)


class HotZspage(RuleBasedStateMachine):
    """Stores, frees, pins and compaction in any order: ``ZsPool.check``
    verifies the remembered target is zsmalloc's pick after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ZsPool()
        self.objs: dict[int, bytes] = {}
        self.pins: list[object] = []
        self.rng = random.Random(0)

    @rule(size=st.sampled_from([1, 32, 100, 500, 1000, 2000, 3000, 4096]), n=st.integers(1, 40))
    def store(self, size: int, n: int) -> None:
        for _ in range(n):
            data = self.rng.randbytes(size)
            self.objs[self.pool.store(data)] = data

    @precondition(lambda self: self.objs)
    @rule(share=st.floats(0.05, 1.0))
    def free(self, share: float) -> None:
        for h in self.rng.sample(sorted(self.objs), max(1, int(len(self.objs) * share))):
            self.pool.free(h)
            del self.objs[h]

    @precondition(lambda self: self.objs)
    @rule()
    def pin(self) -> None:
        self.pins.append(self.pool.pin(self.rng.choice(sorted(self.objs))))

    @precondition(lambda self: self.pins)
    @rule()
    def unpin(self) -> None:
        self.pool.unpin(self.pins.pop())  # type: ignore[arg-type]  # a token from pin

    @rule()
    def compact(self) -> None:
        self.pool.compact()

    @invariant()
    def consistent(self) -> None:
        self.pool.check()
        for h, data in self.objs.items():
            assert bytes(self.pool.view(h, len(data))) == data


TestHotZspage = HotZspage.TestCase
TestHotZspage.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_same_filled_detection_by_kind() -> None:
    dev = ZramDevice("zram0")
    dev.store("disksize", str(SIZE))
    word = pages.same(0x0123456789ABCDEF)
    almost = bytearray(word)
    almost[-1] ^= 1
    dev.write(0, pages.zero() + word + bytes(almost) + pages.same(0))
    mm = [int(x) for x in dev.show("mm_stat").split()]
    assert mm[5] == 3   # zero, word, zero; the page with one byte changed is compressed
    assert dev.read(0, 4 * PAGE) == pages.zero() + word + bytes(almost) + pages.same(0)


if __name__ == "__main__":
    pytest.main([__file__])
