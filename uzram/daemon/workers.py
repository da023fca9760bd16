"""The main process's side of ``--process-per-device``: one worker process
per device (see :mod:`.worker`), started, watched and stopped here, and the
export registry the main process's NBD handshakes consult.

Workers are started with ``subprocess`` as ``python -m uzram.daemon.worker``:
a fresh interpreter (nothing of the main process's trio loop, sockets or
heap is inherited, as a fork would), the handoff socket passed by
descriptor, and no pickling or helper process that multiprocessing's
spawn/forkserver contexts would add.  Each is watched through a pidfd; one
that exits unasked is logged and its device reported failed."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from ..nbd.handover import Handover, receive_message, send_message
from ..nbd.proto import Negotiated
from . import config as config_mod
from .logs import event
from .registry import parse_export_name
from .worker import WorkerSpec, worker_control_path

log = logging.getLogger("uzram.daemon")

START_TIMEOUT = 60.0   # a worker must be ready (device configured, sockets bound) by then


class Worker:
    """One device's worker process, and the device as the main process's
    NBD handshake sees it (:class:`uzram.nbd.export.BlockExport`: only the
    metadata; the data calls are served by the worker)."""

    read_only = False
    ordering_granularity = 4096

    def __init__(self, name: str, proc: subprocess.Popen[bytes], handoff: trio.socket.SocketType,
                 control: Path) -> None:
        self.name = name
        self.proc = proc
        self.handoff = handoff
        self.control = control
        self.description = ""
        self._size = 0
        self.failed: str | None = None
        """Why the device failed (its worker exited unasked), or None."""
        self.stopping = False
        self.exited = trio.Event()

    def update(self, info: dict[str, Any]) -> None:
        self._size = int(info["size"])
        self.description = str(info["description"])

    def size(self) -> int:
        return self._size

    def attach(self) -> None:
        """Checked at GO time; the worker attaches the device itself (and
        closes the connection if it refuses, e.g. during a reset)."""
        if self.failed is not None:
            raise OSError(errno.ENODEV, f"{self.name} failed: {self.failed}")
        if self.stopping:
            raise OSError(errno.ESHUTDOWN, f"{self.name} is stopping")

    def detach(self) -> None:
        pass

    def _data(self, *args: Any) -> Any:
        raise OSError(errno.EIO, "data requests are served by the device's worker process")

    read = write = trim = write_zeroes = flush = cache = block_status = _data


class Workers:
    """The devices' workers by id; an NBD export registry over them."""

    def __init__(self, cfg: config_mod.Config, log_level: str, swap: bool, reserve: int) -> None:
        self.cfg = cfg
        self.log_level = log_level
        self.swap = swap
        self.reserve = reserve
        self._workers: dict[int, Worker] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Watch workers until cancelled; then kill whatever still runs."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.kill_all()

    # -- the registry ----------------------------------------------------------

    def get(self, dev_id: int) -> Worker | None:
        return self._workers.get(dev_id)

    def items(self) -> list[tuple[int, Worker]]:
        return sorted(self._workers.items())

    def lookup(self, name: str) -> Worker | None:
        dev_id = parse_export_name(name)
        return None if dev_id is None else self._workers.get(dev_id)

    def list(self) -> list[tuple[str, str]]:
        return [(w.name, w.description) for _, w in self.items() if w.failed is None]

    def free_id(self) -> int:
        return next(i for i in range(len(self._workers) + 1) if i not in self._workers)

    # -- starting and stopping -------------------------------------------------

    async def start(self, dev_id: int, attrs: Sequence[tuple[str, str]]) -> Worker:
        """Start ``zram<dev_id>``'s worker and wait until it serves; a device
        it cannot configure is a ConfigError (the worker printed why)."""
        assert self._nursery is not None
        if dev_id in self._workers:
            raise OSError(errno.EEXIST, f"zram{dev_id} already exists")
        name = f"zram{dev_id}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control = worker_control_path(self.cfg.control, name)
        spec = WorkerSpec(name=name, control=str(control), handoff_fd=theirs.fileno(), attrs=[*attrs],
                          limits=asdict(self.cfg.limits), log_level=self.log_level,
                          swap=self.swap, reserve=self.reserve, dedup=bool(self.cfg.dedup))
        try:
            # in this thread, quickly: a worker must not depend on a helper thread
            proc = subprocess.Popen([sys.executable, "-m", "uzram.daemon.worker", spec.to_json()],
                                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        worker = Worker(name, proc, trio.socket.from_stdlib_socket(ours), control)
        self._workers[dev_id] = worker
        self._nursery.start_soon(self._watch, worker)
        ready: tuple[dict[str, Any], bytes, int | None] | None = None
        with trio.move_on_after(START_TIMEOUT):
            ready = await receive_message(worker.handoff)
        if ready is None or "ready" not in ready[0]:
            self._workers.pop(dev_id, None)
            await self._stop(worker, 5)
            raise config_mod.ConfigError(f"{name}: its worker process did not start")
        worker.update(ready[0]["ready"])
        event(log, logging.INFO, "device worker started", device=name, pid=proc.pid)
        return worker

    async def _watch(self, worker: Worker) -> None:
        pidfd = os.pidfd_open(worker.proc.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
            if worker.proc.poll() is None:   # cancelled: the daemon failed or stops hard
                worker.stopping = True
                _signal(worker, signal.SIGKILL)
            status = worker.proc.wait()
            worker.handoff.close()
            worker.exited.set()
        if not worker.stopping:
            worker.failed = f"its worker process exited with status {status}"
            event(log, logging.ERROR, "device worker died; the device has failed",
                  device=worker.name, pid=worker.proc.pid, status=status)
            try:
                worker.control.unlink()
            except FileNotFoundError:
                pass

    async def stop(self, dev_id: int, timeout: float) -> None:
        """Stop one worker (SIGTERM: its graceful shutdown), killing it after ``timeout``."""
        worker = self._workers[dev_id]
        await self._stop(worker, timeout)
        del self._workers[dev_id]

    async def _stop(self, worker: Worker, timeout: float) -> None:
        worker.stopping = True
        _signal(worker, signal.SIGTERM)
        with trio.move_on_after(timeout):
            await worker.exited.wait()
        if not worker.exited.is_set():
            event(log, logging.WARNING, "device worker did not stop; killing it", device=worker.name)
            _signal(worker, signal.SIGKILL)
            await worker.exited.wait()

    async def stop_all(self, timeout: float) -> None:
        async with trio.open_nursery() as nursery:
            for _, worker in self.items():
                nursery.start_soon(self._stop, worker, timeout)

    def forget(self, dev_id: int) -> None:
        """Remove a failed device."""
        del self._workers[dev_id]

    def kill_all(self) -> None:
        """Last resort (start failed, or cancelled): no worker outlives the daemon."""
        for worker in self._workers.values():
            if worker.proc.returncode is None:
                worker.stopping = True
                _signal(worker, signal.SIGKILL)
                worker.proc.wait()

    # -- NBD -------------------------------------------------------------------

    async def transfer(self, sock: trio.socket.SocketType, neg: Negotiated, trailing: bytes) -> None:
        """Hand a negotiated connection to the worker owning its export."""
        worker = neg.export
        assert isinstance(worker, Worker)
        try:
            await send_message(worker.handoff, {"connection": Handover.of(neg).to_dict()}, trailing,
                               sock.fileno())
        except OSError as e:   # the worker died meanwhile: the client sees the connection close
            event(log, logging.WARNING, "cannot hand a connection to its device's worker",
                  device=worker.name, error=str(e))


def _signal(worker: Worker, sig: int) -> None:
    if worker.proc.returncode is None:
        try:
            worker.proc.send_signal(sig)
        except ProcessLookupError:
            pass
