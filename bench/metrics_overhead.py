"""Per-request cost of the metering wrapper (uzram.daemon.metrics.MeteredExport):
the same 4 KiB reads and writes through ZramExport directly and through the
wrapper, in-process, alternating rounds; fio numbers over NBD are in the README.

    python bench/metrics_overhead.py [--requests 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Protocol, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uzram.daemon.export import ZramExport  # noqa: E402
from uzram.daemon.metrics import ExportStats, MeteredExport  # noqa: E402
from uzram.nbd import BlockExport  # noqa: E402
from uzram.zram import ZramDevice  # noqa: E402

PAGE = 4096


class PageIO(Protocol):
    """What the measurement calls: both exports' synchronous reads and writes."""
    def read(self, offset: int, length: int) -> object: ...
    def write(self, offset: int, data: memoryview, fua: bool) -> object: ...


def per_request_ns(export: PageIO, offsets: list[int], page: memoryview, rw: str) -> float:
    t = time.perf_counter_ns()
    if rw == "read":
        read = export.read
        for off in offsets:
            read(off, PAGE)
    else:
        write = export.write
        for off in offsets:
            write(off, page, False)
    return (time.perf_counter_ns() - t) / len(offsets)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dev = ZramDevice()
    dev.store("disksize", str(256 << 20))
    plain = ZramExport(dev)
    # ZramExport serves BlockExport at run time; its declared read() returns the narrower list[bytes]
    metered = MeteredExport(cast(BlockExport, plain), ExportStats())
    rng = random.Random(1)
    offsets = [rng.randrange(256 << 20 >> 12) * PAGE for _ in range(args.requests)]
    page = memoryview(os.urandom(PAGE // 2) + bytes(PAGE // 2))
    per_request_ns(plain, offsets, page, "write")
    for rw in ("write", "read"):
        rows: dict[str, list[float]] = {"direct": [], "metered": []}
        for _ in range(args.rounds):
            rows["direct"].append(per_request_ns(plain, offsets, page, rw))
            rows["metered"].append(per_request_ns(metered, offsets, page, rw))
        d, m = statistics.median(rows["direct"]), statistics.median(rows["metered"])
        print(f"4k {rw}: direct {d:.0f} ns/request, metered {m:.0f} ns/request, +{m - d:.0f} ns ({m / d - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
