"""uzramd: keeps zram devices and serves each over NBD, with a control socket."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

import trio

from .. import __version__
from ..control import default_control_path
from ..nbd import tls as tls_mod
from ..nbd.server import NBDServer, ServerConfig
from . import config as config_mod
from . import control, gcpolicy, hardening, marker, metrics, procmode, reserve, sockets
from .logs import event, setup
from .registry import DeviceRegistry
from .service import Daemon
from .startup import (activity, attach_hint, bind_listeners, close_and_remove, configure_devices, describe,
                      drain, inherited_sockets, serve_until_signal, serves_tcp, trim_heap_after_load,
                      write_swap_settings)

__all__ = ["activity", "attach_hint", "configure_devices", "describe", "main", "parser", "run", "trim_heap_after_load",
           "write_swap_settings"]

log = logging.getLogger("uzram.daemon")


async def run(cfg: config_mod.Config, quiet: bool = False, reserve_setting: int = reserve.AUTO) -> int:
    registry = DeviceRegistry(dedup=bool(cfg.dedup))
    configure_devices(registry, cfg.devices)
    tls = tls_settings(cfg)
    limits = cfg.limits
    # per-request counters and latency histograms cost ~3 us a request:
    # collected only for a daemon that serves metrics
    # ExportRegistry/BlockExport declare name and description as settable and
    # read() as returning list[Buffer] (invariant): the exports' read-only
    # properties and list[bytes] are what the server needs, but do not match.
    exports = (metrics.MeteredRegistry(registry)
               if cfg.metrics is not None else registry)
    nbd = NBDServer(exports, ServerConfig(
        max_buffer_memory=limits.max_buffer_memory, idle_timeout=limits.idle_timeout,
        max_connections=limits.max_connections or None, tls=tls,
        prefault_ring=bool(hardening.STATE.get("locked")),
        busy_poll=hardening.busy_poll_seconds(limits.busy_poll, cfg.swap)))
    daemon = Daemon(registry, nbd)

    listen_socks, names, control_sock = inherited_sockets()
    metrics_sock = None
    listen_socks_extra: list[trio.socket.SocketType] = []
    created: list[str] = []
    listens = cfg.listen or ([] if listen_socks else [config_mod.default_listen()])
    if serves_tcp(listens, listen_socks):
        try:
            tls.check_tcp()
        except tls_mod.TLSError as e:
            raise config_mod.ConfigError(str(e)) from None
    try:
        control_sock = await bind_listeners(cfg, listens, listen_socks, names, control_sock, created)
        created += write_swap_settings(cfg)
        if cfg.metrics is not None:
            metrics_sock = await sockets.bind(cfg.metrics)
            listen_socks_extra.append(metrics_sock)
            if cfg.metrics.kind == "unix":
                created.append(cfg.metrics.path)
        state = marker.Marker(cfg.control)
        state.begin(registry.devices())  # devices unclean after an unclean exit

        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)  # device work runs there, whoever asked for it
            for sock in listen_socks:
                await nursery.start(nbd.serve_listener, sock)
            await nursery.start(control.serve, control_sock, daemon)
            if metrics_sock is not None:
                nursery.start_soon(metrics.serve, metrics_sock, daemon)
            if cfg.fuse is not None:
                from . import fusefs
                await nursery.start(fusefs.serve, daemon, str(cfg.fuse))
            nursery.start_soon(trim_heap_after_load, nbd)
            gcpolicy.take_over()
            nursery.start_soon(gcpolicy.collect_when_quiet, lambda: activity(registry, nbd, daemon))
            if reserve_setting:
                nursery.start_soon(reserve.keep_reserves, registry, reserve_setting,
                                   bool(hardening.STATE.get("locked")), daemon.admission, daemon.shrink)
            event(log, logging.INFO, "ready", listen=" ".join(names), control=str(cfg.control),
                  devices=" ".join(d.name for d in registry.devices()),
                  max_connections=nbd.max_connections, max_buffer_memory=limits.max_buffer_memory)
            await serve_until_signal(names, quiet)
            await drain(nbd, daemon, limits.shutdown_timeout)
            nursery.cancel_scope.cancel()
        state.end(registry.devices())  # a clean stop: no marker left
    finally:
        close_and_remove(listen_socks + listen_socks_extra, control_sock, created)
    event(log, logging.INFO, "stopped")
    return 0


def tls_settings(cfg: config_mod.Config) -> tls_mod.TLSSettings:
    try:
        return tls_mod.settings(cfg.tls, cfg.tls_certificates, cfg.tls_verify_peer)
    except tls_mod.TLSError as e:
        raise config_mod.ConfigError(str(e)) from None


# uzramd's option groups: (title, ((option, metavar or None for a flag, help), ...))
OPTION_GROUPS: tuple[tuple[str, tuple[tuple[str, str | None, str], ...]], ...] = (
    ("limits", (
        ("--max-buffer-memory", "SIZE", "bytes held for requests in flight, daemon-wide (default 64M)"),
        ("--max-connections", "N", "NBD connections served at once (default: from the descriptor limit)"),
        ("--idle-timeout", "SECONDS", "close a connection stalled in the middle of a request (default 60)"),
        ("--shutdown-timeout", "SECONDS",
         "on SIGTERM, answer requests in flight for this long, then exit (default 10)"),
        ("--busy-poll", "USEC", "a client sending one request at a time is polled this long for its "
         "next one before the daemon sleeps, saving a wakeup per request (default 50; 0: never; "
         "off on one CPU, while CPUs are contended, with --swap and under a real-time policy)"),
    )),
    ("scaling", (
        ("--process-per-device", None, "serve each device from a worker process of its own, so that "
         "devices use separate cores; this process runs the NBD handshakes and hands each connection "
         "to its device's worker (the config file's process_per_device = true; not with TLS, --fuse "
         "or --metrics)"),
    )),
    ("swap under memory pressure", (
        ("--swap", None, "serve swap on the same machine: lock the daemon's memory (CAP_IPC_LOCK), "
         "prefault receive buffers, keep a pool reserve, never trim the heap "
         "(the config file's swap = true)"),
        ("--reserve", "SIZE", "prefaulted pool memory kept per device for swap-outs under pressure "
         "(default with --swap: auto, the smaller of 1/8 of disksize and 1/32 of RAM, within 8M..256M, "
         "or 32M..256M while vm.min_free_kbytes or vm.watermark_scale_factor is short of what swap needs; "
         "else 0; the config file's reserve)"),
        ("--dedup", "on|off", "a page written with the contents of a page read lately shares that "
         "page's object, as a page swapped in and out again does: the pool holds it once, although "
         "swap over NBD cannot say that the old slot is free (default: on with --swap; the config "
         "file's dedup)"),
    )),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uzramd", description="Serve zram devices, emulated in userspace, over NBD.")
    p.add_argument("--config", metavar="FILE", help="TOML configuration ([uzramd] and [zramN] tables), or a zram-generator.conf")
    p.add_argument("--zram-generator-config", metavar="FILE",
                   help="create the devices a zram-generator.conf (and its .conf.d/ drop-ins) describes")
    p.add_argument("--listen", metavar="ADDR", action="append", default=[],
                   help="unix:PATH or tcp:[HOST:]PORT (repeatable; default unix:%s)"
                   % config_mod.default_listen().path)
    p.add_argument("--control", metavar="PATH", help="control socket (default %s, or $UZRAM_CONTROL)"
                   % default_control_path())
    p.add_argument("--device", metavar="NAME[:ATTR=VALUE,...]", action="append", default=[],
                   help="create a device and store attributes in order, e.g. zram0:comp_algorithm=zstd,disksize=1G")
    p.add_argument("--metrics", metavar="ADDR",
                   help="serve Prometheus metrics over HTTP at tcp:[HOST:]PORT (loopback by default) or unix:PATH")
    p.add_argument("--fuse", metavar="DIR", help="mount the sysfs-like attribute tree (and dev/zramN files) at DIR")
    p.add_argument("--tls", choices=tls_mod.MODES,
                   help="STARTTLS policy for TCP, as nbdkit's (default: require with --tls-certificates; "
                   "TCP without TLS needs an explicit --tls off)")
    p.add_argument("--tls-certificates", metavar="DIR",
                   help="ca-cert.pem, server-cert.pem and server-key.pem (nbdkit's layout)")
    p.add_argument("--tls-verify-peer", action="store_true",
                   help="require client certificates signed by the directory's ca-cert.pem")
    for title, options in OPTION_GROUPS:
        group = p.add_argument_group(title)
        for flag, metavar, help_text in options:
            if metavar is None:
                group.add_argument(flag, action="store_true", help=help_text)
            else:
                group.add_argument(flag, metavar=metavar, help=help_text)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the attach hint")
    p.add_argument("--version", action="version", version=f"uzramd from uzram {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        limits = {k: v for k in config_mod.LIMIT_KEYS if (v := getattr(args, k)) is not None}
        cfg = config_mod.build(args.config, args.listen, args.control, args.device, args.fuse, limits,
                               args.zram_generator_config)
        if args.metrics:
            cfg.metrics = config_mod.parse_listen(args.metrics)
        config_mod.apply_tls(cfg, args.tls, args.tls_certificates, args.tls_verify_peer)
        tls_settings(cfg)  # certificate and policy errors before anything starts
        swap, reserve_setting = config_mod.swap_mode(cfg, args.swap, args.reserve)
        cfg.swap = swap
        cfg.dedup = config_mod.dedup_mode(cfg, args.dedup, swap)
    except config_mod.ConfigError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 2
    per_device = args.process_per_device or cfg.process_per_device
    if per_device and (why := procmode.refusal(cfg)) is not None:
        print(f"uzramd: {why}", file=sys.stderr)
        return 2
    if cfg.fuse is not None and importlib.util.find_spec("pyfuse3") is None:
        print("uzramd: --fuse needs pyfuse3: pip install 'uzram[fuse]' "
              "(it builds against libfuse3-dev, with pkg-config and a C compiler)", file=sys.stderr)
        return 2
    level = {0: cfg.log_level, 1: "info"}.get(args.verbose, "debug")
    setup(level)
    for warning in cfg.warnings:
        event(log, logging.WARNING, warning)
    hardening.apply(lock=swap)
    try:
        if per_device:
            return trio.run(procmode.run, cfg, args.quiet, level, swap, reserve_setting)
        return trio.run(run, cfg, args.quiet, reserve_setting)
    except config_mod.ConfigError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"uzramd: {e}", file=sys.stderr)
        return 1
