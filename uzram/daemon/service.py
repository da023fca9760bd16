"""The uzramd service: the device registry, the NBD server and the long work
on devices (writeback, recompression, compaction, reset), shared by the
control socket and the FUSE tree."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..nbd.server import NBDServer
from ..zram import ZramDevice
from ..zram.kparse import kstrtoint, kstrtou16
from . import jobs
from .registry import DeviceRegistry

Progress = Callable[[int, int, str], Awaitable[None]]


class Daemon:
    """The composition root: devices, the NBD server and long-running work."""

    def __init__(self, registry: DeviceRegistry, nbd: NBDServer) -> None:
        self.registry = registry
        self.nbd = nbd
        self._work: dict[str, jobs.DeviceWork] = {}

    def work(self, dev: ZramDevice) -> jobs.DeviceWork:
        w = self._work.get(dev.name)
        if w is None or w.dev is not dev:
            w = self._work[dev.name] = jobs.DeviceWork(dev)
        return w

    def status(self, dev: ZramDevice) -> dict[str, Any]:
        names = ("disksize", "comp_algorithm", "mm_stat", "io_stat", "initstate")
        return {"name": dev.name, "clients": dev.openers, "attrs": {n: dev.show(n) for n in names}}

    async def store(self, dev: ZramDevice, attr: str, value: str, progress: Progress | None) -> None:
        """Store an attribute; the long ones run without blocking NBD service."""
        if not value:
            return  # a zero-length write never reaches the attribute
        if attr == "writeback":
            await jobs.run_writeback(self.work(dev), value, progress)
        elif attr == "recompress":
            await jobs.run_recompress(self.work(dev), value, progress)
        elif attr == "compact":
            await jobs.run_compact(self.work(dev), progress)
        elif attr == "reset":
            if not kstrtou16(value):
                raise OSError(errno.EINVAL, "reset needs a non-zero value")
            await self._claim_and_quiesce(dev)
            dev.reset()
        else:
            dev.store(attr, value)

    async def _claim_and_quiesce(self, dev: ZramDevice) -> None:
        """Refuse while clients are attached; otherwise block new opens, stop
        and wait for post-processing (a reset in the kernel waits likewise)."""
        if dev.openers or dev.claimed:
            raise OSError(errno.EBUSY, f"{dev.name} is in use by {dev.openers} client(s)")
        dev.claimed = True
        try:
            await jobs.quiesce(self.work(dev))
        finally:
            dev.claimed = False

    async def hot_remove(self, value: str) -> None:
        dev_id = kstrtoint(value)
        if dev_id >= 0:
            try:
                dev = self.registry.get(f"zram{dev_id}")
            except OSError:
                dev = None
            if dev is not None:
                await self._claim_and_quiesce(dev)
        self.registry.hot_remove(value)

    def stop_work(self) -> None:
        for w in self._work.values():
            w.request_stop()

    async def wait_work(self) -> None:
        while any(w.busy for w in self._work.values()):
            await trio.sleep(0.01)
