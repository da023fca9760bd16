"""TLS cost, and the plaintext path against an older revision, back to back.

fio's nbd engine, 4 KiB random reads and writes at QD16, one connection, on
one uzramd zram0 (lz4) per variant:

- ``before``: plaintext over a UNIX socket, uzramd from ``--before REV`` (a
  ``git archive`` of that revision; skipped without it)
- ``plain-unix``: plaintext over a UNIX socket, this tree
- ``plain-tcp``: plaintext over loopback TCP (``--tls off``), this tree
- ``tls-tcp``: TLS over loopback TCP (``--tls require``), this tree

Rounds alternate the variants; medians are printed, of IOPS and of the
server's CPU time per request (steadier than IOPS on a busy machine).  Test certificates are
made with openssl in a temporary directory.

    python bench/tls.py [--before HEAD~1] [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.targets import Server, cpu_seconds, need, run_fio  # noqa: E402
from tests.tlscerts import make_certs  # noqa: E402

MiB = 1 << 20
AREA = {"size": str(512 * MiB)}   # the part of each export fio touches
BUFFERS = {"buffer_compress_percentage": "60", "refill_buffers": "1", "buffer_compress_chunk": "4096"}


def prefill(target: dict[str, str], work: Path) -> None:
    """Write the whole area once, so that reads find data."""
    run_fio({**target, **AREA, **BUFFERS, "rw": "write", "bs": "1m", "iodepth": "16", "time_based": "0"},
            work, seconds=600, ramp=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tree: Path, work: Path, tag: str, *args: str) -> Server:
    env_tree = str(tree)
    sock = work / f"{tag}.sock"
    ctl = work / f"{tag}.ctl"
    cmd = ["env", f"PYTHONPATH={env_tree}", sys.executable, "-m", "uzram.daemon", "-q",
           "--listen", f"unix:{sock}", "--control", str(ctl),
           "--device", "zram0:comp_algorithm=lz4,disksize=1G", *args]
    return Server(tag, cmd, sock, [ctl])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", metavar="REV", help="git revision to compare the plaintext path with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    args = p.parse_args()
    need("fio", "openssl", "git")
    work = Path(tempfile.mkdtemp(prefix="uzbench-tls-"))
    top = HERE.parent
    certs = make_certs(work / "pki")
    servers: dict[str, tuple[Server, dict[str, str]]] = {}
    try:
        if args.before:
            old = work / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(top), "archive", args.before, "uzram"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            s = start(old, work, "before")
            servers["before"] = (s, {"ioengine": "nbd", "uri": s.uri("zram0")})
        s = start(top, work, "plain-unix")
        servers["plain-unix"] = (s, {"ioengine": "nbd", "uri": s.uri("zram0")})
        port = free_port()
        s = start(top, work, "plain-tcp", "--listen", f"tcp:127.0.0.1:{port}", "--tls", "off")
        servers["plain-tcp"] = (s, {"ioengine": "nbd", "uri": f"nbd://127.0.0.1:{port}/zram0"})
        port2 = free_port()
        s = start(top, work, "tls-tcp", "--listen", f"tcp:127.0.0.1:{port2}",
                  "--tls-certificates", str(certs.server))
        # fio cannot pass tls-certificates (a local file in a URI): skip verification
        servers["tls-tcp"] = (s, {"ioengine": "nbd",
                                  "uri": f"nbds://127.0.0.1:{port2}/zram0?tls-verify-peer=false"})
        for _, target in servers.values():
            prefill(target, work)
        rows: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for rw in ("randwrite", "randread"):
                for name, (server, target) in servers.items():
                    c0 = cpu_seconds(server.proc.pid)
                    iops = run_fio({**target, **AREA, **BUFFERS, "rw": rw, "bs": "4k", "iodepth": "16"},
                                   work, seconds=args.seconds, ramp=0)["iops"]
                    us = (cpu_seconds(server.proc.pid) - c0) / max(iops * args.seconds, 1) * 1e6
                    rows.setdefault((rw, name), []).append(iops)
                    cpu.setdefault((rw, name), []).append(us)
                    print(f"bench: round {r + 1} {rw} {name}: {iops:,.0f} IOPS, {us:.1f} µs CPU/request",
                          flush=True)
        print()
        print("| 4 KiB QD16 | " + " | ".join(servers) + " |")
        print("|---" * (len(servers) + 1) + "|")
        for rw in ("randwrite", "randread"):
            cells = [f"{statistics.median(rows[(rw, n)]):,.0f}" for n in servers]
            print(f"| {rw} IOPS | " + " | ".join(cells) + " |")
            cells = [f"{statistics.median(cpu[(rw, n)]):.1f}" for n in servers]
            print(f"| {rw} server CPU µs/request | " + " | ".join(cells) + " |")
    finally:
        for s, _ in servers.values():
            s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
