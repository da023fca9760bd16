"""The main process's control requests under ``--process-per-device``.

Registry-level requests are answered here: ``devices``, ``hot_add`` (starts
a worker), ``hot_remove`` (the worker resets and removes its device, then
stops), ``version``, ``hardening``.  Device-scoped ones (``attrs``,
``show``, ``store``, ``debug``) are forwarded unchanged to the device's
worker's control socket and its replies, progress lines included, relayed;
``status`` gathers every worker's.  A failed device (its worker died)
answers EIO."""

from __future__ import annotations

import errno
import logging
from typing import Any

import trio

from .. import __version__
from ..control import MAX_LINE, decode, encode, error_reply
from ..zram.kparse import kstrtoint
from . import hardening
from .control import decode_request, field
from .logs import event
from .registry import parse_device_name
from .workers import Worker, Workers

log = logging.getLogger("uzram.control")

DEVICE_SCOPED = frozenset({"attrs", "show", "store", "debug"})


class Forwarder:
    """Answers control requests for the main process (a control.Handler)."""

    def __init__(self, workers: Workers, shutdown_timeout: float) -> None:
        self.workers = workers
        self.shutdown_timeout = shutdown_timeout
        self._registry_lock = trio.Lock()   # hot_add and hot_remove one at a time

    async def __call__(self, line: bytes, stream: trio.SocketStream) -> dict[str, Any]:
        try:
            req = decode_request(line)
        except OSError as e:
            return error_reply(e)
        cmd = req.get("cmd")
        try:
            if cmd in DEVICE_SCOPED:
                worker = self._worker(field(req, "device"))
                reply = await self._forward(worker, req, stream)
                if cmd == "store" and reply.get("ok"):
                    await self._refresh(worker)
                return reply
            if cmd == "devices":
                items = self.workers.items()
                return {"ok": True, "devices": [w.name for _, w in items if w.failed is None],
                        "failed": [w.name for _, w in items if w.failed is not None]}
            if cmd == "status":
                devices: list[Any] = []
                for _, w in self.workers.items():
                    if w.failed is None:
                        devices += _ok(await self._forward(w, {"cmd": "status"}, None)).get("devices", [])
                return {"ok": True, "devices": devices}
            if cmd == "hot_add":
                async with self._registry_lock:
                    worker = await self.workers.start(self.workers.free_id(), [])
                return {"ok": True, "value": f"{worker.name[4:]}\n"}
            if cmd == "hot_remove":
                async with self._registry_lock:
                    await self._hot_remove(field(req, "value"))
                return {"ok": True}
            if cmd == "version":
                return {"ok": True, "version": __version__}
            if cmd == "hardening":
                return {"ok": True, "hardening": hardening.report()}
            if cmd == "metrics":
                raise OSError(errno.EOPNOTSUPP, "metrics are not served with --process-per-device")
            return error_reply(OSError(errno.EINVAL, f"unknown command {cmd!r}"))
        except OSError as e:
            event(log, logging.DEBUG, "control request failed", cmd=cmd, errno=e.errno, error=e.strerror)
            return error_reply(e)
        except ValueError as e:   # a worker that would not start (ConfigError), or a bad reply
            return error_reply(OSError(errno.EIO, str(e)[:200]))

    def _worker(self, name: str) -> Worker:
        worker = self.workers.get(parse_device_name(name))
        if worker is None:
            raise OSError(errno.ENODEV, f"no such device {name!r}")
        if worker.failed is not None:
            raise OSError(errno.EIO, f"{worker.name} failed: {worker.failed}")
        return worker

    async def _hot_remove(self, value: str) -> None:
        dev_id = kstrtoint(value)
        if dev_id < 0:
            raise OSError(errno.EINVAL, "device id must not be negative")
        worker = self.workers.get(dev_id)
        if worker is None:
            raise OSError(errno.ENODEV, f"no such device zram{dev_id}")
        if worker.failed is None:
            # the worker resets and removes its device (EBUSY while clients are attached)
            _ok(await self._forward(worker, {"cmd": "hot_remove", "value": value}, None))
            await self.workers.stop(dev_id, self.shutdown_timeout)
        else:
            self.workers.forget(dev_id)

    async def _refresh(self, worker: Worker) -> None:
        """After a store: the size and description the handshake gives clients."""
        size = _ok(await self._forward(worker, {"cmd": "show", "device": worker.name, "attr": "disksize"}, None))
        algs = _ok(await self._forward(worker, {"cmd": "show", "device": worker.name,
                                                "attr": "comp_algorithm"}, None))
        text = str(algs["value"])
        alg = text[text.find("[") + 1:text.find("]")] if "[" in text else text.split()[0]
        worker.update({"size": int(size["value"]),
                       "description": f"uzram {worker.name} ({alg}, {int(size['value'])} bytes)"})

    async def _forward(self, worker: Worker, req: dict[str, Any],
                       stream: trio.SocketStream | None) -> dict[str, Any]:
        """Send ``req`` to the worker; relay its progress lines to ``stream``
        (dropped without one) and return its final reply."""
        try:
            sock = trio.socket.socket(trio.socket.AF_UNIX)
            await sock.connect(str(worker.control))
        except OSError as e:
            raise OSError(errno.EIO, f"{worker.name}: its worker does not answer ({e.strerror})") from None
        async with trio.SocketStream(sock) as conn:
            try:
                await conn.send_all(encode(req))
                buf = bytearray()
                while True:
                    while (nl := buf.find(b"\n")) >= 0:
                        line = bytes(buf[:nl + 1])
                        del buf[:nl + 1]
                        reply = decode(line)
                        if "progress" not in reply:
                            return reply
                        if stream is not None:
                            await stream.send_all(line)
                    if len(buf) > MAX_LINE:
                        raise OSError(errno.EIO, f"{worker.name}: reply too long")
                    data = await conn.receive_some(65536)
                    if not data:
                        raise OSError(errno.EIO, f"{worker.name}: its worker closed the request "
                                      f"(it failed: {worker.failed or 'exiting'})")
                    buf += data
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise OSError(errno.EIO, f"{worker.name}: {e}") from None


def _ok(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's successful reply, or its error raised."""
    if reply.get("ok"):
        return reply
    code = reply.get("errno")
    raise OSError(code if isinstance(code, int) and code > 0 else errno.EIO, str(reply.get("message", "")))
