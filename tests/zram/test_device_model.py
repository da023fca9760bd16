"""Random operation sequences on a ZramDevice, checked against DeviceModel."""

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from uzram.zram import ZramDevice
from uzram.zram.slots import SAME, SIZE_MASK, WB

from .model import PAGE, DeviceModel

NR_PAGES = 32
SIZE = NR_PAGES * PAGE

page_kinds = st.sampled_from(["zero", "same", "random", "text", "half"])


def make(kind: str, rnd) -> bytes:
    if kind == "zero":
        return bytes(PAGE)
    if kind == "same":
        return rnd.getrandbits(64).to_bytes(8, "little") * (PAGE // 8)
    if kind == "random":
        return rnd.randbytes(PAGE)
    if kind == "text":
        return ((b"zram swap page %d " % rnd.randrange(1000)) * 300)[:PAGE]
    return rnd.randbytes(PAGE // 2) + bytes(PAGE // 2)


ranges = st.integers(0, SIZE - 1).flatmap(lambda off: st.tuples(st.just(off), st.integers(1, min(3 * PAGE, SIZE - off))))


class DeviceMachine(RuleBasedStateMachine):
    DEDUP = False   # the variant below: pages read and written again share objects

    @initialize(alg=st.sampled_from(["lz4", "zstd"]), chain=st.sampled_from([4, 8, 16]))
    def setup(self, alg, chain):
        self.dev = ZramDevice("zram0", chain_size=chain)
        self.dev.dedup = self.DEDUP
        self.dev.store("comp_algorithm", alg)
        self.dev.store("disksize", str(SIZE))
        self.model = DeviceModel(NR_PAGES, alg, self.dev.huge_class_size)

    @rule(first=st.integers(0, NR_PAGES - 1), kinds=st.lists(page_kinds, min_size=1, max_size=4),
          seed=st.integers(0, 2**32))
    def write_pages(self, first, kinds, seed):
        rnd = random.Random(seed)
        data = b"".join(make(k, rnd) for k in kinds)[: SIZE - first * PAGE]
        buf = bytearray(data)
        self.dev.write(first * PAGE, buf)
        buf[:] = bytes(len(buf))          # the caller's buffer is reused at once
        self.model.write(first * PAGE, data)

    @rule(r=ranges, seed=st.integers(0, 2**32))
    def write_bytes(self, r, seed):
        rnd = random.Random(seed)
        off, n = r
        data = rnd.randbytes(n) if rnd.random() < 0.5 else bytes([rnd.randrange(256)]) * n
        self.dev.write(off, data)
        self.model.write(off, data)

    @rule(src=st.integers(0, NR_PAGES - 1), dst=st.integers(0, NR_PAGES - 1), n=st.integers(1, 3))
    def reswap(self, src, dst, n):
        """Pages read, then written elsewhere unchanged (swap-in, swap-out)."""
        n = min(n, NR_PAGES - src, NR_PAGES - dst)
        data = self.dev.read(src * PAGE, n * PAGE)
        assert data == self.model.read(src * PAGE, n * PAGE)
        self.dev.write(dst * PAGE, data)
        self.model.write(dst * PAGE, data)

    @rule(r=ranges)
    def read(self, r):
        assert self.dev.read(*r) == self.model.read(*r)

    @rule(r=ranges)
    def discard(self, r):
        self.dev.discard(*r)
        self.model.discard(*r)

    @rule(r=ranges)
    def write_zeroes(self, r):
        self.dev.write_zeroes(*r)
        self.model.write_zeroes(*r)

    @rule()
    def compact(self):
        self.dev.store("compact", "1")

    @rule(mode=st.sampled_from(["all", "0", "100"]))
    def idle(self, mode):
        self.dev.store("idle", mode)

    @invariant()
    def contents_and_stats(self):
        assert self.dev.peek(0, SIZE) == self.model.read(0, SIZE)
        f = [int(x) for x in self.dev.show("mm_stat").split()]
        exp = self.model.expected_stats()
        assert f[0] == exp["orig"]
        assert f[5] == exp["same"]
        assert f[7] == exp["huge"]
        assert f[1] == exp["compr"]
        if not self.DEDUP:
            assert f[2] >= f[1]
        self.dev.pool.check()
        check_sharing(self.dev)


def check_sharing(dev) -> None:
    """The pool holds one object per distinct handle of the in-RAM slots,
    with one reference per slot."""
    refs: dict[int, int] = {}
    for i in range(dev.disk.nr_pages):
        h, f, _ = dev.slot_state(i)
        if f & SIZE_MASK and not f & (SAME | WB):
            refs[h] = refs.get(h, 0) + 1
    pool = dev.pool
    assert pool.objects == len(refs)
    assert pool.shared == {h: n - 1 for h, n in refs.items() if n > 1}
    assert pool.shared_refs == sum(refs.values()) - len(refs)
    if not dev.dedup:
        assert not pool.shared


TestDeviceMachine = DeviceMachine.TestCase
TestDeviceMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


class DedupDeviceMachine(DeviceMachine):
    DEDUP = True


TestDedupDeviceMachine = DedupDeviceMachine.TestCase
TestDedupDeviceMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
