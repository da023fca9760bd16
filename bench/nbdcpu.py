"""uzramd's CPU time per NBD request: the daemon's user + system time
(``/proc/PID/stat``) over the requests fio completed at QD16, on a device
holding the seeded corpus.

    python bench/nbdcpu.py [--workload 4k-randwrite|4k-randread|128k-write|128k-read]...
                           [--seconds 3] [--rounds 3] [--corpus-mib 64] [--baseline REV]
                           [--cprofile DIR]

CPU time per request is far steadier than IOPS on a shared machine (the
client's own CPU time and the waits for a core do not count). With
``--baseline REV`` the uzram package of that git revision serves too, in
its own daemon; rounds alternate the two and the best round of each is
reported. ``--cprofile DIR`` runs this tree's daemon under cProfile instead
and writes one ``.prof`` per workload (read them with ``pstats``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    del sys.path[0]   # bench/profile.py would shadow the standard library's profile
sys.path.insert(0, str(ROOT))

from bench import corpus  # noqa: E402
from bench.core import baseline_tree  # noqa: E402
from bench.profile import WORKLOADS  # noqa: E402
from bench.targets import Server, cpu_times, nbd_fio, nbdcopy_cmd, need, uzramd  # noqa: E402


def run_fio(opts: dict[str, str], work: Path, seconds: float) -> int:
    """Run one fio job; the requests it completed."""
    full = {"time_based": "1", "runtime": f"{int(seconds * 1000)}ms", "norandommap": "1",
            "randrepeat": "0", **opts}
    job = work / "cpu.fio"
    job.write_text("[job]\n" + "".join(f"{k}={v}\n" for k, v in full.items()))
    out = work / "cpu.json"
    subprocess.run(["fio", "--output-format=json", f"--output={out}", str(job)], check=True, capture_output=True)
    j = json.loads(out.read_text())["jobs"][0]
    return int(j["read"]["total_ios"] + j["write"]["total_ios"])


def measure(server: Server, name: str, work: Path, nbytes: int, seconds: float) -> tuple[float, float, float]:
    """(CPU µs per request, requests per second, system time's share of
    the CPU time) of one workload."""
    opts = {**nbd_fio(server.uri("zram0")), **WORKLOADS[name], "size": str(nbytes)}
    u0, s0 = cpu_times(server.proc.pid)
    n = run_fio(opts, work, seconds)
    u1, s1 = cpu_times(server.proc.pid)
    cpu = (u1 - u0) + (s1 - s0)
    return cpu * 1e6 / max(n, 1), n / seconds, (s1 - s0) / cpu if cpu else 0.0


def cprofile(work: Path, img: Path, nbytes: int, workloads: list[str], seconds: float, out: Path) -> None:
    import signal
    out.mkdir(parents=True, exist_ok=True)
    for name in workloads:
        prof = out / f"{name}.prof"
        sock, ctl = work / "prof.sock", work / "prof.ctl"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "uzram.daemon", "-q",
               "--listen", f"unix:{sock}", "--control", str(ctl),
               "--device", f"zram0:comp_algorithm=lz4,disksize={nbytes}"]
        srv = Server("uzramd", cmd, sock, [ctl], cwd=ROOT)
        try:
            subprocess.run(nbdcopy_cmd(img, srv.uri("zram0")), check=True, capture_output=True)
            n = run_fio({**nbd_fio(srv.uri("zram0")), **WORKLOADS[name], "size": str(nbytes)}, work, seconds)
        finally:
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(60)
        print(f"{name}: {n} requests -> {prof}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="append", choices=WORKLOADS)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus-mib", type=int, default=64)
    ap.add_argument("--baseline", metavar="REV")
    ap.add_argument("--cprofile", type=Path, metavar="DIR")
    args = ap.parse_args()
    need("fio", "nbdcopy")
    workloads = args.workload or ["4k-randwrite", "4k-randread", "128k-write", "128k-read"]
    work = Path(tempfile.mkdtemp(prefix="uzram-nbdcpu-"))
    try:
        img = work / "corpus.img"
        nbytes = corpus.build(img, args.corpus_mib) * corpus.PAGE
        if args.cprofile:
            cprofile(work, img, nbytes, workloads, args.seconds, args.cprofile)
            return 0
        trees: dict[str, Path | None] = {"new": None}
        if args.baseline:
            old = work / "old"
            old.mkdir()
            trees = {"old": baseline_tree(args.baseline, old), "new": None}
        servers = {name: uzramd(work, name, [f"zram0:comp_algorithm=lz4,disksize={nbytes}"], tree=tree)
                   for name, tree in trees.items()}
        best: dict[str, dict[str, tuple[float, float, float]]] = {n: {} for n in trees}
        try:
            for s in servers.values():
                subprocess.run(nbdcopy_cmd(img, s.uri("zram0")), check=True, capture_output=True)
            for _ in range(args.rounds):
                for w in workloads:
                    for name, s in servers.items():
                        res = measure(s, w, work, nbytes, args.seconds)
                        if w not in best[name] or res[0] < best[name][w][0]:
                            best[name][w] = res
        finally:
            for s in servers.values():
                s.stop()
        print(f"uzramd CPU µs per request at QD16, best of {args.rounds} rounds of {args.seconds:g} s "
              f"(load {os.getloadavg()[0]:.1f}); requests/s, then system time's share, in brackets")
        print("%-14s" % "workload" + "".join("%26s" % n for n in trees) + ("   speed-up" if len(trees) > 1 else ""))
        for w in workloads:
            row = "%-14s" % w + "".join("%11.2f (%6.0f, %3.0f%%)" % (best[n][w][0], best[n][w][1], 100 * best[n][w][2])
                                        for n in trees)
            if len(trees) > 1:
                row += "%10.2fx" % (best["old"][w][0] / best["new"][w][0])
            print(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
