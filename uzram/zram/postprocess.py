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
the next ones. The slots are read and switched only through the core's
post-processing primitives (``pp_*``, ``wb_*``).

Selection scans STEP_SCAN slots per step and orders the picked slots as
zram's size buckets do (largest first, by index within a bucket) with a
bucket sort built as the scan goes, so no step sorts the whole device.
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from . import kparse
from .backing import BackingStore
from .core import PP_BUCKET_SHIFT, ZramCore
from .jobs import Job, Offload, Ticket, run
from .sizeclass import PAGE_SIZE
from .slots import HUGE, IDLE, INCOMPRESSIBLE, NUM_PRIOS

# A mode is the set of flags a slot must have to be picked.
_WRITEBACK_MODES = {
    "idle": IDLE,
    "huge": HUGE,
    "huge_idle": IDLE | HUGE,
    "incompressible": INCOMPRESSIBLE,
}
_RECOMPRESS_MODES = {"idle": IDLE, "huge": HUGE, "huge_idle": IDLE | HUGE}
PP_BUCKET_SIZE = 1 << PP_BUCKET_SHIFT   # 64 bytes
# Slots scanned (or unmarked) per step: filing a picked slot into its bucket
# costs ~0.15 us, so a step over slots that are all picked stays under 1 ms.
STEP_SCAN = 1 << 12
HOP_PAGES = 256       # pages written per Offload (several batches share one)


class _Buckets:
    """Picked slots by size bucket, filled chunk by chunk in index order."""

    def __init__(self) -> None:
        self.parts: list[array[int]] = [array("q") for _ in range(PAGE_SIZE // PP_BUCKET_SIZE + 1)]
        self.sorted = True   # each bucket's indexes ascend (one range, scanned upwards)
        self.last = -1

    def add(self, picked: list[int], buckets: bytes) -> None:
        """Slots from ``ZramCore.pp_select`` with their buckets."""
        if not picked:
            return
        if picked[0] <= self.last:
            self.sorted = False
        self.last = picked[-1]
        parts = self.parts
        for i, b in zip(picked, buckets):
            parts[b].append(i)

    def all(self) -> array[int]:
        return run(self.all_steps())

    def all_steps(self) -> Job[array[int]]:
        """The slots, largest bucket first: one bucket merged per step."""
        out: array[int] = array("q")
        for part in reversed(self.parts):
            if part:
                out.extend(part if self.sorted else array("q", sorted(part)))
                yield None
        self.parts = [array("q") for _ in self.parts]
        return out


def _select_steps(dev: ZramCore, windows: Iterable[tuple[int, int, int, int, int]]) -> Job[array[int]]:
    """Mark what ``pp_select`` picks in each (lo, hi, need, skip, below_prio)
    window, one window per step, and return the picked slots by size bucket;
    stopped midway, the marks made so far are released."""
    buckets = _Buckets()
    complete = False
    try:
        for lo, hi, need, skip, below in windows:
            buckets.add(*dev.pp_select(lo, hi, need, skip=skip, below_prio=below))
            yield None
        picked = yield from buckets.all_steps()
        complete = True
    finally:
        if not complete:
            dev.pp_unmark(buckets.all())
    return picked


def _release_steps(job: WritebackJob | RecompressJob) -> Job[None]:
    """Unmark what was selected but will not be processed, STEP_SCAN per step."""
    while job.pos < len(job.slots):
        end = min(job.pos + STEP_SCAN, len(job.slots))
        job.dev.pp_unmark(job.slots[job.pos : end])
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


def _writeback_mode(word: str) -> int:
    mode = _WRITEBACK_MODES.get(word)
    if mode is None:
        raise OSError(errno.EINVAL, f"unknown writeback mode {word!r}")
    return mode


@dataclass
class Batch:
    slots: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    bufs: list[bytes] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # flags kept for compressed writeback


class WritebackJob:
    """One ``writeback`` store: the selected slots and the batches over them."""

    what = "writeback"

    def __init__(self, dev: ZramCore, slots: Sequence[int],
                 scans: list[tuple[int, int, int]] | None = None) -> None:
        if dev.backing is None:
            raise OSError(errno.ENODEV, f"{dev.name} has no backing_dev")
        self.dev = dev
        self.backing: BackingStore = dev.backing
        self.slots = array("q", slots)
        self.scans = scans or []   # (mode, lo, hi) still to select
        self.pos = 0
        self.total = len(slots)
        self.done = 0
        self.in_flight = 0
        self.error: OSError | None = None
        self.stopped = False

    @classmethod
    def parse(cls, dev: ZramCore, value: str) -> WritebackJob:
        """Parse the store as ``writeback_store`` does (EINVAL when not
        initialised, ENODEV without backing store, then the arguments:
        a mode, as a bare word or ``type=``, ends them); the scans are left
        to ``select_steps``."""
        nr_pages = dev.require_disk().nr_pages
        if dev.backing is None:
            raise OSError(errno.ENODEV, f"{dev.name} has no backing_dev")
        schema: dict[str, kparse.Convert] = {
            "type": _writeback_mode,
            "page_index": lambda v: _parse_index(v, nr_pages),
            "page_indexes": lambda v: _parse_indexes(v, nr_pages),
        }
        lo, hi = 0, nr_pages
        scans: list[tuple[int, int, int]] = []
        for key, val in kparse.iter_args(value, schema, bare=True):
            if val is None:
                scans.append((_writeback_mode(key), lo, hi))
                break
            if key == "type":
                scans.append((val, lo, hi))
                break
            lo, hi = val
            scans.append((0, lo, hi))
        return cls(dev, [], scans)

    @classmethod
    def prepare(cls, dev: ZramCore, value: str) -> WritebackJob:
        """Parse and scan at once (the slots are marked when this returns)."""
        job = cls.parse(dev, value)
        run(job.select_steps())
        return job

    def select_steps(self) -> Job[None]:
        """Scan and mark the slots, STEP_SCAN per step; on being stopped
        midway, the marks made so far are released."""
        windows = ((start, min(hi, start + STEP_SCAN), mode, 0, NUM_PRIOS)
                   for mode, lo, hi in self.scans for start in range(lo, hi, STEP_SCAN))
        picked = yield from _select_steps(self.dev, windows)
        self.scans = []
        self.slots = picked
        self.total = len(picked)
        yield None

    def steps(self) -> Job[None]:
        """The whole writeback: selection, then batches written HOP_PAGES at a
        time in the background while the next ones are copied out."""
        try:
            yield from self.select_steps()
            hop = self._gather()
            while hop:
                blocks = [b for batch in hop for b in batch.blocks]
                bufs = [b for batch in hop for b in batch.bufs]
                ticket: Ticket = yield Offload(self.backing.write_blocks, blocks, bufs, background=True)
                following = self._gather()
                errors: list[OSError | None] = yield ticket
                if ticket.error is not None:
                    failed = ticket.error if isinstance(ticket.error, OSError) else OSError(errno.EIO, str(ticket.error))
                    errors = [failed] * len(blocks)
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

    def next_batch(self) -> Batch | None:
        """Reserve blocks and copy out up to ``writeback_batch_size`` slots."""
        dev = self.dev
        backing = self.backing
        batch = Batch()
        while not self.stopped and self.pos < len(self.slots) and len(batch.slots) < dev.settings.wb_batch_size:
            if dev.wb_budget_exhausted():
                self._stop(OSError(errno.EIO, "writeback_limit budget exhausted"))
                break
            i = int(self.slots[self.pos])
            if not dev.pp_marked(i):  # read, written or freed since the scan
                self.pos += 1
                self.done += 1
                continue
            block = backing.alloc()
            if block < 0:
                self._stop(OSError(errno.ENOSPC, f"backing_dev {backing.path} is full"))
                break
            self.pos += 1
            try:
                data, kept = dev.wb_copy_out(i)
            except OSError as e:  # the object cannot be decoded: leave it alone
                dev.wb_abandon(i, block)
                self.done += 1
                self.error = e
                continue
            dev.wb_budget_charge()
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
        for i, block, kept, err in zip(batch.slots, batch.blocks, batch.kept, errors):
            self.in_flight -= 1
            self.done += 1
            dev.wb_done(i, block, kept, err)
            if err is not None:
                self.error = err
        dev.apply_backing_releases()

    def _stop(self, error: OSError) -> None:
        self.error = error
        self.stopped = True

    def finish(self) -> OSError | None:
        """Unmark what was selected but not processed; returns the last error."""
        self.dev.pp_unmark(self.slots[self.pos :])
        self.done += len(self.slots) - self.pos
        self.pos = len(self.slots)
        self.dev.apply_backing_releases()
        return self.error


# -- recompression ----------------------------------------------------------------------------

_RECOMPRESS_ARGS: dict[str, kparse.Convert] = {
    "type": lambda v: _RECOMPRESS_MODES.get(v, 0),   # an unknown type selects all
    "max_pages": kparse.kstrtoull,
    "threshold": kparse.kstrtouint,
    "algo": kparse.text,
    "priority": lambda v: kparse.kstrtouint(v) or 1,
}


class RecompressJob:
    """One ``recompress`` store, run in steps so an event loop can interleave I/O."""

    what = "recompress"

    def __init__(self, dev: ZramCore, slots: Sequence[int], prio: int, prio_max: int,
                 threshold: int, max_pages: int, mode_bits: int = 0) -> None:
        self.dev = dev
        self.slots = array("q", slots)
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
    def prepare(cls, dev: ZramCore, value: str) -> RecompressJob:
        """Parse and scan at once (the slots are marked when this returns)."""
        job = cls.parse(dev, value)
        run(job.select_steps())
        return job

    @classmethod
    def parse(cls, dev: ZramCore, value: str) -> RecompressJob:
        """Parse the store as ``recompress_store`` does; the scan is left to
        ``select_steps``."""
        args = kparse.parse_args(value, _RECOMPRESS_ARGS)
        mode: int = args.get("type", 0)
        max_pages: int = args.get("max_pages", kparse.U64_MAX)
        threshold: int = args.get("threshold", 0)
        algo: str | None = args.get("algo")
        prio: int = args.get("priority", 1)
        prio_max = prio + 1 if "priority" in args else dev.num_active_comps
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
        return cls(dev, [], prio, prio_max, threshold, max_pages, mode)

    def select_steps(self) -> Job[None]:
        """Scan and mark candidates, STEP_SCAN slots per step."""
        nr_pages = self.dev.require_disk().nr_pages
        # slots already at or above the last usable priority are skipped
        windows = ((start, min(nr_pages, start + STEP_SCAN), self.mode_bits, INCOMPRESSIBLE, self.prio_max - 1)
                   for start in range(0, nr_pages, STEP_SCAN))
        picked = yield from _select_steps(self.dev, windows)
        self.slots = picked
        self.total = len(picked)
        self.selected = True
        yield None

    def steps(self, chunk: int = 16) -> Job[None]:
        """Select (unless ``prepare`` did), then process candidates ``chunk``
        at a time (a zstd attempt costs tens of µs), yielding between chunks."""
        if not self.selected:
            yield from self.select_steps()
        dev = self.dev
        try:
            while self.pos < len(self.slots) and self.budget:
                end = min(self.pos + chunk, len(self.slots))
                for i in self.slots[self.pos : end].tolist():
                    if not self.budget:
                        break
                    self.pos += 1
                    if dev.pp_take(i) and dev.recompress_slot(i, self.prio, self.prio_max, self.threshold):
                        self.budget -= 1
                yield None
            yield from _release_steps(self)
        finally:  # what was selected but not processed is released (release_pp_ctl)
            dev.pp_unmark(self.slots[self.pos :])
            self.pos = len(self.slots)

    def run(self) -> None:
        run(self.steps())
