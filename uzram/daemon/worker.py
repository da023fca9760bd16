"""One device's worker process, for ``uzramd --process-per-device``.

``python -m uzram.daemon.worker SPEC`` (SPEC a JSON object, see
:class:`WorkerSpec`) keeps one device with its own trio loop, ZramDevice,
jobs, NBD server and control socket (a private path beside the main
control socket, which the main process forwards device requests to).  It
serves NBD connections the main process negotiated and hands over on the
handoff socket (a SOCK_SEQPACKET descriptor it inherits, see
:mod:`uzram.nbd.handover`).  It stops as the daemon does, on SIGTERM or
SIGINT, and also when the handoff socket reaches EOF: the main process is
gone, and a worker never outlives it.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..nbd.handover import Handover, receive_message, send_message
from ..nbd.server import NBDServer, ServerConfig
from . import config as config_mod
from . import control, gcpolicy, hardening, marker, reserve, sockets
from .logs import event, setup
from .startup import activity, configure_devices, drain, trim_heap_after_load
from .registry import DeviceRegistry
from .service import Daemon

log = logging.getLogger("uzram.daemon")


@dataclass
class WorkerSpec:
    """What the main process tells a worker (as JSON on its command line)."""
    name: str
    control: str
    handoff_fd: int
    attrs: list[tuple[str, str]] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)
    log_level: str = "warning"
    swap: bool = False
    reserve: int = 0
    dedup: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        d = json.loads(text)
        d["attrs"] = [(str(a), str(v)) for a, v in d.get("attrs", [])]
        return cls(**d)


def worker_control_path(control: Path, name: str) -> Path:
    """The worker's private control socket: ``<control>.<device>``."""
    return control.with_name(f"{control.name}.{name}")


def export_info(registry: DeviceRegistry, name: str) -> dict[str, Any]:
    """What the main process's handshake tells clients of the export."""
    export = registry.export(name)
    return {"size": export.size(), "description": export.description}


async def run(spec: WorkerSpec) -> int:
    handoff = trio.socket.from_stdlib_socket(socket.socket(fileno=spec.handoff_fd))
    registry = DeviceRegistry(dedup=spec.dedup)
    try:
        configure_devices(registry, [config_mod.DeviceSpec(spec.name, list(spec.attrs))])
    except config_mod.ConfigError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 2
    limits = config_mod.Limits(**spec.limits)
    nbd = NBDServer(registry, ServerConfig(
        max_buffer_memory=limits.max_buffer_memory, idle_timeout=limits.idle_timeout,
        max_connections=limits.max_connections or None,
        prefault_ring=bool(hardening.STATE.get("locked")),
        busy_poll=hardening.busy_poll_seconds(limits.busy_poll, spec.swap)))
    daemon = Daemon(registry, nbd)
    control_path = Path(spec.control)
    control_sock = await sockets.bind_unix(control_path, 0o600)
    state = marker.Marker(control_path)
    try:
        state.begin(registry.devices())
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            await nursery.start(control.serve, control_sock, daemon)
            nursery.start_soon(trim_heap_after_load, nbd)
            gcpolicy.take_over()
            nursery.start_soon(gcpolicy.collect_when_quiet, lambda: activity(registry, nbd, daemon))
            if spec.reserve:
                nursery.start_soon(reserve.keep_reserves, registry, spec.reserve,
                                   bool(hardening.STATE.get("locked")), daemon.admission, daemon.shrink)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await send_message(handoff, {"ready": export_info(registry, spec.name)})
                stop = trio.Event()
                nursery.start_soon(_receive_connections, handoff, nbd, nursery, stop)
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(_first_signal, signals, stop)
                    await stop.wait()
                    waiting.cancel_scope.cancel()
            await drain(nbd, daemon, limits.shutdown_timeout, device=spec.name)
            nursery.cancel_scope.cancel()
        state.end(registry.devices())
    finally:
        control_sock.close()
        handoff.close()
        try:
            control_path.unlink()
        except FileNotFoundError:
            pass
    return 0


async def _first_signal(signals: Any, stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()
        return


async def _receive_connections(handoff: trio.socket.SocketType, nbd: NBDServer,
                               nursery: trio.Nursery, stop: trio.Event) -> None:
    """Serve each handed-over connection; EOF (the main process is gone) stops the worker."""
    while True:
        try:
            msg = await receive_message(handoff)
        except OSError as e:
            event(log, logging.WARNING, "handoff socket failed", error=str(e))
            msg = None
        if msg is None:
            stop.set()
            return
        header, trailing, fd = msg
        if fd is None:
            continue
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
        try:
            state = Handover.from_dict(header["connection"])
        except (KeyError, TypeError, ValueError):
            sock.close()
            continue
        nursery.start_soon(nbd.serve_negotiated, sock, state, trailing)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = WorkerSpec.from_json(args[0])
    setup(spec.log_level)
    hardening.apply(lock=spec.swap)
    try:
        return trio.run(run, spec)
    except OSError as e:
        print(f"uzramd: {spec.name}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
