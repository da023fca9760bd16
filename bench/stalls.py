"""Event-loop stalls: the longest QD1 4 KiB read on a second device while a
long operation runs on a full 1 GiB device.

    python bench/stalls.py [--mib 1024] [--dir DIR] [--json OUT]

A probe thread reads 4 KiB pages of zram1 one at a time, for the whole run,
and logs each read's start and latency. For each operation on zram0 the
stall is the longest probe read that overlapped it: the time the daemon's
event loop was unavailable to another client (plus one read's own cost).
The first row, a second with no operation, shows the noise of the machine
(other processes, CPython's full garbage collections).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.targets import Server  # noqa: E402
from tests.nbdclient import NBDClient  # noqa: E402
from uzram.ctl.client import Client  # noqa: E402

PAGE = 4096
CHUNK = 8 << 20


def pages(n: int, seed: int, every_other_zero: bool = False) -> bytes:
    """``n`` pages compressing 1.3x-10x: a random head of varying length, then zeros."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, PAGE), dtype=np.uint8)
    heads = rng.integers(300, 3200, size=n)
    data[np.arange(PAGE)[None, :] >= heads[:, None]] = 0
    data[:, 0] = 1  # never same-filled
    if every_other_zero:
        data[::2] = 0
    return data.tobytes()


def fill(sock: Path, size: int, every_other_zero: bool = False) -> None:
    with NBDClient(sock, "zram0") as c:
        for off in range(0, size, CHUNK):
            c.pwrite(off, pages(CHUNK // PAGE, off // CHUNK, every_other_zero))


class Probe(threading.Thread):
    """QD1 4 KiB reads on zram1, each logged as (start, latency)."""

    def __init__(self, sock: Path, size: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.size = sock, size
        self.log: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with NBDClient(self.sock, "zram1") as c:
            n = self.size // PAGE
            i = 0
            while not self.stop.is_set():
                t0 = time.perf_counter()
                c.pread((i % n) * PAGE, PAGE)
                self.log.append((t0, time.perf_counter() - t0))
                i += 7

    def worst(self, start: float, end: float) -> float:
        """The longest read that overlapped [start, end]."""
        return max((lat for t0, lat in self.log if t0 <= end and t0 + lat >= start), default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="size of the full device")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="filesystem for the backing file")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    size = args.mib << 20
    work = Path(tempfile.mkdtemp(prefix="uzram-stalls-"))
    disk = Path(tempfile.mkdtemp(prefix="uzram-stalls-", dir=args.dir))
    backing = disk / "backing.img"
    with open(os.open(backing, os.O_CREAT | os.O_WRONLY, 0o600), "wb") as f:   # private, as required
        f.truncate(size)
    sock, ctl = work / "uz.sock", work / "uz.ctl"
    dev0 = f"zram0:backing_dev={backing},recomp_algorithm=algo=zstd,disksize={size}"
    uz = Server("uzramd", [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{sock}",
                           "--control", str(ctl), "--device", dev0, "--device", "zram1:disksize=64M"],
                sock, [ctl])
    rows: list[tuple[str, float, float]] = []
    try:
        with NBDClient(sock, "zram1") as c:
            for off in range(0, 64 << 20, CHUNK):
                c.pwrite(off, pages(CHUNK // PAGE, 1000 + off // CHUNK))
        probe = Probe(sock, 64 << 20)
        probe.start()

        def measure(what: str, op) -> None:  # type: ignore[no-untyped-def]
            time.sleep(0.2)
            t0 = time.perf_counter()
            op()
            t1 = time.perf_counter()
            time.sleep(0.05)
            rows.append((what, t1 - t0, probe.worst(t0, t1)))
            print(f"{what:<34} {t1 - t0:8.3f} s  stall {probe.worst(t0, t1) * 1e3:8.1f} ms", flush=True)

        def store(attr: str, value: str, dev: str = "zram0") -> None:
            with Client(ctl) as c:
                c.store(dev, attr, value)

        def trim() -> None:
            with NBDClient(sock, "zram0") as c:
                c.trim(0, size)
                assert c.pread(size // 2, PAGE) == bytes(PAGE)

        fill(sock, size)
        measure("nothing (1 s idle: the machine's noise)", lambda: time.sleep(1))
        measure("mem_limit, 100,000 digits", lambda: store("mem_limit", "9" * 100_000, "zram1"))
        measure("idle all", lambda: store("idle", "all"))
        measure("recompress type=idle max_pages=1000", lambda: store("recompress", "type=idle max_pages=1000"))
        fill(sock, size, every_other_zero=True)
        measure("compact (half the objects freed)", lambda: store("compact", "1"))
        store("idle", "all")
        measure("writeback idle (half the pages)", lambda: store("writeback", "idle"))
        fill(sock, size)
        measure("TRIM of the full device", trim)
        fill(sock, size)
        measure("reset of the full device", lambda: store("reset", "1"))
        probe.stop.set()
        probe.join()
        base = sorted(lat for _, lat in probe.log)
        print(f"probe reads: {len(base)}, median {base[len(base) // 2] * 1e6:.0f} µs")
    finally:
        uz.stop()
        backing.unlink(missing_ok=True)
    print("\n| operation (1 GiB device) | duration | longest 4 KiB read on zram1 |\n|---|---|---|")
    for what, dur, stall in rows:
        print(f"| {what} | {dur:.2f} s | {stall * 1e3:.1f} ms |")
    if args.json:
        args.json.write_text(json.dumps([{"op": w, "seconds": d, "stall_ms": s * 1e3} for w, d, s in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
