"""Post-processing: writeback to the backing store and recompression.

Both follow zram's protocol (ZRAM_PP_SLOT): a scan marks the selected slots;
any read, write or free of a slot clears its mark; work on a slot proceeds
only while it is still marked. Writeback drops the in-RAM copy only after the
backing write succeeded, and only if the slot is still marked then —
otherwise the block is released and the slot keeps its newer contents.

A writeback job is driven in batches: ``next_batch`` (owner thread) reserves
blocks and copies the data out into owned buffers; the batch's I/O may run in
another thread (``BackingStore.write_blocks``); ``complete`` (owner thread)
switches the slots. The pure synchronous driver is ``run_writeback``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import kparse
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


def _largest_first(dev: ZramDevice, picked: np.ndarray) -> list[int]:
    """Order as zram's size buckets: the biggest objects first."""
    if not len(picked):
        return []
    sizes = dev.table.np_flags()[picked] & SIZE_MASK  # type: ignore[union-attr]
    order = np.lexsort((picked, -(sizes // PP_BUCKET_SIZE).astype(np.int64)))
    return picked[order].tolist()


def _release_marks(dev: ZramDevice, slots: list[int]) -> None:
    flags = dev.table.flags  # type: ignore[union-attr]
    for i in slots:
        flags[i] &= ~PP_SLOT


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

    def __init__(self, dev: ZramDevice, slots: list[int]) -> None:
        self.dev = dev
        self.slots = slots
        self.pos = 0
        self.total = len(slots)
        self.done = 0
        self.in_flight = 0
        self.error: OSError | None = None
        self.stopped = False

    @classmethod
    def prepare(cls, dev: ZramDevice, value: str) -> WritebackJob:
        """Parse the store and scan, as ``writeback_store`` does (EINVAL when not
        initialised, ENODEV without backing store, then the arguments)."""
        if not dev.initialized:
            raise OSError(errno.EINVAL, f"{dev.name} is not initialised")
        if dev.backing is None:
            raise OSError(errno.ENODEV, f"{dev.name} has no backing_dev")
        nr_pages = dev.nr_pages
        lo, hi, mode = 0, nr_pages, 0
        picked: list[np.ndarray] = []
        try:
            for key, val in kparse.next_args(value):
                if not val:
                    mode = cls._mode(key)
                    picked.append(_scan(dev, mode, lo, hi))
                    break
                if key == "type":
                    mode = cls._mode(val)
                    picked.append(_scan(dev, mode, lo, hi))
                    break
                if key == "page_index":
                    lo, hi = _parse_index(val, nr_pages)
                    picked.append(_scan(dev, mode, lo, hi))
                elif key == "page_indexes":
                    lo, hi = _parse_indexes(val, nr_pages)
                    picked.append(_scan(dev, mode, lo, hi))
        except OSError:
            for p in picked:
                _release_marks(dev, p.tolist())
            raise
        slots = _largest_first(dev, np.concatenate(picked)) if picked else []
        return cls(dev, slots)

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
            i = self.slots[self.pos]
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
    job = WritebackJob.prepare(dev, value)
    try:
        while (batch := job.next_batch()) is not None:
            errors = dev.backing.write_blocks(batch.blocks, batch.bufs)  # type: ignore[union-attr]
            job.complete(batch, errors)
    finally:
        error = job.finish()
    if error is not None:
        raise error


# -- recompression ----------------------------------------------------------------------------

RECOMPRESS_IDLE = 1
RECOMPRESS_HUGE = 2


class RecompressJob:
    """One ``recompress`` store, run in steps so an event loop can interleave I/O."""

    def __init__(self, dev: ZramDevice, slots: list[int], prio: int, prio_max: int,
                 threshold: int, max_pages: int) -> None:
        self.dev = dev
        self.slots = slots
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
        picked = _scan(dev, mode_bits, 0, dev.nr_pages, extra_skip=INCOMPRESSIBLE)
        if len(picked):  # skip slots already at or above the last usable priority
            flags = dev.table.np_flags()  # type: ignore[union-attr]
            prios = (flags[picked] & PRIO_MASK) >> PRIO_SHIFT
            too_high = picked[prios + 1 >= prio_max]
            flags[too_high] &= ~np.uint32(PP_SLOT)
            picked = picked[prios + 1 < prio_max]
        return cls(dev, _largest_first(dev, picked), prio, prio_max, threshold, max_pages)

    def steps(self, chunk: int = 256) -> Iterator[int]:
        """Process candidates ``chunk`` at a time, yielding progress between chunks."""
        flags = self.dev.table.flags  # type: ignore[union-attr]
        try:
            while self.pos < len(self.slots):
                end = min(self.pos + chunk, len(self.slots))
                while self.pos < end:
                    i = self.slots[self.pos]
                    self.pos += 1
                    if not self.budget:
                        self.pos = len(self.slots)
                        break
                    if flags[i] & PP_SLOT:
                        flags[i] &= ~PP_SLOT
                        if self.dev.recompress_slot(i, self.prio, self.prio_max, self.threshold):
                            self.budget -= 1
                yield self.pos
        finally:
            _release_marks(self.dev, self.slots[self.pos :])
            self.pos = len(self.slots)

    def run(self) -> None:
        for _ in self.steps():
            pass
