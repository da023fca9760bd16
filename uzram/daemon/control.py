"""The control socket: uzram.control's protocol over a UNIX socket, served by
the daemon with peer credentials checked (root or the daemon's own user)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..control import decode, encode, error_reply
from ..nbd.listen import accept_retrying
from ..zram import attrs
from . import hardening
from .logs import event

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("uzram.control")

MAX_REQUEST = 1 << 20  # requests are small; a longer line is refused before parsing

Handler = Callable[[bytes, trio.SocketStream], Awaitable[dict[str, Any]]]
"""Answers one request line; may send progress lines on the stream first."""


def peer_uid(sock: trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return int(uid)


async def serve(listen_sock: trio.socket.SocketType, daemon: Daemon | None, *,
                handler: Handler | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve control clients: requests go to ``handler``, by default the
    daemon's own dispatch."""
    if handler is None:
        assert daemon is not None
        served = daemon

        async def handler(line: bytes, stream: trio.SocketStream) -> dict[str, Any]:
            return await _dispatch(served, line, stream)
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            sock = await accept_retrying(listen_sock, log)
            try:
                uid = peer_uid(sock)
            except OSError:
                sock.close()
                continue
            if uid not in (0, os.geteuid()):
                event(log, logging.WARNING, "refused control client", uid=uid)
                sock.close()
                continue
            nursery.start_soon(_client, sock, handler)


async def _client(sock: trio.socket.SocketType, handler: Handler) -> None:
    """One control client: requests are answered in turn; a failure ends
    this client only."""
    stream = trio.SocketStream(sock)
    buf = bytearray()
    try:
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    reply = await handler(line, stream)
                    await stream.send_all(encode(reply))
                if len(buf) > MAX_REQUEST:
                    await stream.send_all(encode(error_reply(OSError(errno.E2BIG, "request too long"))))
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
    except Exception:
        log.exception("control client failed")


def decode_request(line: bytes) -> dict[str, Any]:
    """A request, bounded before and while parsing: size, nesting, numbers."""
    if len(line) > MAX_REQUEST:
        raise OSError(errno.E2BIG, "request too long")
    try:
        return decode(line)
    except RecursionError:
        raise OSError(errno.EINVAL, "bad request: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise OSError(errno.EINVAL, f"bad request: {str(e)[:200]}") from None


async def _dispatch(daemon: Daemon, line: bytes, stream: trio.SocketStream) -> dict[str, Any]:
    try:
        req = decode_request(line)
    except OSError as e:
        return error_reply(e)
    cmd = req.get("cmd")
    try:
        if cmd == "devices":
            return {"ok": True, "devices": [d.name for d in daemon.registry.devices()]}
        if cmd == "status":
            return {"ok": True, "devices": [daemon.status(d) for d in daemon.registry.devices()]}
        if cmd == "attrs":
            daemon.registry.get(field(req, "device"))
            return {"ok": True, "attrs": {n: oct(attrs.MODES[n]) for n in attrs.names()}}
        if cmd == "show":
            dev = daemon.registry.get(field(req, "device"))
            return {"ok": True, "value": dev.show(field(req, "attr"))}
        if cmd == "store":
            dev = daemon.registry.get(field(req, "device"))

            async def progress(done: int, total: int, what: str) -> None:
                await stream.send_all(encode({"progress": {"done": done, "total": total, "what": what}}))
            await daemon.store(dev, field(req, "attr"), field(req, "value"),
                               progress if req.get("progress") else None)
            return {"ok": True}
        if cmd == "hot_add":
            return {"ok": True, "value": daemon.hot_add()}
        if cmd == "hot_remove":
            await daemon.hot_remove(field(req, "value"))
            return {"ok": True}
        if cmd == "debug":
            dev = daemon.registry.get(field(req, "device"))
            return {"ok": True, "value": dev.debugfs(field(req, "name"))}
        if cmd == "metrics":
            from .metrics import render
            return {"ok": True, "value": render(daemon)}
        if cmd == "version":
            return {"ok": True, "version": __version__}
        if cmd == "hardening":   # the memory measures in force and the reserves' state
            return {"ok": True, "hardening": {**hardening.report(), **daemon.admission.state()}}
        return error_reply(OSError(errno.EINVAL, f"unknown command {cmd!r}"))
    except OSError as e:
        event(log, logging.DEBUG, "control request failed", cmd=cmd, errno=e.errno, error=e.strerror)
        return error_reply(e)
    except Exception as e:  # a bug, or input no parser foresaw: this request fails, nothing else
        log.exception("control request %.40r failed", cmd)
        return error_reply(OSError(errno.EINVAL if isinstance(e, ValueError) else errno.EIO,
                                   f"{type(e).__name__}: {str(e)[:200]}"))


def field(req: dict[str, Any], name: str) -> str:
    value = req.get(name)
    if not isinstance(value, str):
        raise OSError(errno.EINVAL, f"request needs a string field {name!r}")
    return value
