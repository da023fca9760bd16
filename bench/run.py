"""uzram's benchmark, side by side with its anchors in one run.

Anchors: nbdkit's ``memory`` plugin (the ceiling for an NBD server here) over
the same UNIX-socket transport, and the host kernel's zram (compression
ratio, memory, and its block-device speed as a reference) when root can use
zram0. Rounds alternate the servers so that background noise on a shared
machine hits both alike; medians are reported, and uzram as ratios.

    python bench/run.py [--rounds 3] [--seconds 5] [--algorithm lz4] [--json OUT] [--plots [DIR]]
    python bench/run.py --from-json OUT --plots [DIR]     # plots of a saved run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus, ratios  # noqa: E402
from uzram.ctl.client import Client  # noqa: E402

MiB = 1 << 20
AREA = 512 * MiB          # the part of each export fio touches
JOBS = [                  # name, rw, block size
    ("4k randwrite", "randwrite", "4k"),
    ("4k randread", "randread", "4k"),
    ("128k write", "write", "128k"),
    ("128k read", "read", "128k"),
]


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench: missing {' '.join(missing)} (scripts/setup installs them as root)")


def wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    for _ in range(1000):
        if path.exists():
            return
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited with {proc.returncode}")
        time.sleep(0.01)
    sys.exit(f"bench: {what} did not start")


class Server:
    def __init__(self, name: str, cmd: list[str], sock: Path, extra: list[Path] = ()) -> None:  # type: ignore[assignment]
        self.name = name
        self.sock = sock
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in [sock, *extra]:
            wait_for(p, self.proc, name)

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def fio(target: dict[str, str | None], rw: str, bs: str, seconds: int, workdir: Path) -> dict[str, float]:
    """One fio job at QD16; returns IOPS, MB/s and mean completion latency (µs)."""
    opts = {
        "rw": rw, "bs": bs, "iodepth": "16", "size": str(AREA), "time_based": "1",
        "runtime": str(seconds), "ramp_time": "1", "norandommap": "1", "randrepeat": "0",
        "buffer_compress_percentage": "60", "refill_buffers": "1", "buffer_compress_chunk": "4096",
        "percentile_list": ":".join(str(p) for p in PERCENTILES),
        **target,
    }
    opts = {k: v for k, v in opts.items() if v is not None}
    job = workdir / "job.fio"
    job.write_text("[job]\n" + "".join(f"{k}={v}\n" for k, v in opts.items()))
    out = workdir / "fio.json"
    res = subprocess.run(["fio", "--output-format=json", f"--output={out}", str(job)],
                         capture_output=True, text=True, timeout=seconds * 10 + 60)
    if res.returncode:
        sys.exit(f"bench: fio failed: {res.stderr or res.stdout}")
    j = json.loads(out.read_text())["jobs"][0]
    side = j["read"] if "read" in rw else j["write"]
    pct = {float(k): v / 1e3 for k, v in side["clat_ns"].get("percentile", {}).items()}
    return {"iops": side["iops"], "mbps": side["bw_bytes"] / 1e6, "lat_us": side["clat_ns"]["mean"] / 1e3,
            "clat_pct_us": pct}


PERCENTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9)


def nbd_target(server: Server, export: str) -> dict[str, str]:
    return {"ioengine": "nbd", "uri": server.uri(export)}


def prefill(target: dict[str, str], workdir: Path) -> None:
    """Write the whole area once, so that reads find data."""
    fio(target | {"time_based": None, "runtime": None, "ramp_time": None}, "write", "1m", 60, workdir)


def timed(cmd: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.monotonic() - t


def mm_stat_text(ctl: Path, device: str = "zram0") -> list[int]:
    with Client(ctl) as c:
        return [int(x) for x in c.show(device, "mm_stat").split()]


def kernel_zram(alg: str) -> Path | None:
    """The host's zram0 configured for comparison, or None when unavailable."""
    sysfs = Path("/sys/block/zram0")
    if os.geteuid() != 0 or not sysfs.exists():
        return None
    if (sysfs / "initstate").read_text().strip() != "0":
        return None
    if alg not in (sysfs / "comp_algorithm").read_text().replace("[", " ").replace("]", " ").split():
        return None
    (sysfs / "reset").write_text("1")
    (sysfs / "comp_algorithm").write_text(alg)
    (sysfs / "disksize").write_text(str(1 << 30))
    return sysfs


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--algorithm", default="lz4")
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plots", type=Path, nargs="?", const=HERE.parent / "docs", metavar="DIR",
                    help="also measure the compression ratio per algorithm and write PNG plots to DIR (docs/)")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="do not measure: print the report and write the plots of a saved --json result")
    args = ap.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        print(report(results))
        if args.plots:
            _plots(results, args.plots)
        return 0
    need("fio", "nbdkit", "nbdcopy")

    work = Path(tempfile.mkdtemp(prefix="uzram-bench-"))
    results: dict = {"algorithm": args.algorithm, "rounds": args.rounds, "seconds": args.seconds,
                     "cpus": os.cpu_count(), "fio": {}, "nbdcopy": {}, "memory": {},
                     "loadavg": [os.getloadavg()[0]]}
    print(f"bench: workdir {work}; building the swap-like corpus ...", file=sys.stderr)
    img = work / "corpus.img"
    pages = corpus.build(img, args.corpus_mib)
    corpus_bytes = pages * corpus.PAGE
    results["corpus_bytes"] = corpus_bytes

    # fio uses nbdkit's default export and uzram's zram0; the corpus copies use
    # exports of exactly the corpus size (nbdkit's second instance, zram1/zram2)
    nbdkit = Server("nbdkit", ["nbdkit", "-f", "-U", str(work / "kit.sock"), "memory", "1G"], work / "kit.sock")
    kit2 = Server("nbdkit", ["nbdkit", "-f", "-U", str(work / "kit2.sock"), "memory", str(corpus_bytes)],
                  work / "kit2.sock")
    uzram = Server("uzramd", [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{work / 'uz.sock'}",
                              "--control", str(work / "uz.ctl"),
                              "--device", f"zram0:comp_algorithm={args.algorithm},disksize=1G",
                              "--device", f"zram1:comp_algorithm={args.algorithm},disksize={corpus_bytes}",
                              "--device", f"zram2:comp_algorithm={args.algorithm},disksize={corpus_bytes}"],
                   work / "uz.sock", [work / "uz.ctl"])
    kz = kernel_zram(args.algorithm)
    try:
        base_rss = uzram.rss()
        # -- compression and memory: the corpus into uzram (zram1) and the kernel's zram0
        timed(["nbdcopy", "--allocated", str(img), uzram.uri("zram1")])  # zero pages are written too
        mm = mm_stat_text(work / "uz.ctl", "zram1")
        rss_loaded = uzram.rss()
        results["memory"]["uzram"] = {
            "orig": mm[0], "compr": mm[1], "mem_used": mm[2], "same_pages": mm[5], "huge_pages": mm[7],
            "ratio_compr": mm[0] / max(mm[1], 1), "ratio_mem": mm[0] / max(mm[2], 1),
            "rss_growth": rss_loaded - base_rss, "rss_per_stored_byte": (rss_loaded - base_rss) / max(mm[0], 1),
        }
        if kz is not None:
            subprocess.run(["dd", f"if={img}", "of=/dev/zram0", "bs=1M", "oflag=direct", "status=none"], check=True)
            k = [int(x) for x in (kz / "mm_stat").read_text().split()]
            results["memory"]["kernel"] = {"orig": k[0], "compr": k[1], "mem_used": k[2], "same_pages": k[5],
                                           "huge_pages": k[7], "ratio_compr": k[0] / max(k[1], 1),
                                           "ratio_mem": k[0] / max(k[2], 1)}
            (kz / "reset").write_text("1")
            (kz / "comp_algorithm").write_text(args.algorithm)
            (kz / "disksize").write_text(str(1 << 30))

        # -- nbdcopy of the corpus (zero pages included), both directions, alternating servers
        rows: dict[str, list] = {"nbdkit": [], "uzramd": []}
        for _ in range(args.rounds):
            for server, export in ((kit2, ""), (uzram, "zram2")):
                w = timed(["nbdcopy", "--allocated", str(img), server.uri(export)])
                r = timed(["nbdcopy", server.uri(export), "null:"])
                rows[server.name].append({"write": corpus_bytes / w / 1e6, "read": corpus_bytes / r / 1e6})
        for name, v in rows.items():
            results["nbdcopy"][name] = {k: median(v, k) for k in ("write", "read")}

        # -- fio
        targets = {"nbdkit": nbd_target(nbdkit, ""), "uzram": nbd_target(uzram, "zram0")}
        if kz is not None:
            targets["kernel zram"] = {"ioengine": "libaio", "direct": "1", "filename": "/dev/zram0"}
        rows_pct: dict[str, dict[str, list]] = {}
        for t in targets.values():
            prefill(t, work)
        for name, rw, bs in JOBS:
            rows: dict[str, list] = {k: [] for k in targets}
            for _ in range(args.rounds):
                for server, target in targets.items():
                    rows[server].append(fio(target, rw, bs, args.seconds, work))
            results["fio"][name] = {s: {k: median(v, k) for k in ("iops", "mbps", "lat_us")} for s, v in rows.items()}
            rows_pct[name] = {s: [r["clat_pct_us"] for r in v] for s, v in rows.items()}
            print(f"bench: {name}: " + ", ".join(f"{s} {results['fio'][name][s]['iops']:.0f} IOPS"
                                              for s in targets), file=sys.stderr)
        # -- fio keeps one round's latency percentiles per server (the median round's)
        for name in results["fio"]:
            for server in targets:
                results["fio"][name][server]["clat_pct_us"] = _median_pct(rows_pct[name][server])
        if args.plots:
            if kz is not None:
                (kz / "reset").write_text("1")
            print("bench: compression ratio per algorithm ...", file=sys.stderr)
            results["ratios"] = ratios.measure(img)
    finally:
        uzram.stop()
        nbdkit.stop()
        kit2.stop()
        if kz is not None:
            (kz / "reset").write_text("1")
        shutil.rmtree(work, ignore_errors=True)

    results["loadavg"].append(os.getloadavg()[0])
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plots:
        _plots(results, args.plots)
    return 0


def _median_pct(rounds: list[dict[float, float]]) -> dict[str, float]:
    """Per percentile, the median over rounds (JSON keys are strings)."""
    keys = sorted({k for r in rounds for k in r})
    return {str(k): statistics.median(r[k] for r in rounds if k in r) for k in keys}


def _plots(results: dict, directory: Path) -> None:
    from bench import plots
    for path in plots.write_all(results, directory):
        print(f"bench: wrote {path}", file=sys.stderr)


def report(r: dict) -> str:
    lines = [f"uzram benchmark ({r['algorithm']}, {r['rounds']} rounds of {r['seconds']} s, "
             f"{r['cpus']} CPUs, medians; fio nbd engine QD16 over a UNIX socket)", "",
             "| workload | nbdkit memory | uzram | uzram / nbdkit | kernel zram (block device) |",
             "|---|---|---|---|---|"]
    for name, row in r["fio"].items():
        kit, uz = row["nbdkit"], row["uzram"]
        unit = "IOPS" if name.startswith("4k") else "MB/s"
        key = "iops" if unit == "IOPS" else "mbps"
        kern = row.get("kernel zram")
        lines.append(f"| fio {name} | {kit[key]:,.0f} {unit} | {uz[key]:,.0f} {unit} | **{uz[key] / kit[key]:.2f}×** | "
                     + (f"{kern[key]:,.0f} {unit}" if kern else "n/a") + " |")
    for direction in ("write", "read"):
        kit, uz = r["nbdcopy"]["nbdkit"][direction], r["nbdcopy"]["uzramd"][direction]
        lines.append(f"| nbdcopy corpus {direction} | {kit:,.0f} MB/s | {uz:,.0f} MB/s | **{uz / kit:.2f}×** | |")
    m = r["memory"]["uzram"]
    lines += ["", f"Corpus: {r['corpus_bytes'] >> 20} MiB of a Python process's anonymous memory.", "",
              "| | uzram | kernel zram |", "|---|---|---|"]
    k = r["memory"].get("kernel")
    for label, key, fmt in (("orig / compr_data_size", "ratio_compr", "{:.2f}"),
                            ("orig / mem_used_total", "ratio_mem", "{:.2f}"),
                            ("same-filled pages", "same_pages", "{}"), ("huge pages", "huge_pages", "{}")):
        lines.append(f"| {label} | {fmt.format(m[key])} | " + (fmt.format(k[key]) if k else "n/a") + " |")
    lines.append(f"| daemon RSS growth / stored byte | {m['rss_per_stored_byte']:.3f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
