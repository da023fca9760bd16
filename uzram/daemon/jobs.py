"""The trio driver of device jobs (``uzram.zram.jobs``), and the per-device
state around them.

``drive`` runs a job's steps on the event loop, handing control back to the
loop whenever STEP_SECONDS have passed, and runs its Offloads in worker
threads. Every long operation goes through it: attribute stores (writeback,
recompress, compact, idle, reset, algorithm_params), large TRIM and
WRITE_ZEROES, and sub-page writes into written-back pages.

Writeback, recompression and compaction of one device are serialised, as the
kernel's device lock does. A job keeps going when its control client goes
away (like a write(2) to sysfs); reset, hot_remove and shutdown ask the
device's jobs to stop at their next checkpoint and wait for them.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..zram import ZramDevice
from ..zram.jobs import Job, Offload, Ticket
from .logs import event

log = logging.getLogger("uzram.jobs")

T = TypeVar("T")
Progress = Callable[[int, int, str], Awaitable[None]]
STEP_SECONDS = 0.002  # longest stretch of job steps between two visits to the loop


class Stopped(Exception):
    """The job was asked to stop (reset, hot_remove, shutdown)."""


async def _offload(req: Offload) -> Any:
    # Not cancellable: the call works on buffers and blocks the job owns.
    return await trio.to_thread.run_sync(req.fn, *req.args)


async def drive(job: Job[T], *, should_stop: Callable[[], bool] | None = None,
                on_yield: Callable[[], Awaitable[None]] | None = None) -> T:
    """Run ``job`` to completion on the event loop.

    ``should_stop`` is polled at checkpoints; when true the job is closed
    there and Stopped raised. ``on_yield`` runs each time the loop is
    visited (progress reports). Cancellation also closes the job at its
    next checkpoint (an Offload in flight is waited for first)."""
    caught: BaseException | None = None
    result: T
    try:
        async with trio.open_nursery() as nursery:  # background Offloads
            try:
                result = await _steps(job, nursery, should_stop, on_yield)
            except BaseException as e:  # raised as is, not in an ExceptionGroup
                caught = e
        if caught is not None:
            raise caught
        return result
    finally:
        caught = None
        job.close()


async def _steps(job: Job[T], nursery: trio.Nursery, should_stop: Callable[[], bool] | None,
                 on_yield: Callable[[], Awaitable[None]] | None) -> T:
    value: Any = None
    error: BaseException | None = None
    deadline = time.monotonic() + STEP_SECONDS
    while True:
        try:
            req = job.throw(error) if error is not None else job.send(value)
        except StopIteration as stop:
            done: T = stop.value
            return done
        value = error = None
        if req is None:
            if should_stop is not None and should_stop():
                raise Stopped()
            if time.monotonic() >= deadline:
                if on_yield is not None:
                    await on_yield()
                await trio.sleep(0)
                deadline = time.monotonic() + STEP_SECONDS
            continue
        if isinstance(req, Ticket):
            while not req.done:
                await req.event.wait()
            value, error = req.result, req.error
        elif req.background:
            ticket = Ticket()
            ticket.event = trio.Event()
            nursery.start_soon(_background, req, ticket)
            value = ticket
            continue
        else:
            with trio.CancelScope(shield=True):
                try:
                    value = await _offload(req)
                except Exception as e:
                    error = e
        deadline = time.monotonic() + STEP_SECONDS


async def _background(req: Offload, ticket: Ticket) -> None:
    with trio.CancelScope(shield=True):
        try:
            ticket.result = await _offload(req)
        except Exception as e:
            ticket.error = e
    ticket.done = True
    ticket.event.set()


class Puncher:
    """Punches out released backing blocks in a worker thread: the device's
    ``release_hook``. Blocks stay out of use until their punch is done."""

    def __init__(self, dev: ZramDevice) -> None:
        self.dev = dev
        self.running = False
        self.idle = trio.Event()
        self.idle.set()

    def __call__(self) -> None:
        if self.running:
            return
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:  # outside the event loop (start-up): punch here
            b = self.dev.backing
            if b is not None:
                b.apply_releases()
            return
        self.running = True
        self.idle = trio.Event()
        trio.lowlevel.spawn_system_task(self._run, name=f"punch {self.dev.name}")

    async def _run(self) -> None:
        try:
            while (b := self.dev.backing) is not None and b.pending_punches:
                runs = b.take_punches()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(b.punch, runs)
                b.punched(runs)
        except Exception as e:  # the space stays allocated; nothing else is at stake
            event(log, logging.WARNING, "hole punching failed", device=self.dev.name, error=str(e))
        finally:
            self.running = False
            self.idle.set()

    async def wait(self) -> None:
        while self.running:
            await self.idle.wait()


def puncher(dev: ZramDevice) -> Puncher:
    hook = dev.release_hook
    if not isinstance(hook, Puncher):
        hook = dev.release_hook = Puncher(dev)
    return hook


class DeviceWork:
    """The jobs of one device: the serialising lock, the stop flag, and how
    many are running (``wait_idle`` wakes when none is)."""

    def __init__(self, dev: ZramDevice) -> None:
        self.dev = dev
        self.lock = trio.Lock()
        self.stop_requested = False
        self.busy = 0
        self._idle = trio.Event()
        self._idle.set()

    def request_stop(self) -> None:
        self.stop_requested = True

    async def wait_idle(self) -> None:
        while self.busy:
            await self._idle.wait()

    async def run(self, job: Job[Any], *, serialised: bool = False, status: Any = None,
                  progress: Progress | None = None) -> None:
        """Drive a store's job; ``serialised`` ones hold the device lock."""
        self.busy += 1
        if self.busy == 1:
            self._idle = trio.Event()
        started = time.monotonic()
        try:
            if serialised:
                async with self.lock:
                    await self._drive(job, status, progress)
            else:
                await self._drive(job, status, progress)
        except Stopped:
            raise OSError(errno.ECANCELED, f"{getattr(status, 'what', 'job')} stopped: "
                          "the device is being reset or the daemon stops") from None
        finally:
            job.close()
            self.busy -= 1
            if not self.busy:
                self._idle.set()
            if status is not None and getattr(status, "what", "") == "writeback":
                event(log, logging.INFO, "writeback done", device=self.dev.name, pages=status.total,
                      seconds=round(time.monotonic() - started, 3),
                      error=status.error.strerror if status.error else "")

    async def _drive(self, job: Job[Any], status: Any, progress: Progress | None) -> None:
        if self.stop_requested:
            raise Stopped()

        async def report() -> None:
            nonlocal progress
            if progress is not None and status is not None:
                progress = await _report(progress, status.done, status.total, status.what)

        try:
            await drive(job, should_stop=lambda: self.stop_requested, on_yield=report)
        finally:
            await puncher(self.dev).wait()  # the blocks it released are free when it returns
        if status is not None:
            await report()

    async def quiesce(self) -> None:
        """Stop every job of the device and wait until none runs, and until
        released blocks are punched (reset closes the backing file)."""
        self.stop_requested = True
        try:
            await self.wait_idle()
            await puncher(self.dev).wait()
        finally:
            self.stop_requested = False


async def _report(progress: Progress, done: int, total: int, what: str) -> Progress | None:
    """Send progress; a client that went away just stops getting it."""
    try:
        await progress(done, total, what)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return None
    return progress
