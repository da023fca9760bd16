"""Serve a MemExport over a UNIX socket (manual tests and benchmarks).

    .venv/bin/python -m tests.nbd.memserver --socket /tmp/u.sock --size 1G

SIGTERM/SIGINT stop it gracefully.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket

import trio

from uzram.nbd.export import StaticRegistry
from uzram.daemon.hardening import tune_malloc
from uzram.nbd.server import NBDServer

from .memexport import MemExport


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


async def main(args: argparse.Namespace) -> None:
    export = MemExport(parse_size(args.size), name=args.name, track=not args.no_track)
    server = NBDServer(StaticRegistry([export]))
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(args.socket)
    sock.listen(128)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listener, sock)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                server.stop()
                break
    sock.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--size", default="1G")
    p.add_argument("--name", default="mem")
    p.add_argument("--no-track", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--no-malloc-tuning", action="store_true")
    a = p.parse_args()
    if not a.no_malloc_tuning:
        tune_malloc()
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.WARNING)
    trio.run(main, a)
