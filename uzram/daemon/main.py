"""uzramd: keeps zram devices and serves each over NBD, with a control socket."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

import trio

from .. import __version__
from ..nbd.server import NBDServer
from . import config as config_mod
from . import control, hardening, marker, sockets, systemd
from .logs import event, setup
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


async def run(cfg: config_mod.Config, quiet: bool = False) -> int:
    registry = DeviceRegistry()
    configure_devices(registry, cfg.devices)
    nbd = NBDServer(registry)
    daemon = Daemon(registry, nbd)

    listen_socks: list[trio.socket.SocketType] = []
    names: list[str] = []
    control_sock = None
    created: list[str] = []
    for sock, name in systemd.listen_fds():
        tsock = trio.socket.from_stdlib_socket(sock)
        if name == "control":
            control_sock = tsock
        else:
            listen_socks.append(tsock)
            names.append(f"fd:{sock.fileno()}")
    listens = cfg.listen or ([] if listen_socks else [config_mod.default_listen()])
    try:
        for item in listens:
            listen_socks.append(await sockets.bind(item))
            names.append(str(item))
            if item.kind == "unix":
                created.append(item.path)
        if control_sock is None:
            control_sock = await sockets.bind_unix(cfg.control, 0o600)
            created.append(str(cfg.control))
        state = marker.Marker(cfg.control)
        state.begin(registry.devices())  # devices unclean after an unclean exit

        async with trio.open_nursery() as nursery:
            for sock in listen_socks:
                await nursery.start(nbd.serve_listener, sock)
            control_scope = trio.CancelScope()

            async def control_task(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with control_scope:
                    await control.serve(control_sock, daemon, task_status=task_status)
            await nursery.start(control_task)
            fuse_scope = trio.CancelScope()
            if cfg.fuse is not None:
                from . import fusefs

                async def fuse_task(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    with fuse_scope:
                        await fusefs.serve(daemon, str(cfg.fuse), task_status=task_status)
                await nursery.start(fuse_task)
            event(log, logging.INFO, "ready", listen=" ".join(names), control=str(cfg.control),
                  devices=" ".join(d.name for d in registry.devices()))
            if not quiet:
                print(attach_hint(names), file=sys.stderr, flush=True)
            systemd.notify("READY=1\nSTATUS=serving " + " ".join(names))

            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    event(log, logging.INFO, "stopping", signal=signal.Signals(signum).name)
                    break
            systemd.notify("STOPPING=1")
            nbd.stop()
            daemon.stop_work()
            with trio.move_on_after(30):
                await nbd.wait_closed()
                await daemon.wait_work()
            control_scope.cancel()
            fuse_scope.cancel()
        state.end(registry.devices())  # a clean stop: no marker left
    finally:
        for sock in listen_socks:
            sock.close()
        if control_sock is not None:
            control_sock.close()
        for path in created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    event(log, logging.INFO, "stopped")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uzramd", description="Serve zram devices, emulated in userspace, over NBD.")
    p.add_argument("--config", metavar="FILE", help="TOML configuration ([uzramd] and [zramN] tables)")
    p.add_argument("--listen", metavar="ADDR", action="append", default=[],
                   help="unix:PATH or tcp:[HOST:]PORT (repeatable; default unix:%s)"
                   % config_mod.default_listen().path)
    p.add_argument("--control", metavar="PATH", help="control socket (default %s, or $UZRAM_CONTROL)"
                   % config_mod.default_control_path())
    p.add_argument("--device", metavar="NAME[:ATTR=VALUE,...]", action="append", default=[],
                   help="create a device and store attributes in order, e.g. zram0:comp_algorithm=zstd,disksize=1G")
    p.add_argument("--fuse", metavar="DIR", help="mount the sysfs-like attribute tree (and dev/zramN files) at DIR")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the attach hint")
    p.add_argument("--version", action="version", version=f"uzramd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config_mod.build(args.config, args.listen, args.control, args.device, args.fuse)
    except config_mod.ConfigError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 2
    level = {0: cfg.log_level, 1: "info"}.get(args.verbose, "debug")
    setup(level)
    hardening.apply()
    try:
        return trio.run(run, cfg, args.quiet)
    except config_mod.ConfigError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 1
