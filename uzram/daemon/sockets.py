"""Creating the daemon's listening sockets."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import trio

from ..control import prepare_socket_dir
from .config import Listen


async def bind_unix(path: Path, mode: int) -> trio.socket.SocketType:
    """Listen on a UNIX socket at ``path`` (mode ``mode``); a stale socket file is
    replaced, a live one (another daemon) is an error."""
    prepare_socket_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise OSError(errno.EADDRINUSE, f"{path} is served by another process (is uzramd running?)")
        finally:
            probe.close()
    # Bind and listen under a temporary name, then rename: whoever sees the
    # path can connect at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        await sock.bind(str(tmp))
    finally:
        os.umask(old)
    os.chmod(tmp, mode)
    sock.listen(128)
    os.rename(tmp, path)
    return sock


async def bind_tcp(host: str, port: int) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await sock.bind(addr)
    sock.listen(128)
    return sock


async def bind(listen: Listen) -> trio.socket.SocketType:
    if listen.kind == "unix":
        return await bind_unix(Path(listen.path), 0o660 if os.geteuid() == 0 else 0o600)
    return await bind_tcp(listen.host, listen.port)
