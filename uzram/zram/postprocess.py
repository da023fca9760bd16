"""Post-processing: writeback to the backing store and recompression.

Both follow zram's protocol (ZRAM_PP_SLOT): a scan marks the selected slots;
any read, write or free of a slot clears its mark; work on a slot proceeds
only while it is still marked. Writeback drops the in-RAM copy only after the
backing write succeeded, and only if the slot is still marked then —
otherwise the block is released and the slot keeps its newer contents.

A writeback job is driven in batches: ``next_batch`` (owner thread) reserves
blocks and copies the data out into owned buffers; the batch's I/O may run in
another thread (``BackingStore.write_blocks``); ``complete`` (owner thread)
switches the slots. ``steps`` is the whole job (see ``jobs.py``): the scan
in steps, then batches whose writes are Offloads overlapping the copy-out of
the next ones. The synchronous driver is ``run_writeback``.

Selection scans STEP_SCAN slots per step and orders the picked slots as
zram's size buckets do (largest first, by index within a bucket) with a
bucket sort built as the scan goes, so no step sorts the whole device.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import kparse
from .jobs import Job, Offload, Ticket, run
from .sizeclass import PAGE_SIZE
from .slots import (
    HUGE, IDLE, INCOMPRESSIBLE, PP_SLOT, PRIO_MASK, PRIO_SHIFT, SAME, SIZE_MASK, WB,
)

if TYPE_CHECKING:
    from .device import ZramDevice

IDLE_WRITEBACK = 1
HUGE_WRITEBACK = 2
INCOMPRESSIBLE_WRITEBACK = 4
_MODES = {
    "idle": IDLE_WRITEBACK,
    "huge": HUGE_WRITEBACK,
    "huge_idle": IDLE_WRITEBACK | HUGE_WRITEBACK,
    "incompressible": INCOMPRESSIBLE_WRITEBACK,
}
PP_BUCKET_SIZE = 64
STEP_SCAN = 1 << 14   # slots scanned per step (well under a millisecond)
HOP_PAGES = 256       # pages written per Offload (several batches share one)


def _scan(dev: ZramDevice, mode: int, lo: int, hi: int, extra_skip: int = 0) -> np.ndarray:
    """Indices in [lo, hi) eligible for post-processing under ``mode``, not yet
    marked; marks them PP_SLOT."""
    flags = dev.table.np_flags()[lo:hi]  # type: ignore[union-attr]
    ok = ((flags & SIZE_MASK) != 0) & ((flags & (WB | SAME | PP_SLOT | extra_skip)) == 0)
    if mode & IDLE_WRITEBACK:
        ok &= (flags & IDLE) != 0
    if mode & HUGE_WRITEBACK:
        ok &= (flags & HUGE) != 0
    if mode & INCOMPRESSIBLE_WRITEBACK:
        ok &= (flags & INCOMPRESSIBLE) != 0
    picked = np.flatnonzero(ok)
    flags[picked] |= PP_SLOT
    return picked + lo


class _Buckets:
    """Picked slots by size bucket, filled chunk by chunk in index order."""

    def __init__(self) -> None:
        self.parts: list[list[np.ndarray]] = [[] for _ in range(PAGE_SIZE // PP_BUCKET_SIZE + 1)]
        self.sorted = True   # each bucket's indexes ascend (one range, scanned upwards)
        self.last = -1

    def add(self, dev: ZramDevice, picked: np.ndarray) -> None:
        if not len(picked):
            return
        if picked[0] <= self.last:
            self.sorted = False
        self.last = int(picked[-1])
        buckets = (dev.table.np_flags()[picked] & SIZE_MASK) // PP_BUCKET_SIZE  # type: ignore[union-attr]
        order = np.argsort(buckets, kind="stable")
        buckets, picked = buckets[order], picked[order]
        bounds = np.searchsorted(buckets, np.arange(len(self.parts) + 1))
        for b in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():  # (np.unique's first call costs 20 ms)
            self.parts[b].append(picked[bounds[b] : bounds[b + 1]])

    def all(self) -> np.ndarray:
        return run(self.all_steps())

    def all_steps(self) -> Job[np.ndarray]:
        """The slots, largest bucket first: one bucket merged per step."""
        out = []
        for parts in reversed(self.parts):
            if parts:
                merged = np.concatenate(parts)
                out.append(merged if self.sorted else np.sort(merged))
                yield None
        self.parts = [[] for _ in self.parts]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _largest_first(dev: ZramDevice, picked: np.ndarray) -> list[int]:
    """Order as zram's size buckets: the biggest objects first."""
    b = _Buckets()
    b.sorted = False
    b.add(dev, picked)
    return b.all().tolist()


def _release_marks(dev: ZramDevice, slots: list[int] | np.ndarray) -> None:
    if dev.table is None or not len(slots):
        return
    flags = dev.table.np_flags()
    flags[np.asarray(slots, dtype=np.int64)] &= ~np.uint32(PP_SLOT)


def _release_steps(job: WritebackJob | RecompressJob) -> Job[None]:
    """Unmark what was selected but will not be processed, STEP_SCAN per step."""
    while job.pos < len(job.slots):
        end = min(job.pos + STEP_SCAN, len(job.slots))
        _release_marks(job.dev, job.slots[job.pos : end])
        if isinstance(job, WritebackJob):
            job.done += end - job.pos
        job.pos = end
        yield None


# -- writeback ------------------------------------------------------------------------------

def _parse_index(value: str, nr_pages: int) -> tuple[int, int]:
    index = kparse.kstrtoull(value)
    if index >= nr_pages:
        raise OSError(errno.ERANGE, f"page_index {index} beyond the device ({nr_pages} pages)")
    return index, index + 1


def _parse_indexes(value: str, nr_pages: int) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not sep:
        raise OSError(errno.EINVAL, "page_indexes needs LOW-HIGH")
    lo, hi = kparse.kstrtoull(low), kparse.kstrtoull(high)
    if lo >= nr_pages or hi >= nr_pages or lo > hi:
        raise OSError(errno.ERANGE, f"page_indexes {value} outside 0..{nr_pages - 1} or reversed")
    return lo, hi + 1


@dataclass
class Batch:
    slots: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    bufs: list[bytes] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # flags kept for compressed writeback


class WritebackJob:
    """One ``writeback`` store: the selected slots and the batches over them."""

    what = "writeback"

    def __init__(self, dev: ZramDevice, slots: list[int], scans: list[tuple[int, int, int]] | None = None) -> None:
        self.dev = dev
        self.slots = slots
        self.scans = scans or []   # (mode, lo, hi) still to select
        self.pos = 0
        self.total = len(slots)
        self.done = 0
        self.in_flight = 0
        self.error: OSError | None = None
        self.stopped = False

    @classmethod
    def parse(cls, dev: ZramDevice, value: str) -> WritebackJob:
        """Parse the store as ``writeback_store`` does (EINVAL when not
        initialised, ENODEV without backing store, then the arguments);
        the scans are left to ``select_steps``."""
        if not dev.initialized:
            raise OSError(errno.EINVAL, f"{dev.name} is not initialised")
        if dev.backing is None:
            raise OSError(errno.ENODEV, f"{dev.name} has no backing_dev")
        nr_pages = dev.nr_pages
        lo, hi, mode = 0, nr_pages, 0
        scans: list[tuple[int, int, int]] = []
        for key, val in kparse.next_args(value):
            if not val:
                scans.append((cls._mode(key), lo, hi))
                break
            if key == "type":
                scans.append((cls._mode(val), lo, hi))
                break
            if key == "page_index":
                lo, hi = _parse_index(val, nr_pages)
                scans.append((mode, lo, hi))
            elif key == "page_indexes":
                lo, hi = _parse_indexes(val, nr_pages)
                scans.append((mode, lo, hi))
        return cls(dev, [], scans)

    @classmethod
    def prepare(cls, dev: ZramDevice, value: str) -> WritebackJob:
        """Parse and scan at once (the slots are marked when this returns)."""
        job = cls.parse(dev, value)
        run(job.select_steps())
        return job

    def select_steps(self) -> Job[None]:
        """Scan and mark the slots, STEP_SCAN per step; on being stopped
        midway, the marks made so far are released."""
        dev = self.dev
        buckets = _Buckets()
        complete = False
        try:
            for mode, lo, hi in self.scans:
                for start in range(lo, hi, STEP_SCAN):
                    buckets.add(dev, _scan(dev, mode, start, min(hi, start + STEP_SCAN)))
                    yield None
            picked = yield from buckets.all_steps()
            complete = True
        finally:
            if not complete:
                _release_marks(dev, buckets.all())
        self.scans = []
        self.slots = picked  # type: ignore[assignment]
        self.total = len(picked)
        yield None

    def steps(self) -> Job[None]:
        """The whole writeback: selection, then batches written HOP_PAGES at a
        time in the background while the next ones are copied out."""
        dev = self.dev
        try:
            yield from self.select_steps()
            backing = dev.backing
            hop = self._gather()
            while hop:
                blocks = [b for batch in hop for b in batch.blocks]
                bufs = [b for batch in hop for b in batch.bufs]
                ticket: Ticket = yield Offload(backing.write_blocks, blocks, bufs, background=True)  # type: ignore[union-attr]
                following = self._gather()
                errors = yield ticket
                if ticket.error is not None:
                    errors = [ticket.error] * len(blocks)  # type: ignore[list-item]
                k = 0
                for batch in hop:
                    self.complete(batch, errors[k : k + len(batch.blocks)])
                    k += len(batch.blocks)
                hop = following
                yield None
            yield from _release_steps(self)
        finally:
            error = self.finish()
        if error is not None:
            raise error

    def _gather(self) -> list[Batch]:
        """Batches for one Offload: a hop costs as much as writing ~100
        pages, so up to HOP_PAGES pages share one."""
        batches: list[Batch] = []
        pages = 0
        while pages < HOP_PAGES:
            batch = self.next_batch()
            if batch is None:
                break
            batches.append(batch)
            pages += len(batch.blocks)
        return batches

    @staticmethod
    def _mode(word: str) -> int:
        mode = _MODES.get(word)
        if mode is None:
            raise OSError(errno.EINVAL, f"unknown writeback mode {word!r}")
        return mode

    def next_batch(self) -> Batch | None:
        """Reserve blocks and copy out up to ``writeback_batch_size`` slots."""
        dev = self.dev
        backing = dev.backing
        flags = dev.table.flags  # type: ignore[union-attr]
        batch = Batch()
        while not self.stopped and self.pos < len(self.slots) and len(batch.slots) < dev.wb_batch_size:
            if dev.wb_limit_enable and dev.bd_wb_limit == 0:
                self._stop(OSError(errno.EIO, "writeback_limit budget exhausted"))
                break
            i = int(self.slots[self.pos])
            f = flags[i]
            if not f & PP_SLOT:  # read, written or freed since the scan
                self.pos += 1
                self.done += 1
                continue
            block = backing.alloc()  # type: ignore[union-attr]
            if block < 0:
                self._stop(OSError(errno.ENOSPC, f"backing_dev {backing.path} is full"))  # type: ignore[union-attr]
                break
            self.pos += 1
            try:
                data, kept = dev.copy_out(i, f, raw=dev.compressed_wb)
            except OSError as e:  # the object cannot be decoded: leave it alone
                backing.release(block)  # type: ignore[union-attr]
                flags[i] &= ~PP_SLOT
                self.done += 1
                self.error = e
                continue
            if dev.wb_limit_enable and dev.bd_wb_limit > 0:
                dev.bd_wb_limit -= PAGE_SIZE // 4096
            batch.slots.append(i)
            batch.blocks.append(block)
            batch.bufs.append(data)
            batch.kept.append(kept)
        if not batch.slots:
            return None
        self.in_flight += len(batch.slots)
        return batch

    def complete(self, batch: Batch, errors: list[OSError | None]) -> None:
        """Account a batch's I/O results and switch the slots still marked."""
        dev = self.dev
        backing = dev.backing
        for i, block, kept, err in zip(batch.slots, batch.blocks, batch.kept, errors):
            self.in_flight -= 1
            self.done += 1
            if err is not None:
                if dev.wb_limit_enable:
                    dev.bd_wb_limit += PAGE_SIZE // 4096
                backing.release(block)  # type: ignore[union-attr]
                dev.table.flags[i] &= ~PP_SLOT  # type: ignore[union-attr]
                self.error = err
                continue
            dev.stats.bd_writes += 1
            if not dev.table.flags[i] & PP_SLOT:  # type: ignore[union-attr]
                backing.release(block)  # type: ignore[union-attr]
                continue
            dev.install_written_back(i, block, kept)
        dev.flush_backing()

    def _stop(self, error: OSError) -> None:
        self.error = error
        self.stopped = True

    def finish(self) -> OSError | None:
        """Unmark what was selected but not processed; returns the last error."""
        _release_marks(self.dev, self.slots[self.pos :])
        self.done += len(self.slots) - self.pos
        self.pos = len(self.slots)
        self.dev.flush_backing()
        return self.error


def run_writeback(dev: ZramDevice, value: str) -> None:
    """The synchronous driver: every batch written on the calling thread."""
    run(WritebackJob.parse(dev, value).steps())


# -- recompression ----------------------------------------------------------------------------

RECOMPRESS_IDLE = 1
RECOMPRESS_HUGE = 2


class RecompressJob:
    """One ``recompress`` store, run in steps so an event loop can interleave I/O."""

    what = "recompress"

    def __init__(self, dev: ZramDevice, slots: list[int], prio: int, prio_max: int,
                 threshold: int, max_pages: int, mode_bits: int = 0) -> None:
        self.dev = dev
        self.slots = slots
        self.mode_bits = mode_bits
        self.selected = False
        self.pos = 0
        self.total = len(slots)
        self.prio = prio
        self.prio_max = prio_max
        self.threshold = threshold
        self.budget = max_pages
        self.recompressed = 0

    @property
    def done(self) -> int:
        return self.pos

    @classmethod
    def prepare(cls, dev: ZramDevice, value: str) -> RecompressJob:
        """Parse and scan at once (the slots are marked when this returns)."""
        job = cls.parse(dev, value)
        run(job.select_steps())
        return job

    @classmethod
    def parse(cls, dev: ZramDevice, value: str) -> RecompressJob:
        """Parse the store as ``recompress_store`` does; the scan is left to
        ``select_steps``."""
        mode = threshold = 0
        max_pages = kparse.U64_MAX
        prio, prio_max = 1, dev.num_active_comps
        algo = None
        for key, val in kparse.next_args(value):
            if not val:
                raise OSError(errno.EINVAL, f"{key}: expected key=value")
            if key == "type":
                mode = {"idle": RECOMPRESS_IDLE, "huge": RECOMPRESS_HUGE,
                        "huge_idle": RECOMPRESS_IDLE | RECOMPRESS_HUGE}.get(val, 0)
            elif key == "max_pages":
                max_pages = kparse.kstrtoull(val)
            elif key == "threshold":
                threshold = kparse.kstrtouint(val)
            elif key == "algo":
                algo = val
            elif key == "priority":
                prio = kparse.kstrtouint(val) or 1
                prio_max = prio + 1
        if threshold >= dev.huge_class_size:
            raise OSError(errno.EINVAL, f"threshold must be below {dev.huge_class_size}")
        if not dev.initialized:
            raise OSError(errno.EINVAL, f"{dev.name} is not initialised")
        if algo is not None:
            found = next((p for p in range(prio, len(dev.comp_algs)) if dev.comp_algs[p] == algo), None)
            if found is None:
                raise OSError(errno.EINVAL, f"recompression algorithm {algo!r} is not configured")
            prio, prio_max = found, found + 1
        prio_max = min(prio_max, dev.num_active_comps)
        if prio >= prio_max:
            raise OSError(errno.EINVAL, "no recompression algorithm configured (recomp_algorithm)")
        mode_bits = (IDLE_WRITEBACK if mode & RECOMPRESS_IDLE else 0) | (HUGE_WRITEBACK if mode & RECOMPRESS_HUGE else 0)
        return cls(dev, [], prio, prio_max, threshold, max_pages, mode_bits)

    def select_steps(self) -> Job[None]:
        """Scan and mark candidates, STEP_SCAN slots per step."""
        dev = self.dev
        flags = dev.table.np_flags()  # type: ignore[union-attr]
        buckets = _Buckets()
        complete = False
        try:
            for start in range(0, dev.nr_pages, STEP_SCAN):
                picked = _scan(dev, self.mode_bits, start, min(dev.nr_pages, start + STEP_SCAN), extra_skip=INCOMPRESSIBLE)
                if len(picked):  # skip slots already at or above the last usable priority
                    prios = (flags[picked] & PRIO_MASK) >> PRIO_SHIFT
                    flags[picked[prios + 1 >= self.prio_max]] &= ~np.uint32(PP_SLOT)
                    buckets.add(dev, picked[prios + 1 < self.prio_max])
                yield None
            picked = yield from buckets.all_steps()
            complete = True
        finally:
            if not complete:
                _release_marks(dev, buckets.all())
        self.slots = picked  # type: ignore[assignment]
        self.total = len(picked)
        self.selected = True
        yield None

    def steps(self, chunk: int = 16) -> Job[None]:
        """Select (unless ``prepare`` did), then process candidates ``chunk``
        at a time (a zstd attempt costs tens of µs), yielding between chunks."""
        if not self.selected:
            yield from self.select_steps()
        flags = self.dev.table.flags  # type: ignore[union-attr]
        try:
            while self.pos < len(self.slots) and self.budget:
                end = min(self.pos + chunk, len(self.slots))
                for i in self.slots[self.pos : end].tolist():
                    if not self.budget:
                        break
                    self.pos += 1
                    if flags[i] & PP_SLOT:
                        flags[i] &= ~PP_SLOT
                        if self.dev.recompress_slot(i, self.prio, self.prio_max, self.threshold):
                            self.budget -= 1
                yield None
            yield from _release_steps(self)
        finally:  # what was selected but not processed is released (release_pp_ctl)
            _release_marks(self.dev, self.slots[self.pos :])
            self.pos = len(self.slots)

    def run(self) -> None:
        run(self.steps())
