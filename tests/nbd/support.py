"""Helpers for the NBD tests: an in-process server on a UNIX socket, client runners."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field

import trio

from uzram.nbd.export import StaticRegistry
from uzram.nbd.server import NBDServer, ServerConfig

from .memexport import MemExport

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT_TIMEOUT = 60.0


@dataclass
class NBDEnv:
    path: str
    server: NBDServer
    exports: list[MemExport]
    listen: trio.socket.SocketType
    errors: list[logging.LogRecord] = field(default_factory=list)
    clients: list[trio.socket.SocketType] = field(default_factory=list)

    @property
    def export(self) -> MemExport:
        return self.exports[0]

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.path}"

    def uri_for(self, name: str) -> str:
        return f"nbd+unix:///{name}?socket={self.path}"

    async def connect(self) -> trio.socket.SocketType:
        s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.clients.append(s)
        await s.connect(self.path)
        return s

    async def stop(self) -> None:
        self.server.stop()
        with trio.fail_after(10):
            await self.server.wait_closed()
        for s in self.clients:
            s.close()
        self.listen.close()


async def start_env(
    nursery: trio.Nursery,
    tmp: str,
    exports: list[MemExport],
    config: ServerConfig | None = None,
) -> NBDEnv:
    path = os.path.join(tmp, "nbd.sock")
    listen = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listen.bind(path)
    listen.listen(64)
    server = NBDServer(StaticRegistry(list(exports)), config)
    await nursery.start(server.serve_listener, listen)
    return NBDEnv(path=path, server=server, exports=exports, listen=listen)


async def run(
    cmd: list[str],
    *,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a client program; return the completed process (stdout/stderr captured)."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)
    if env:
        full_env.update(env)
    with trio.fail_after(CLIENT_TIMEOUT):
        p = await trio.run_process(
            cmd,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=full_env,
            cwd=cwd or tempfile.gettempdir(),
        )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{cmd[0]} exited {p.returncode}\nstdout:\n{p.stdout.decode(errors='replace')}"
            f"\nstderr:\n{p.stderr.decode(errors='replace')}"
        )
    return p


LIBNBD_PRELUDE = r"""
import errno, os, sys
import nbd
URI = os.environ["URI"]

def expect_err(fn, *args, errnum=None, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if errnum is not None:
            assert e.errnum == errnum, (fn.__name__, args, e.errnum, errnum, e.string)
        return e
    raise AssertionError(f"{fn.__name__}{args} did not fail")
"""


async def libnbd(script: str, uri: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a script with the system Python's libnbd bindings (``import nbd``)."""
    return await run(
        [SYSTEM_PYTHON, "-"], stdin=(LIBNBD_PRELUDE + script).encode(), env={"URI": uri}, check=check
    )
