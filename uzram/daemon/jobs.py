"""Long-running device work, run so that NBD requests keep being served:
writeback (batches of backing-file I/O in worker threads), recompression and
compaction (in steps, with checkpoints between), and reset/hot_remove, which
wait for that work.

Writeback and recompression of one device are serialised, as the kernel's
device lock does. A writeback keeps going when its control client goes away
(like a write(2) to sysfs, it cannot be interrupted); reset and shutdown ask
it to stop after the batch in flight.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ..zram import ZramDevice
from ..zram.postprocess import Batch, RecompressJob, WritebackJob
from .logs import event

log = logging.getLogger("uzram.jobs")

Progress = Callable[[int, int, str], Awaitable[None]]
STEP_SECONDS = 0.002  # longest stretch of compaction/recompression between checkpoints
HOP_PAGES = 256       # pages written per worker-thread hop (several writeback batches)


class DeviceWork:
    """The post-processing state of one device."""

    def __init__(self, dev: ZramDevice) -> None:
        self.dev = dev
        self.lock = trio.Lock()
        self.writeback: WritebackJob | None = None
        self.stop_requested = False
        self.busy = 0

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.writeback is not None:
            self.writeback.stopped = True


async def _report(progress: Progress | None, done: int, total: int, what: str) -> Progress | None:
    """Send progress; a client that went away just stops getting it."""
    if progress is None:
        return None
    try:
        await progress(done, total, what)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return None
    return progress


async def run_writeback(work: DeviceWork, value: str, progress: Progress | None) -> None:
    """``writeback`` with I/O in a worker thread, overlapping the copy-out of
    the next batch with the write of the current one."""
    dev = work.dev
    work.busy += 1
    try:
        async with work.lock:
            job = WritebackJob.prepare(dev, value)
            work.writeback = job
            if work.stop_requested:
                job.stopped = True
            backing = dev.backing
            assert backing is not None
            started = time.monotonic()
            try:
                with trio.CancelScope(shield=True):
                    batches = _gather(job)
                    while batches:
                        batches = await _write_one(job, batches, backing)
                        progress = await _report(progress, job.done, job.total, "writeback")
            finally:
                work.writeback = None
                error = job.finish()
            event(log, logging.INFO, "writeback done", device=dev.name, spec=value.strip(),
                  pages=job.total, written=dev.stats.bd_writes, seconds=round(time.monotonic() - started, 3),
                  error=error.strerror if error else "")
            if error is not None:
                raise error
            if work.stop_requested:
                raise OSError(errno.ECANCELED, "writeback stopped: the device is being reset or the daemon stops")
    finally:
        work.busy -= 1


async def _write_one(job: WritebackJob, batches: list[Batch], backing) -> list[Batch]:  # type: ignore[no-untyped-def]
    """Write ``batches`` in one worker-thread hop while the next ones are
    copied out; complete them and return the next ones."""
    result: list = []
    blocks = [b for batch in batches for b in batch.blocks]
    bufs = [b for batch in batches for b in batch.bufs]

    async def io() -> None:
        result.append(await trio.to_thread.run_sync(backing.write_blocks, blocks, bufs))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(io)
        await trio.sleep(0)          # let the thread start before copying out more
        following = _gather(job)
    errors = result[0]
    k = 0
    for batch in batches:
        job.complete(batch, errors[k : k + len(batch.blocks)])
        k += len(batch.blocks)
    return following


def _gather(job: WritebackJob) -> list[Batch]:
    """Batches for one thread hop: a hop costs as much as writing ~100 pages,
    so up to HOP_PAGES pages share one."""
    batches: list[Batch] = []
    pages = 0
    while pages < HOP_PAGES:
        batch = job.next_batch()
        if batch is None:
            break
        batches.append(batch)
        pages += len(batch.blocks)
    return batches


async def run_stepped(work: DeviceWork, steps, total: int, what: str, progress: Progress | None) -> None:  # type: ignore[no-untyped-def]
    """Drive a step generator, yielding to the event loop every few ms."""
    deadline = time.monotonic() + STEP_SECONDS
    done = 0
    for done_now in steps:
        done = done_now
        if time.monotonic() >= deadline:
            progress = await _report(progress, done, total, what)
            await trio.sleep(0)
            deadline = time.monotonic() + STEP_SECONDS
    await _report(progress, total, total, what)


async def run_recompress(work: DeviceWork, value: str, progress: Progress | None) -> None:
    work.busy += 1
    try:
        async with work.lock:
            job = RecompressJob.prepare(work.dev, value)
            await run_stepped(work, job.steps(), job.total, "recompress", progress)
    finally:
        work.busy -= 1


async def run_compact(work: DeviceWork, progress: Progress | None) -> None:
    dev = work.dev
    if not dev.initialized:
        raise OSError(errno.EINVAL, f"{dev.name} is not initialised")
    pool = dev.pool
    assert pool is not None
    freeable = sum(c.can_compact() for c in pool.classes)

    def freed_so_far():  # type: ignore[no-untyped-def]
        total = 0
        for n in pool.compact_steps():
            total += n
            yield total
    await run_stepped(work, freed_so_far(), freeable, "compact", progress)


async def quiesce(work: DeviceWork) -> None:
    """Stop and wait for the device's post-processing (before reset/hot_remove)."""
    work.request_stop()
    try:
        async with work.lock:
            pass
    finally:
        work.stop_requested = False
