"""A blocking client for uzramd's control socket (see ``uzram.control``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, BinaryIO

from ..control import Progress, ProtocolError, encode, read_reply, reply_errno


class DaemonNotRunning(Exception):
    """The control socket is missing or nobody listens on it."""

    def __init__(self, path: Path, err: OSError) -> None:
        self.path = path
        self.err = err
        super().__init__(f"cannot connect to uzramd at {path}: {err.strerror or err}")

    def hint(self) -> str:
        return ("uzramd does not seem to be running "
                "(use --control PATH or UZRAM_CONTROL to select another socket)")


class ControlError(OSError):
    """A request the daemon refused: ``errno`` as sysfs would give it, ``strerror``
    the C library's text for it, ``detail`` the daemon's explanation."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, os.strerror(code))
        self.detail = detail


def read_result(f: BinaryIO, progress: Progress | None = None) -> dict[str, Any]:
    """Read up to the final reply (``uzram.control.read_reply``); returns it
    if ``ok``, else raises ControlError."""
    reply = read_reply(f, progress)
    if reply.get("ok"):
        return reply
    raise ControlError(reply_errno(reply), str(reply.get("message", "")))


class Client:
    """One connection to the control socket, reused for every request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            sock.close()
            raise DaemonNotRunning(path, e) from None
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, cmd: str, on_progress: Progress | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return its successful final reply; progress
        lines before it go to ``on_progress``."""
        try:
            self._sock.sendall(encode({"cmd": cmd, **fields}))
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ProtocolError(f"uzramd closed the connection: {e.strerror}") from None
        return read_result(self._file, on_progress)

    # -- the commands -------------------------------------------------------------

    def devices(self) -> list[str]:
        return list(self.request("devices")["devices"])

    def status(self) -> list[dict[str, Any]]:
        return list(self.request("status")["devices"])

    def show(self, device: str, attr: str) -> str:
        return str(self.request("show", device=device, attr=attr)["value"])

    def store(self, device: str, attr: str, value: str, progress: Progress | None = None) -> None:
        if progress is None:
            self.request("store", device=device, attr=attr, value=value)
        else:
            self.request("store", progress, device=device, attr=attr, value=value, progress=True)

    def hot_add(self) -> int:
        return int(self.request("hot_add")["value"])

    def hot_remove(self, dev_id: int) -> None:
        self.request("hot_remove", value=str(dev_id))

    def version(self) -> str:
        return str(self.request("version")["version"])
