"""The uzramd service: the device registry, the NBD server and the jobs on
devices (every attribute store is driven as a job, see ``jobs.py``), shared
by the control socket and the FUSE tree.

Work on devices (stores, reset, hot_remove) runs in a nursery the service
owns (``serve``), not in the task of whoever asked: the control client or
FUSE request that asked waits for the outcome, and a client going away or
cancelled leaves the work running until it finishes or the service asks it
to stop (reset, hot_remove, shutdown)."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..nbd.server import NBDServer
from ..zram import ZramDevice
from ..zram import attrs
from ..zram.kparse import kstrtoint
from . import jobs
from .admission import SHED_STORES, Admission
from .registry import DeviceRegistry

Progress = Callable[[int, int, str], Awaitable[None]]
T = TypeVar("T")


class Daemon:
    """The composition root: devices, the NBD server and long-running work."""

    def __init__(self, registry: DeviceRegistry, nbd: NBDServer) -> None:
        self.registry = registry
        self.nbd = nbd
        self._work: dict[str, jobs.DeviceWork] = {}
        self._nursery: trio.Nursery | None = None
        self.admission = Admission(registry)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Host device work until cancelled (which cancels what still runs;
        shutdown asks it to stop first, see ``stop_work``)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _in_service(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the service's nursery and wait for its result
        or exception. If the caller is cancelled, the work goes on."""
        nursery = self._nursery
        if nursery is None:
            raise OSError(errno.ESHUTDOWN, "uzramd is not serving device work")
        done = trio.Event()
        value: list[T] = []
        error: list[Exception] = []

        async def work() -> None:
            try:
                value.append(await fn(*args))
            except Exception as e:  # handed to the caller; Cancelled stays in this task
                error.append(e)
            finally:
                done.set()

        nursery.start_soon(work)
        await done.wait()
        if error:
            raise error[0]
        if not value:  # cancelled: the service is stopping
            raise OSError(errno.ECANCELED, "stopped: the daemon stops")
        return value[0]

    def work(self, dev: ZramDevice) -> jobs.DeviceWork:
        w = self._work.get(dev.name)
        if w is None or w.dev is not dev:
            w = self._work[dev.name] = jobs.DeviceWork(dev)
        return w

    def status(self, dev: ZramDevice) -> dict[str, Any]:
        names = ("disksize", "comp_algorithm", "mm_stat", "io_stat", "initstate")
        return {"name": dev.name, "clients": dev.openers, "attrs": {n: dev.show(n) for n in names}}

    async def store(self, dev: ZramDevice, attr: str, value: str, progress: Progress | None) -> None:
        """Store an attribute; the long ones run as jobs without blocking NBD
        service, all of them in the service's nursery."""
        if not value:
            return  # a zero-length write never reaches the attribute
        if attr in SHED_STORES:
            self.admission.admit(f"{attr} on {dev.name}")
        await self._in_service(self._store, dev, attr, value, progress)

    async def _store(self, dev: ZramDevice, attr: str, value: str, progress: Progress | None) -> None:
        work = self.work(dev)
        if attr == "reset":
            job, _ = attrs.reset_store_job(dev, value, claimed=True)  # parse first (EINVAL)
            job.close()
            await self._reset(dev)
            return
        job, status = attrs.store_job(dev, attr, value)
        await work.run(job, serialised=attr in attrs.SERIALISED, status=status, progress=progress)

    async def shrink(self, dev: ZramDevice) -> int:
        """Compact ``dev``'s pool for a low reserve (the daemon's own
        request, like zsmalloc's shrinker); returns the pages freed."""
        pool = dev.pool
        before = pool.pages_compacted if pool is not None else 0
        await self._in_service(self._store, dev, "compact", "1", None)
        freed = (pool.pages_compacted - before) if pool is not None else 0
        self.admission.shrinks += 1
        self.admission.shrunk_pages += freed
        return freed

    def hot_add(self) -> str:
        """zram-control's hot_add (refused while the pool reserve is low)."""
        self.admission.admit("hot_add")
        return self.registry.hot_add()

    async def _reset(self, dev: ZramDevice) -> None:
        """Refuse while clients are attached; otherwise block new opens, stop
        and wait for the device's jobs (a reset in the kernel waits likewise),
        then reset, releasing the pool in steps."""
        if dev.openers or dev.claimed:
            raise OSError(errno.EBUSY, f"{dev.name} is in use by {dev.openers} client(s)")
        dev.claimed = True
        try:
            work = self.work(dev)
            await work.quiesce()
            async with work.lock:
                await work.run(dev.reset_steps(claimed=True))
        finally:
            dev.claimed = False

    async def hot_remove(self, value: str) -> None:
        """zram-control's hot_remove: reset (in the service's nursery), then remove."""
        await self._in_service(self._hot_remove, value)

    async def _hot_remove(self, value: str) -> None:
        dev_id = kstrtoint(value)
        if dev_id >= 0:
            try:
                dev = self.registry.get(f"zram{dev_id}")
            except OSError:
                dev = None
            if dev is not None:
                await self._reset(dev)
        self.registry.hot_remove(value)

    def stop_work(self) -> None:
        for w in self._work.values():
            w.request_stop()

    def jobs_running(self) -> int:
        return sum(w.busy for w in self._work.values())

    async def wait_work(self) -> None:
        for w in list(self._work.values()):
            await w.wait_idle()
