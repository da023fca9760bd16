"""systemd integration without libsystemd: socket activation and sd_notify."""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def listen_fds() -> list[tuple[socket.socket, str]]:
    """Sockets passed by systemd (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), with
    their names; the variables are removed so children do not inherit them."""
    try:
        pid = int(os.environ.get("LISTEN_PID", "0"))
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if pid != os.getpid() or count <= 0:
        return []
    out = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        out.append((sock, names[i] if i < len(names) else ""))
    return out


def notify(state: str) -> bool:
    """``sd_notify``: send ``state`` (e.g. ``READY=1``) if NOTIFY_SOCKET is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
            s.sendall(state.encode())
        except OSError:
            return False
    return True
