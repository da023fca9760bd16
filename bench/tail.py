"""Where the tail of QD1 4 KiB reads comes from: uzramd beside baselines.

Every server holds the seeded corpus (bench/corpus.py) and serves fio's nbd
engine (QD1, 4 KiB random reads) in turn, in a rotating order per round so
that the machine's noise hits them alike. The servers:

- ``nbdkit``: nbdkit's memory plugin (C, multithreaded);
- ``echo``: bench/echo_nbd.py, a minimal pure-Python trio NBD server (what
  Python and trio can do);
- ``nbdkit-fifo``, ``echo-fifo``: the same under ``chrt -f 1``;
- ``uzramd`` variants: ``default``; ``swap`` (``--swap``); ``freeze`` (a
  full collection then ``gc.freeze()`` before each measure); ``nogc``
  (``gc.disable()``); ``fifo`` (the default daemon under ``chrt -f 1``:
  never preempted by ordinary processes); ``nice`` (``nice -n -10``);
  ``slice`` (SCHED_OTHER asking for a 0.1 ms time slice with
  sched_setattr, Linux 6.12+: an earlier EEVDF deadline after each wakeup).
  Each uzramd carries bench/probe/sitecustomize.py, which times every
  garbage collection during the measure.

Per server, medians over the rounds: latency percentiles, the requests
slower than 0.5 and 1 ms, and from /proc the server's CPU time and its time
waiting for a CPU (runqueue delay, schedstat) per request and its
involuntary context switches, and, for uzramd, the collections during the
measure (count per generation, the longest, the total, how many > 1 ms).

    python bench/tail.py [--servers nbdkit,echo,default,swap,freeze] [--rounds 3] [--seconds 5]
                         [--corpus-mib 256] [--fifo-client] [--json OUT]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus  # noqa: E402
from bench.targets import Server, nbdcopy_cmd, need, wait_for  # noqa: E402

FIFO = ["chrt", "-f", "1"]
UZRAMD_VARIANTS: dict[str, tuple[list[str], list[str], str]] = {   # name: prefix, daemon args, UZRAM_PROBE_GC
    "default": ([], [], ""),
    "swap": ([], ["--swap"], ""),
    "freeze": ([], [], "freeze"),
    "nogc": ([], [], "disable"),
    "fifo": (FIFO, [], ""),
    "nice": (["nice", "-n", "-10"], [], ""),
    "slice": ([sys.executable, __file__, "--exec-with-slice", "100000", "--"], [], ""),
}
SERVERS = ("nbdkit", "echo", "nbdkit-fifo", "echo-fifo", *UZRAMD_VARIANTS)
PCTS = (50, 90, 99, 99.9)
CLIENT_PREFIX: list[str] = []   # before fio's command: FIFO with --fifo-client


def exec_with_slice(slice_ns: int, cmd: list[str]) -> None:
    """sched_setattr(SCHED_OTHER, sched_runtime=slice_ns) on this process, then exec ``cmd``."""
    import ctypes

    class SchedAttr(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                    ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                    ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                    ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    attr = SchedAttr(size=ctypes.sizeof(SchedAttr), policy=0, runtime=slice_ns, nice=os.getpriority(os.PRIO_PROCESS, 0))
    if libc.syscall(314, 0, ctypes.byref(attr), 0) != 0:   # SYS_sched_setattr on x86-64
        sys.exit(f"sched_setattr: {os.strerror(ctypes.get_errno())}")
    os.execvp(cmd[0], cmd)


def task_stats(pid: int) -> dict[str, int]:
    """CPU time, runqueue wait (ns) and involuntary switches, summed over the threads."""
    out = {"run_ns": 0, "wait_ns": 0, "nonvol": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run, wait, _ = (task / "schedstat").read_text().split()
            status = (task / "status").read_text()
        except (OSError, ValueError):
            continue
        out["run_ns"] += int(run)
        out["wait_ns"] += int(wait)
        for line in status.splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                out["nonvol"] += int(line.split()[1])
    return out


class Target:
    """A running server holding the corpus, and how to measure it."""

    def __init__(self, name: str, work: Path, nbytes: int) -> None:
        self.name = name
        self.probe: Path | None = None
        sock = work / f"{name}.sock"
        prefix = FIFO if name.endswith("-fifo") else []
        if name.startswith("nbdkit"):
            self.server = Server(name, [*prefix, "nbdkit", "-f", "-U", str(sock), "memory", str(nbytes)], sock)
        elif name.startswith("echo"):
            self.server = Server(name, [*prefix, sys.executable, str(HERE / "echo_nbd.py"), str(sock), str(nbytes)],
                                 sock)
        else:
            prefix, args, gc_mode = UZRAMD_VARIANTS[name]
            self.probe = work / f"{name}.probe.json"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "probe"), str(HERE.parent)]),
                   "UZRAM_PROBE": str(self.probe), "UZRAM_PROBE_GC": gc_mode}
            ctl = work / f"{name}.ctl"
            cmd = [*prefix, sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{sock}",
                   "--control", str(ctl), "--device", f"zram0:comp_algorithm=lz4,disksize={nbytes}", *args]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            for p in (sock, ctl):
                wait_for(p, proc, name)
            self.server = Server.__new__(Server)
            self.server.name, self.server.sock, self.server.proc = name, sock, proc
        self.uri = self.server.uri("zram0" if self.probe else "")

    def load(self, img: Path) -> None:
        subprocess.run(nbdcopy_cmd(img, self.uri), check=True, capture_output=True, timeout=900)

    def measure(self, work: Path, nbytes: int, seconds: float) -> dict[str, Any]:
        pid = self.server.proc.pid
        if self.probe:
            os.kill(pid, signal.SIGUSR2)
            time.sleep(0.3 if UZRAMD_VARIANTS[self.name][2] == "freeze" else 0.05)
        res, (before, after, window) = fio_qd1(self.uri, work, nbytes, seconds, lambda: task_stats(pid))
        per_s = res["iops"] * window   # requests in the window the stats cover
        res.update({k + "_us_per_req": (after[k + "_ns"] - before[k + "_ns"]) / per_s / 1e3
                    for k in ("run", "wait")})
        res["nonvol_per_s"] = (after["nonvol"] - before["nonvol"]) / window
        if self.probe:
            self.probe.unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR1)
            for _ in range(500):
                if self.probe.exists():
                    break
                time.sleep(0.01)
            snap = json.loads(self.probe.read_text())
            cols = snap["collections"]
            res["gc"] = {f"gen{g}": sum(1 for c in cols if c[0] == g) for g in (0, 1, 2)}
            res["gc"].update({"max_ms": max((c[2] for c in cols), default=0) * 1e3,
                              "total_ms": sum(c[2] for c in cols) * 1e3,
                              "over_1ms": sum(1 for c in cols if c[2] > 1e-3),
                              "over_0.5ms": sum(1 for c in cols if c[2] > 5e-4)})
        return res

    def stop(self) -> None:
        self.server.stop()


def fio_qd1(uri: str, work: Path, nbytes: int, seconds: float, stats: Callable[[], dict[str, int]]
            ) -> tuple[dict[str, Any], tuple[dict[str, int], dict[str, int], float]]:
    """One fio run; percentiles and slow-request counts from the latency bins
    (json+); ``stats`` sampled while fio runs (the server's threads serving
    the connection may end with it), and the seconds between the samples."""
    job = work / "qd1.fio"
    out = work / "qd1.json"
    job.write_text("[qd1]\nioengine=nbd\nuri=%s\nrw=randread\nbs=4k\niodepth=1\nsize=%d\ntime_based=1\n"
                   "runtime=%dms\nramp_time=500ms\nnorandommap=1\nrandrepeat=0\nlat_percentiles=1\n"
                   % (uri, nbytes, int(seconds * 1000)))
    proc = subprocess.Popen([*CLIENT_PREFIX, "fio", "--output-format=json+", f"--output={out}", str(job)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.7)
    t0, before = time.monotonic(), stats()
    time.sleep(max(seconds - 0.4, 0.1))
    window, after = time.monotonic() - t0, stats()
    if proc.wait(seconds * 10 + 60):
        raise RuntimeError(f"fio failed on {uri}")
    lat = json.loads(out.read_text())["jobs"][0]["read"]["lat_ns"]
    bins = {int(k): v for k, v in lat["bins"].items()}
    n = sum(bins.values())
    ordered = sorted(bins.items())

    def pct(p: float) -> float:
        need_n, seen = p / 100 * n, 0
        for ns, count in ordered:
            seen += count
            if seen >= need_n:
                return ns / 1e3
        return ordered[-1][0] / 1e3
    return {"requests": n, "iops": n / seconds, "mean_us": lat["mean"] / 1e3, "max_us": lat["max"] / 1e3,
            **{f"p{p:g}_us": pct(p) for p in PCTS},
            "over_0.5ms": sum(c for ns, c in ordered if ns > 500_000),
            "over_1ms": sum(c for ns, c in ordered if ns > 1_000_000)}, (before, after, window)


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in rows[0].items():
        if isinstance(v, dict):
            out[k] = median_rows([r[k] for r in rows])
        else:
            out[k] = statistics.median(r[k] for r in rows)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    head = ["server", "IOPS", "p50 µs", "p90", "p99", "p99.9", "max", ">0.5ms", ">1ms", "CPU µs/req",
            "runq wait µs/req", "invol. sw/s", "gc 0/1/2", "gc >1ms", "gc max ms", "gc total ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        g = r.get("gc")
        gcs = [f"{g['gen0']:.0f}/{g['gen1']:.0f}/{g['gen2']:.0f}", f"{g['over_1ms']:.0f}", f"{g['max_ms']:.2f}",
               f"{g['total_ms']:.1f}"] if g else ["-"] * 4
        lines.append("| " + " | ".join([
            name, f"{r['iops']:,.0f}", f"{r['p50_us']:.0f}", f"{r['p90_us']:.0f}", f"{r['p99_us']:.0f}",
            f"{r['p99.9_us']:.0f}", f"{r['max_us']:,.0f}", f"{r['over_0.5ms']:.0f}", f"{r['over_1ms']:.0f}",
            f"{r['run_us_per_req']:.1f}", f"{r['wait_us_per_req']:.1f}", f"{r['nonvol_per_s']:.0f}", *gcs]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="nbdkit,echo,default,swap,freeze,nogc",
                    help="comma-separated, of: " + ",".join(SERVERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--fifo-client", action="store_true", help="run fio under chrt -f 1 too")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--exec-with-slice", type=int, metavar="NS", help=argparse.SUPPRESS)
    ap.add_argument("cmd", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.exec_with_slice:
        exec_with_slice(args.exec_with_slice, args.cmd)
    if args.fifo_client:
        CLIENT_PREFIX[:] = FIFO
    names = args.servers.split(",")
    if unknown := set(names) - set(SERVERS):
        sys.exit(f"bench: unknown servers {', '.join(sorted(unknown))}")
    need("fio", "nbdkit", "nbdcopy", "chrt")
    work = Path(tempfile.mkdtemp(prefix="uzram-tail-"))
    targets: list[Target] = []
    raw: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    try:
        img = work / "corpus.img"
        nbytes = corpus.build(img, args.corpus_mib) * corpus.PAGE
        for n in names:
            t = Target(n, work, nbytes)
            targets.append(t)
            t.load(img)
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for t in order:
                raw[t.name].append(t.measure(work, nbytes, args.seconds))
            print(f"bench: round {rnd + 1}/{args.rounds}: " + ", ".join(
                f"{n} p99 {raw[n][-1]['p99_us']:.0f} µs" for n in names), file=sys.stderr)
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg()[0])
    results = {n: median_rows(rows) for n, rows in raw.items()}
    print(f"QD1 4 KiB random reads{' (fio under chrt -f 1)' if args.fifo_client else ''}, "
          f"{args.rounds} rounds of {args.seconds:g} s, medians over rounds; "
          f"load average {load[0]:.1f} -> {load[1]:.1f}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"load": load, "results": results, "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
