"""Writeback, recompression, compaction and I/O interleaved at every step,
against the reference model (stable-page semantics under every race).

Jobs are driven by hand: a writeback batch is copied out, then any number of
other operations run, then its I/O is done and completed — the way the daemon
runs them around awaits. Reads of written-back pages are left pending
(block pinned) while other operations, including new writebacks that reuse
blocks, run in between.
"""

import os
import random
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from uzram.zram import ZramDevice
from uzram.zram.postprocess import RecompressJob, WritebackJob
from uzram.zram.slots import HUGE, SAME, SIZE_MASK, WB

from .model import PAGE, DeviceModel
from .test_device_model import NR_PAGES, SIZE, DeviceMachine, check_sharing, make, page_kinds, ranges


class PostProcessMachine(DeviceMachine):
    @initialize(compressed=st.booleans(), backing_pages=st.sampled_from([8, 64]),
                batch=st.sampled_from([1, 3, 32]),
                fill=st.lists(page_kinds, min_size=NR_PAGES, max_size=NR_PAGES),
                seed=st.integers(0, 2**32))
    def setup(self, compressed, backing_pages, batch, fill, seed):
        rnd = random.Random(seed)
        fd, self.path = tempfile.mkstemp(prefix="uzram-backing-")
        os.ftruncate(fd, backing_pages * PAGE)
        os.close(fd)
        self.dev = ZramDevice()
        self.dev.dedup = self.DEDUP
        self.dev.store("recomp_algorithm", "algo=zstd")
        self.dev.store("backing_dev", self.path)
        self.dev.store("compressed_writeback", "1" if compressed else "0")
        self.dev.store("writeback_batch_size", str(batch))
        self.dev.store("disksize", str(SIZE))
        self.model = DeviceModel(NR_PAGES)
        data = b"".join(make(k, rnd) for k in fill)
        self.dev.write(0, data)
        self.model.write(0, data)
        self.dev.store("idle", "all")
        self.job = None
        self.batches = []
        self.reads = []

    def teardown(self):
        if hasattr(self, "path"):
            os.unlink(self.path)

    # -- I/O: DeviceMachine's rules, plus reads left pending -------------------------

    @rule(r=ranges)
    def start_async_read(self, r):
        self.dev.async_backing_reads = True
        try:
            res = self.dev.read_chunks(*r)
        finally:
            self.dev.async_backing_reads = False
        expected = self.model.read(*r)
        if isinstance(res, list):
            assert b"".join(res) == expected
        else:
            self.reads.append((res, expected))

    @precondition(lambda self: self.reads)
    @rule(pick=st.integers(0, 10))
    def finish_async_read(self, pick):
        pending, expected = self.reads.pop(pick % len(self.reads))
        results = self.dev.backing.read_blocks(pending.blocks)
        assert b"".join(self.dev.finish_read(pending, results)) == expected

    # -- maintenance (write, read, discard, zeroes, compact, idle are inherited) ----

    @rule(args=st.sampled_from(["", "type=huge", "type=idle", "max_pages=3", "threshold=1000"]))
    def recompress(self, args):
        RecompressJob.prepare(self.dev, args).run()

    # -- writeback, driven step by step ---------------------------------------------------------------

    @precondition(lambda self: self.job is None)
    @rule(spec=st.sampled_from(["idle", "huge", "huge_idle", "incompressible", "type=idle",
                                "page_indexes=0-31", "page_index=3 page_index=7 page_indexes=10-20"]),
          limit=st.sampled_from([None, 0, 2, 50]))
    def start_writeback(self, spec, limit):
        if limit is None:
            self.dev.store("writeback_limit_enable", "0")
        else:
            self.dev.store("writeback_limit_enable", "1")
            self.dev.store("writeback_limit", str(limit))
        self.job = WritebackJob.prepare(self.dev, spec)

    @precondition(lambda self: self.job is not None)
    @rule()
    def writeback_next_batch(self):
        batch = self.job.next_batch()
        if batch is not None:
            self.batches.append((batch, [bytes(b) for b in batch.bufs]))

    @precondition(lambda self: self.batches)
    @rule(fail=st.booleans())
    def writeback_complete_batch(self, fail):
        batch, copies = self.batches.pop(0)
        assert [bytes(b) for b in batch.bufs] == copies, "a writeback buffer changed after copy-out"
        if fail:
            errors = [OSError(5, "injected")] * len(batch.blocks)
        else:
            errors = self.dev.backing.write_blocks(batch.blocks, batch.bufs)
        self.job.complete(batch, errors)

    @precondition(lambda self: self.job is not None and not self.batches)
    @rule()
    def writeback_finish(self):
        self.job.finish()
        self.job = None

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def contents_and_stats(self):
        if not hasattr(self, "dev"):
            return
        dev = self.dev
        assert dev.peek(0, SIZE) == self.model.read(0, SIZE)
        st_ = [int(x) for x in dev.show("mm_stat").split()]
        flags = [dev.slot_state(i)[1] for i in range(NR_PAGES)]
        handles = [dev.slot_state(i)[0] for i in range(NR_PAGES)]
        in_ram = [f for f in flags if f & SIZE_MASK and not f & (WB | SAME)]
        wb_blocks = [h for h, f in zip(handles, flags) if f & WB]
        assert st_[0] == sum(self.model.stored) * PAGE
        assert st_[1] == sum(f & SIZE_MASK for f in in_ram)
        assert st_[7] == sum(1 for f in in_ram if f & HUGE)
        assert len(set(wb_blocks)) == len(wb_blocks), "two slots share a backing block"
        in_flight = sum(len(b.blocks) for b, _ in self.batches)
        pinned_released = len(dev.backing._release_after_unpin)
        bd_count = int(dev.show("bd_stat").split()[0])
        assert bd_count == len(wb_blocks) + in_flight + pinned_released
        dev.pool.check()
        check_sharing(dev)


TestPostProcessMachine = PostProcessMachine.TestCase
TestPostProcessMachine.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)


class DedupPostProcessMachine(PostProcessMachine):
    DEDUP = True


TestDedupPostProcessMachine = DedupPostProcessMachine.TestCase
TestDedupPostProcessMachine.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
