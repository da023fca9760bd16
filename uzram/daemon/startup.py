"""What uzramd's main process and its device workers both do at start:
creating the configured devices, the swap settings file, the attach hint,
and giving the heap back after load."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import sys

import trio

from ..nbd.server import NBDServer
from . import config as config_mod
from . import hardening, sockets, systemd
from .logs import event
from .registry import DeviceRegistry, parse_device_name
from .service import Daemon

log = logging.getLogger("uzram.daemon")


def configure_devices(registry: DeviceRegistry, specs: list[config_mod.DeviceSpec]) -> None:
    for spec in specs:
        dev = registry.add(parse_device_name(spec.name))
        for attr, value in spec.attrs:
            try:
                dev.store(attr, value)
            except OSError as e:
                raise config_mod.ConfigError(f"{spec.name}: {attr}={value}: {describe(e)}") from e


def describe(e: OSError) -> str:
    """The errno's message, plus the detail when there is one."""
    text = os.strerror(e.errno) if e.errno else str(e)
    return f"{text} ({e.strerror})" if e.strerror and e.strerror != text else text


def write_swap_settings(cfg: config_mod.Config) -> list[str]:
    """zram-generator's swap-priority/options/fs-type for the swap unit
    (systemd/uzram-swap), as ``NAME.swap`` beside the control socket."""
    written = []
    for name, settings in cfg.swap_settings.items():
        path = cfg.control.parent / f"{name}.swap"
        try:
            path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))
        except OSError as e:
            event(log, logging.WARNING, "cannot write swap settings; uzram-swap will use its defaults",
                  path=str(path), error=e.strerror)
            continue
        written.append(str(path))
    return written


def attach_hint(listeners: list[str]) -> str:
    unix = next((p[5:] for p in listeners if p.startswith("unix:")), None)
    lines = ["uzramd: serving " + ", ".join(listeners)]
    if unix:
        lines += [
            "attach it with one of:",
            f"  nbdinfo 'nbd+unix:///zram0?socket={unix}'",
            f"  nbd-client -unix {unix} /dev/nbd0 -N zram0 -b 4096 && mkswap /dev/nbd0 && swapon -d /dev/nbd0",
            f"  qemu-system-x86_64 ... -drive file=nbd+unix:///zram0?socket={unix},format=raw,if=virtio",
        ]
    return "\n".join(lines)


async def trim_heap_after_load(nbd: NBDServer, every: float = 2.0) -> None:
    """Give the heap back after a burst of buffered requests: once the budget
    has held much since the last trim and has stayed nearly empty for a
    whole interval, trim malloc's free memory (in a worker thread), so RSS
    returns to the baseline plus the pool.  Never under load: re-faulting
    freed buffers would slow large reads down; and not while the daemon's
    memory is locked: heap memory kept is memory a swap-out under pressure
    need not fault in again."""
    budget = nbd.budget
    high = 0
    while True:
        budget.peak = budget.used
        await trio.sleep(every)
        recent = budget.peak          # the highest level during this interval
        high = max(high, recent)
        if hardening.STATE.get("locked"):
            continue
        if high >= TRIM_AFTER and recent < TRIM_AFTER // 8:
            high = 0
            await trio.to_thread.run_sync(hardening.trim_heap)


TRIM_AFTER = 8 << 20


def activity(registry: DeviceRegistry, nbd: NBDServer, daemon: Daemon) -> int:
    """A number that changes whenever a client is being served or a job runs."""
    served = 0
    for dev in registry.devices():
        st = dev.stats
        served += st.read_ios + st.write_ios + st.discard_ios + st.flush_ios
    return served + nbd.budget.used + nbd.connection_count + daemon.jobs_running()


def inherited_sockets() -> tuple[list[trio.socket.SocketType], list[str], trio.socket.SocketType | None]:
    """The sockets systemd passed (socket activation): NBD listeners with
    their names for the attach hint, and the control socket if one was."""
    listen_socks: list[trio.socket.SocketType] = []
    names: list[str] = []
    control_sock = None
    for inherited, name in systemd.listen_fds():
        tsock = trio.socket.from_stdlib_socket(inherited)
        if name == "control":
            control_sock = tsock
        else:
            listen_socks.append(tsock)
            names.append(f"fd:{inherited.fileno()}")
    return listen_socks, names, control_sock


def serves_tcp(listens: list[config_mod.Listen], listen_socks: list[trio.socket.SocketType]) -> bool:
    """Whether any listener, configured or inherited, is not a UNIX socket."""
    return any(item.kind == "tcp" for item in listens) or any(s.family != socket.AF_UNIX for s in listen_socks)


async def drain(nbd: NBDServer, daemon: Daemon, timeout: float, **fields: object) -> None:
    """Stop accepting and ask jobs to stop, then give requests in flight and
    jobs ``timeout`` seconds; the caller cancels what is left."""
    nbd.stop()
    daemon.stop_work()
    with trio.move_on_after(timeout) as grace:
        await nbd.wait_closed()
        await daemon.wait_work()
    if grace.cancelled_caught:
        event(log, logging.WARNING, "shutdown grace period over; cancelling what is left",
              **fields, seconds=timeout, connections=nbd.connection_count)


async def bind_listeners(cfg: config_mod.Config, listens: list[config_mod.Listen],
                         listen_socks: list[trio.socket.SocketType], names: list[str],
                         control_sock: trio.socket.SocketType | None, created: list[str]) -> trio.socket.SocketType:
    """Bind the configured NBD listeners (added to ``listen_socks`` and
    ``names``) and, unless systemd passed one, the control socket; the paths
    made go into ``created``. Returns the control socket."""
    for item in listens:
        listen_socks.append(await sockets.bind(item))
        names.append(str(item))
        if item.kind == "unix":
            created.append(item.path)
    if control_sock is None:
        control_sock = await sockets.bind_unix(cfg.control, 0o600)
        created.append(str(cfg.control))
    return control_sock


async def serve_until_signal(names: list[str], quiet: bool) -> None:
    """Say how to attach, tell systemd READY once SIGTERM is handled (a stop
    right after it must be clean), and wait for SIGTERM or SIGINT."""
    if not quiet:
        print(attach_hint(names), file=sys.stderr, flush=True)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        systemd.notify("READY=1\nSTATUS=serving " + " ".join(names))
        async for signum in signals:
            event(log, logging.INFO, "stopping", signal=signal.Signals(signum).name)
            break
    systemd.notify("STOPPING=1")


def close_and_remove(socks: list[trio.socket.SocketType], control_sock: trio.socket.SocketType | None,
                     created: list[str]) -> None:
    """At exit: close the listening sockets and remove the paths made."""
    for sock in socks:
        sock.close()
    if control_sock is not None:
        control_sock.close()
    for path in created:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
