"""uzram's benchmark: every ratio of the performance targets, in one run.

uzram over NBD is measured against its anchors on a seeded swap-like corpus
(bench/corpus.py): the host kernel's zram0 (when it exists and is unused:
disksize 0; it is configured for the run and always reset after it, also on
an error or an interrupt) and nbdkit's memory plugin over the same
UNIX-socket transport. Every round runs every measure, the servers in a
rotating order, so that background noise on a shared machine hits them alike;
medians over the rounds are reported. Output: a markdown table, with each
ratio's target and a pass/fail mark, and the whole result as JSON.

    python bench/run.py [--quick] [--rounds 3] [--seconds 5] [--corpus-mib 256] [--json OUT] [--plots [DIR]]
    python bench/run.py --from-json OUT [--plots [DIR]]     # the report and plots of a saved run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus, ratios, report  # noqa: E402
from bench.targets import (  # noqa: E402
    KERNEL_SYSFS, Server, copy_rate, dd_cmd, kernel_configure, kernel_fio, kernel_reset, kernel_zram_unavailable,
    nbd_fio, nbdcopy_cmd, need, run_fio, signals_interrupt, together, uzramd, with_cpu)
from uzram.ctl.client import Client  # noqa: E402

SEED = 7
FIO_JOBS = {   # name: fio options; the order within a round (writes of fio's data come last)
    "128k read": {"rw": "read", "bs": "128k", "iodepth": "16"},
    "4k randread": {"rw": "randread", "bs": "4k", "iodepth": "16"},
    "4k randread QD1": {"rw": "randread", "bs": "4k", "iodepth": "1"},
    "4k randwrite": {"rw": "randwrite", "bs": "4k", "iodepth": "16", "buffer_compress_percentage": "55",
                     "buffer_compress_chunk": "4096", "refill_buffers": "1"},
}
KEYS = ("iops", "mbps", "lat_us", "machine_cpus", "daemon_cpus")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")

    def version(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return f"{cmd[0]} (version unknown)"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "tools": {"fio": version("fio", "--version"), "nbdcopy": version("nbdcopy", "--version"),
                      "nbdkit": version("nbdkit", "--version")}}


def baseline_label(tree: Path | None) -> str | None:
    """``tree``'s commit, as the report names the baseline."""
    if tree is None:
        return None
    if not (tree / "uzram" / "daemon").is_dir():
        sys.exit(f"bench: --baseline {tree}: no uzram package there")
    r = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h, %cs"], capture_output=True, text=True)
    return r.stdout.strip() or tree.name


def mm_stat(ctl: Path, device: str = "zram0") -> list[int]:
    with Client(ctl) as c:
        return [int(x) for x in c.show(device, "mm_stat").split()]


def mm_row(mm: list[int]) -> dict[str, float]:
    return {"orig": mm[0], "compr": mm[1], "mem_used": mm[2], "mem_used_mib": mm[2] / (1 << 20),
            "same_pages": mm[5], "huge_pages": mm[7],
            "ratio_compr": mm[0] / max(mm[1], 1), "ratio_mem": mm[0] / max(mm[2], 1)}


def memory(img: Path, nbytes: int, alg: str, work: Path, kernel: bool) -> dict[str, Any]:
    """A fresh uzramd's RSS, and its RSS and mm_stat after storing the corpus,
    next to the kernel's mm_stat for the same bytes (left in zram0)."""
    uz = uzramd(work, "mem", [f"zram0:comp_algorithm={alg},disksize={nbytes}"])
    try:
        time.sleep(0.5)
        fresh = uz.rss()
        subprocess.run(nbdcopy_cmd(img, uz.uri("zram0")), check=True, capture_output=True)
        out: dict[str, Any] = {"uzram": {**mm_row(mm_stat(work / "mem.ctl")), "fresh_rss": fresh, "rss": uz.rss(),
                                         "rss_anon": uz.rss("RssAnon")}}
    finally:
        uz.stop()
    if kernel:
        kernel_configure(alg, nbytes)
        subprocess.run(dd_cmd(img, Path("/dev") / KERNEL_SYSFS.name), check=True)
        out["kernel"] = mm_row([int(x) for x in (KERNEL_SYSFS / "mm_stat").read_text().split()])
    return out


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rows) for k in KEYS if k in rows[0]}
    if "lat_pct_us" in rows[0]:   # per percentile, the median over rounds
        pcts = [r["lat_pct_us"] for r in rows]
        out["lat_pct_us"] = {p: statistics.median(r[p] for r in pcts if p in r) for p in pcts[0]}
    return out


def pair(a: Callable[[], dict[str, Any]], b: Callable[[], dict[str, Any]], each: str) -> Callable[[], dict[str, Any]]:
    """Run ``a`` and ``b`` at once: their summed rates, and each one's ``each``."""
    def run() -> dict[str, Any]:
        x, y = together(a, b)
        return {k: x[k] + y[k] for k in ("mbps", "iops")} | {"each": [x[each], y[each]]}
    return run


def measure(args: argparse.Namespace, img: Path, nbytes: int, work: Path, kernel: bool) -> dict[str, Any]:
    """The rounds: per round the two-device measures, then every job on every server."""
    seconds, ramp = args.seconds, args.ramp
    kit = Server("nbdkit", ["nbdkit", "-f", "-U", str(work / "kit.sock"), "memory", str(nbytes)], work / "kit.sock")
    specs = [f"zram{i}:comp_algorithm={args.algorithm},disksize={nbytes}" for i in (0, 1)]
    uz = uzramd(work, "uz", specs if args.multi_mode == "one" else specs[:1])
    # several devices on several cores: each device in its own process (--process-per-device)
    multi_uz = uzramd(work, "multi", specs, extra=["--process-per-device"]) if args.multi_mode == "process" else uz
    base = (uzramd(work, "base", [f"zram0:comp_algorithm={args.algorithm},disksize={nbytes}"], tree=args.baseline)
            if args.baseline else None)
    try:
        dev = Path("/dev") / KERNEL_SYSFS.name
        fio_opts = {"uzram": nbd_fio(uz.uri("zram0")), "nbdkit": nbd_fio(kit.uri())}
        copy = {"uzram": nbdcopy_cmd(img, uz.uri("zram0")), "nbdkit": nbdcopy_cmd(img, kit.uri())}
        if base is not None:
            fio_opts[report.BASELINE] = nbd_fio(base.uri("zram0"))
            copy[report.BASELINE] = nbdcopy_cmd(img, base.uri("zram0"))
        if kernel:
            fio_opts["kernel zram"] = kernel_fio()
            copy["kernel zram"] = dd_cmd(img, dev)
        print("bench: storing the corpus everywhere ...", file=sys.stderr)
        for cmd in copy.values():   # (the two-device measures store it in both devices themselves)
            subprocess.run(cmd, check=True, capture_output=True, timeout=900)
        servers = list(fio_opts)
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        multi: dict[str, dict[str, list[dict[str, Any]]]] = {"128k write": {"one": [], "two": []},
                                                             "4k randread": {"one": [], "two": []}}
        size = {"size": str(nbytes)}

        def fio_on(export: str, tag: str) -> Callable[[], dict[str, Any]]:
            opts = {**nbd_fio(multi_uz.uri(export)), **FIO_JOBS["4k randread"], **size}
            return lambda: run_fio(opts, work / tag, seconds=seconds, ramp=ramp)

        def copy_to(export: str) -> Callable[[], dict[str, Any]]:
            return lambda: copy_rate(nbdcopy_cmd(img, multi_uz.uri(export)), nbytes, seconds)
        for d in ("a", "b"):
            (work / d).mkdir(exist_ok=True)
        for rnd in range(args.rounds):
            # two devices, each with its own client, against one alone (this also restores the corpus in both)
            # (with the CPUs in use: on a small machine the clients take their share)
            pid = multi_uz.proc.pid
            m = multi["128k write"]
            m["one"].append(with_cpu(copy_to("zram0"), pid)())
            m["two"].append(with_cpu(pair(copy_to("zram0"), copy_to("zram1"), "mbps"), pid)())
            m = multi["4k randread"]
            m["one"].append(with_cpu(fio_on("zram0", "a"), pid)())
            m["two"].append(with_cpu(pair(fio_on("zram0", "a"), fio_on("zram1", "b"), "iops"), pid)())
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for s in order:
                raw.setdefault("128k write", {}).setdefault(s, []).append(copy_rate(copy[s], nbytes, seconds))
            for job, opts in FIO_JOBS.items():
                for s in order:
                    res = run_fio({**fio_opts[s], **opts, **size}, work, seconds=seconds, ramp=ramp)
                    raw.setdefault(job, {}).setdefault(s, []).append(res)
            print(f"bench: round {rnd + 1}/{args.rounds}: " + "; ".join(
                f"{job} " + ", ".join(f"{s} {raw[job][s][-1]['iops']:,.0f}" for s in servers) for job in raw)
                + " IOPS", file=sys.stderr)
    finally:
        uz.stop()
        if multi_uz is not uz:
            multi_uz.stop()
        kit.stop()
        if base is not None:
            base.stop()
    return {"fio": {job: {s: medians(v) for s, v in per.items()} for job, per in raw.items()},
            "multi": {job: {k: medians(v) for k, v in per.items()} for job, per in multi.items()},
            "raw": {"fio": raw, "multi": multi}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke test: a 16 MiB corpus, one round of 1 s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5, help="per measure and server in a round")
    ap.add_argument("--ramp", type=float, default=1, help="fio's ramp_time, before each measure")
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--algorithm", default="lz4")
    ap.add_argument("--no-kernel", action="store_true", help="leave the host's zram0 alone")
    ap.add_argument("--baseline", type=Path, metavar="TREE",
                    help="also measure the uzram of another checkout (e.g. a git worktree of an older commit) "
                         "in the same interleaved rounds, and report new/old ratios")
    ap.add_argument("--multi-mode", choices=("process", "one"), default="process",
                    help="the two-device measures: each device in its own process (--process-per-device, "
                         "the default) or both in one")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plots", type=Path, nargs="?", const=HERE.parent / "docs", metavar="DIR",
                    help="also measure the compression ratio per algorithm and write PNG plots to DIR (docs/)")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="do not measure: print the report and write the plots of a saved --json result")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.ramp, args.corpus_mib = 1, 1, 0, 16
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(report.markdown(saved))
        if args.plots:
            _plots(saved, args.plots)
        return 0
    need("fio", "nbdkit", "nbdcopy", "dd")
    unavailable = "--no-kernel" if args.no_kernel else kernel_zram_unavailable(args.algorithm)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "load": {"start": list(os.getloadavg())}, "algorithm": args.algorithm,
        "rounds": args.rounds, "seconds": args.seconds, "quick": args.quick, "kernel": unavailable,
        "baseline": baseline_label(args.baseline), "multi_mode": args.multi_mode}
    work = Path(tempfile.mkdtemp(prefix="uzram-bench-"))
    kernel = unavailable is None
    try:
        with signals_interrupt():
            print(f"bench: building the {args.corpus_mib} MiB corpus in {work} ...", file=sys.stderr)
            img = work / "corpus.img"
            pages = corpus.build(img, args.corpus_mib, SEED)
            nbytes = pages * corpus.PAGE
            results["corpus"] = {"bytes": nbytes, "pages": pages, "seed": SEED, "census": corpus.census(pages, SEED)}
            print("bench: memory ...", file=sys.stderr)
            results["memory"] = memory(img, nbytes, args.algorithm, work, kernel)
            results.update(measure(args, img, nbytes, work, kernel))
            if args.plots:
                if kernel:
                    kernel_reset()
                print("bench: compression ratio per algorithm ...", file=sys.stderr)
                results["ratios"] = ratios.measure(img)
    finally:
        if kernel:
            kernel_reset()
        shutil.rmtree(work, ignore_errors=True)
    results["load"]["end"] = list(os.getloadavg())
    results["loadavg"] = [results["load"]["start"][0], results["load"]["end"][0]]
    results["rows"] = report.rows(results)
    print(report.markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plots:
        _plots(results, args.plots)
    return 0


def _plots(results: dict[str, Any], directory: Path) -> None:
    from bench import plots
    for path in plots.write_all(results, directory):
        print(f"bench: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        sys.exit(f"bench: interrupted ({e or 'SIGINT'}); the servers are stopped, and zram0 is reset if the run used it")
