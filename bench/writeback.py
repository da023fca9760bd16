"""Writeback figures, in one run: throughput against dd writing the same bytes
to the same filesystem, memory returned by ``writeback idle`` + ``compact``,
and NBD read latency while a large writeback runs.

    python bench/writeback.py [--corpus-mib 256] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus  # noqa: E402
from bench.targets import Server, need  # noqa: E402
from uzram.ctl.client import Client  # noqa: E402


def store(ctl: Path, attr: str, value: str) -> None:
    with Client(ctl) as c:
        c.store("zram0", attr, value)


def stat(ctl: Path, attr: str) -> list[int]:
    with Client(ctl) as c:
        return [int(x) for x in c.show("zram0", attr).split()]


def fincore_bytes(path: Path) -> int:
    """Bytes of ``path`` resident in the page cache."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def fio_latency(uri: str, seconds: float, workdir: Path) -> dict[str, float]:
    job = workdir / "lat.fio"
    job.write_text(f"[lat]\nioengine=nbd\nuri={uri}\nrw=randread\nbs=4k\niodepth=1\nsize=128m\n"
                   f"time_based=1\nruntime={max(1, int(seconds))}\nnorandommap=1\n")
    out = workdir / "lat.json"
    subprocess.run(["fio", "--output-format=json", f"--output={out}", str(job)], check=True,
                   capture_output=True, timeout=600)
    clat = json.loads(out.read_text())["jobs"][0]["read"]["clat_ns"]
    pct = clat.get("percentile", {})
    return {"mean_us": clat["mean"] / 1e3, "p50_us": pct.get("50.000000", 0) / 1e3,
            "p99_us": pct.get("99.000000", 0) / 1e3, "max_us": clat["max"] / 1e3}


def touch_every_other_page(uri: str, size: int, workdir: Path) -> None:
    job = workdir / "touch.fio"
    job.write_text(f"[touch]\nioengine=nbd\nuri={uri}\nrw=read:4k\nbs=4k\niodepth=16\nsize={size}\n")
    subprocess.run(["fio", "--output=/dev/null", str(job)], check=True, capture_output=True, timeout=600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="filesystem for the backing file and dd")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    need("nbdcopy", "fio", "dd", "fincore")
    work = Path(tempfile.mkdtemp(prefix="uzram-wb-"))
    disk = Path(tempfile.mkdtemp(prefix="uzram-wb-", dir=args.dir))
    img = work / "corpus.img"
    pages = corpus.build(img, args.corpus_mib)
    backing = disk / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(2 << 30)
    backing.chmod(0o600)  # uzramd refuses a backing file others can read
    ctl = work / "uz.ctl"
    uz = Server("uzramd", [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{work / 'uz.sock'}",
                           "--control", str(ctl), "--device", f"zram0:backing_dev={backing},disksize=2G"],
                work / "uz.sock", [ctl])
    r: dict[str, Any] = {"corpus_pages": pages}
    try:
        subprocess.run(["nbdcopy", "--allocated", str(img), uz.uri("zram0")], check=True)
        base = {"rss": uz.rss(), "mm": stat(ctl, "mm_stat")}
        r["latency_idle"] = fio_latency(uz.uri("zram0"), 3, work)

        store(ctl, "idle", "all")
        # read every other page: those are no longer idle and stay in RAM, so
        # the writeback frees objects all over the pool (fragmentation)
        touch_every_other_page(uz.uri("zram0"), pages * corpus.PAGE, work)
        t = time.monotonic()
        store(ctl, "writeback", "idle")
        wb_s = time.monotonic() - t
        written = stat(ctl, "bd_stat")[2]
        after_wb = {"rss": uz.rss(), "mm": stat(ctl, "mm_stat"), "backing_cached": fincore_bytes(backing)}
        store(ctl, "compact", "1")
        after_compact = {"rss": uz.rss(), "mm": stat(ctl, "mm_stat")}

        dd_file = disk / "dd.img"
        t = time.monotonic()
        subprocess.run(["dd", f"if={img}", f"of={dd_file}", "bs=128k", f"count={written * 4096 // (128 << 10)}",
                        "status=none"], check=True)
        dd_s = time.monotonic() - t
        dd_file.unlink()
        # the same bytes made durable, as uzram's writeback makes them (fdatasync)
        t = time.monotonic()
        subprocess.run(["dd", f"if={img}", f"of={dd_file}", "bs=128k", f"count={written * 4096 // (128 << 10)}",
                        "conv=fdatasync", "status=none"], check=True)
        dd_sync_s = time.monotonic() - t
        dd_file.unlink()
        r["writeback"] = {"pages": written, "seconds": wb_s, "pages_per_s": written / wb_s,
                          "dd_seconds_same_bytes": dd_s, "ratio_to_dd": dd_s / wb_s,
                          "dd_fdatasync_seconds": dd_sync_s, "ratio_to_dd_fdatasync": dd_sync_s / wb_s}
        r["memory"] = {"before": base, "after_writeback": after_wb, "after_compact": after_compact}

        # latency while a large writeback runs: rewrite the data, then write it all back again
        subprocess.run(["nbdcopy", "--allocated", str(img), uz.uri("zram0")], check=True)
        store(ctl, "idle", "all")
        done = threading.Event()
        wb2: dict[str, float] = {}

        def writeback() -> None:
            t0 = time.monotonic()
            store(ctl, "writeback", "idle")
            wb2["seconds"] = time.monotonic() - t0
            done.set()
        th = threading.Thread(target=writeback)
        th.start()
        r["latency_during_writeback"] = fio_latency(uz.uri("zram0"), wb_s, work)
        th.join()
        r["latency_during_writeback"]["writeback_seconds"] = wb2["seconds"]
        r["full_writeback"] = {"pages": stat(ctl, "bd_stat")[0], "backing_cached": fincore_bytes(backing)}
    finally:
        uz.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


def report(r: dict[str, Any]) -> str:
    wb = r["writeback"]
    m = r["memory"]
    mib = 1 << 20
    li, lw = r["latency_idle"], r["latency_during_writeback"]
    return "\n".join([
        f"writeback idle: {wb['pages']} pages in {wb['seconds']:.2f} s = {wb['pages_per_s']:,.0f} pages/s; "
        f"dd of the same bytes to the same filesystem: {wb['dd_seconds_same_bytes']:.2f} s "
        f"-> writeback at **{wb['ratio_to_dd']:.2f}x** dd; dd conv=fdatasync {wb['dd_fdatasync_seconds']:.2f} s "
        f"-> **{wb['ratio_to_dd_fdatasync']:.2f}x**",
        f"backing file in the page cache (fincore): {m['after_writeback']['backing_cached'] / mib:.1f} MiB after "
        f"writing back {wb['pages'] * 4096 / mib:.0f} MiB; {r['full_writeback']['backing_cached'] / mib:.1f} MiB "
        f"after writing back all {r['full_writeback']['pages'] * 4096 / mib:.0f} MiB",
        f"daemon RSS: {m['before']['rss'] / mib:.0f} MiB before, {m['after_writeback']['rss'] / mib:.0f} MiB after "
        f"writeback, {m['after_compact']['rss'] / mib:.0f} MiB after compact "
        f"(mem_used_total {m['before']['mm'][2] / mib:.0f} -> {m['after_writeback']['mm'][2] / mib:.0f} -> "
        f"{m['after_compact']['mm'][2] / mib:.0f} MiB)",
        f"NBD 4k read latency (QD1): idle p50 {li['p50_us']:.0f} µs / p99 {li['p99_us']:.0f} µs; "
        f"during a {lw['writeback_seconds']:.1f} s writeback p50 {lw['p50_us']:.0f} µs / p99 {lw['p99_us']:.0f} µs / "
        f"max {lw['max_us']:.0f} µs",
    ])


if __name__ == "__main__":
    sys.exit(main())
