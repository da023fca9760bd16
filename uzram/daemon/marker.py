"""The unclean-exit marker: a restarted uzramd must not serve a silent blank
where its previous instance had data.

While uzramd runs, a marker file sits next to its control socket
(``<control>.state``, in the runtime directory, which a reboot clears). A
clean stop (SIGTERM/SIGINT) removes it. If a daemon starts and finds one,
the previous instance with the same control socket died uncleanly (SIGKILL,
OOM, a crash) and its devices' contents are gone: every device configured at
start is then *unclean* and refuses to be opened (NBD export refused, EIO)
until it is reset (``uzramctl -r``, or storing ``reset``). A clean stop with
devices still unclean keeps a marker naming them, so a later start refuses
them again. Another daemon (another ``--control``) has another marker.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..control import prepare_socket_dir
from ..zram import ZramDevice
from .logs import event

log = logging.getLogger("uzram.daemon")

# unclean device -> its runtime state (Stats) when marked; a reset replaces
# that state, which clears the mark
_unclean: weakref.WeakKeyDictionary[ZramDevice, Any] = weakref.WeakKeyDictionary()


def marker_path(control: Path) -> Path:
    return Path(f"{control}.state")


def check_open(dev: ZramDevice) -> None:
    """Refuse to open an unclean device (EIO): NBD attach and FUSE open."""
    stats = _unclean.get(dev)
    if stats is None:
        return
    if stats is not dev.stats:  # reset since
        del _unclean[dev]
        return
    raise OSError(errno.EIO, f"{dev.name}: a previous uzramd exited uncleanly and its data is gone; "
                  f"reset it to use it again (uzramctl -r /dev/{dev.name}, or store reset=1)")


def is_unclean(dev: ZramDevice) -> bool:
    try:
        check_open(dev)
    except OSError:
        return True
    return False


def mark_unclean(dev: ZramDevice) -> None:
    _unclean[dev] = dev.stats


class Marker:
    """The marker of one daemon (one control socket path)."""

    def __init__(self, control: Path) -> None:
        self.path = marker_path(control)

    def read(self) -> dict[str, Any] | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(1 << 16)
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        return obj if isinstance(obj, dict) else {"devices": None}

    def begin(self, devices: Iterable[ZramDevice]) -> list[str]:
        """At start (sockets bound): mark devices unclean after an unclean
        exit, then write this instance's marker. Returns the unclean names."""
        prepare_socket_dir(self.path.parent)
        devices = list(devices)
        previous = self.read()
        unclean: list[str] = []
        if previous is not None:
            if previous.get("clean"):
                names = set(previous.get("unclean") or [])
                unclean = [d.name for d in devices if d.name in names]
            else:
                unclean = [d.name for d in devices]
            for dev in devices:
                if dev.name in unclean:
                    mark_unclean(dev)
            event(log, logging.WARNING, "unclean devices", marker=str(self.path),
                  previous_pid=previous.get("pid"), devices=" ".join(unclean) or "-",
                  hint="reset them: uzramctl -r /dev/zramN")
        self._write({"pid": os.getpid(), "clean": False, "devices": [d.name for d in devices]})
        return unclean

    def end(self, devices: Iterable[ZramDevice]) -> None:
        """At a clean stop: remove the marker, or keep the still unclean names."""
        unclean = [d.name for d in devices if is_unclean(d)]
        if unclean:
            self._write({"pid": os.getpid(), "clean": True, "unclean": unclean})
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _write(self, obj: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(obj).encode() + b"\n")
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
