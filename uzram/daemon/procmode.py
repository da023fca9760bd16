"""uzramd's main process with ``--process-per-device``: each device is
served by a worker process of its own (see :mod:`.workers`, :mod:`.worker`),
so N devices use N cores.  This process keeps the NBD listeners and runs
the handshakes, then hands each negotiated connection to its device's
worker; it answers registry-level control requests and forwards the
device-scoped ones (:mod:`.forward`).  TLS, FUSE and metrics are not served
in this mode (refused at start: see :func:`refusal`)."""

from __future__ import annotations

import logging
from functools import partial

import trio

from ..nbd.server import NBDServer, ServerConfig
from ..nbd.tls import TLSError, TLSSettings
from . import config as config_mod
from . import control
from .forward import Forwarder
from .logs import event
from .registry import parse_device_name
from .startup import (bind_listeners, close_and_remove, inherited_sockets, serve_until_signal, serves_tcp,
                      write_swap_settings)
from .workers import Workers

log = logging.getLogger("uzram.daemon")


def refusal(cfg: config_mod.Config) -> str | None:
    """Why the configuration cannot run with --process-per-device, if it cannot."""
    if cfg.tls in ("on", "require") or cfg.tls_certificates is not None:
        return ("--process-per-device cannot serve TLS: a TLS session cannot be handed to a "
                "device's worker process; use --tls off or run without --process-per-device")
    if cfg.fuse is not None:
        return "--process-per-device does not serve the FUSE tree (--fuse); run without one of them"
    if cfg.metrics is not None:
        return "--process-per-device does not serve metrics (--metrics); run without one of them"
    return None


async def run(cfg: config_mod.Config, quiet: bool, log_level: str, swap: bool, reserve_setting: int) -> int:
    limits = cfg.limits
    workers = Workers(cfg, log_level, swap, reserve_setting)
    nbd = NBDServer(workers, ServerConfig(
        max_buffer_memory=limits.max_buffer_memory, idle_timeout=limits.idle_timeout,
        max_connections=limits.max_connections or None, tls=TLSSettings("off", explicit=True)),
        transfer=workers.transfer)
    listen_socks, names, control_sock = inherited_sockets()
    created: list[str] = []
    listens = cfg.listen or ([] if listen_socks else [config_mod.default_listen()])
    if serves_tcp(listens, listen_socks):
        try:
            TLSSettings(cfg.tls or "off", explicit=cfg.tls == "off").check_tcp()
        except TLSError as e:
            raise config_mod.ConfigError(str(e)) from None
    failed: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            # the devices' workers first: whoever sees the sockets may use the devices
            await nursery.start(workers.serve)
            try:
                for spec in cfg.devices:
                    await workers.start(parse_device_name(spec.name), list(spec.attrs))
                control_sock = await bind_listeners(cfg, listens, listen_socks, names, control_sock, created)
            except (config_mod.ConfigError, OSError) as e:
                failed = e   # raised alone below, not in an exception group
                await workers.stop_all(limits.shutdown_timeout + 5)
                nursery.cancel_scope.cancel()
            else:
                created += write_swap_settings(cfg)
                await _serve(nursery, cfg, quiet, workers, nbd, listen_socks, control_sock, names)
    finally:
        close_and_remove(listen_socks, control_sock, created)
    if failed is not None:
        raise failed
    event(log, logging.INFO, "stopped")
    return 0


async def _serve(nursery: trio.Nursery, cfg: config_mod.Config, quiet: bool, workers: Workers, nbd: NBDServer,
                 listen_socks: list[trio.socket.SocketType], control_sock: trio.socket.SocketType,
                 names: list[str]) -> None:
    """Serve until SIGTERM or SIGINT, then stop the workers gracefully."""
    limits = cfg.limits
    for sock in listen_socks:
        await nursery.start(nbd.serve_listener, sock)
    forwarder = Forwarder(workers, limits.shutdown_timeout)
    await nursery.start(partial(control.serve, control_sock, None, handler=forwarder))
    event(log, logging.INFO, "ready", listen=" ".join(names), control=str(cfg.control),
          devices=" ".join(w.name for _, w in workers.items()), process_per_device=True)
    await serve_until_signal(names, quiet)
    nbd.stop()   # no new connections; handshakes in progress end
    # each worker answers its requests in flight within the grace period,
    # then exits; one that does not is killed a little later
    await workers.stop_all(limits.shutdown_timeout + 5)
    with trio.move_on_after(1):
        await nbd.wait_closed()
    nursery.cancel_scope.cancel()
