"""Benchmark: uzram's NBD server (MemExport) against ``nbdkit memory``.

    .venv/bin/python -m tests.nbd.bench_nbd [--runtime 5] [--rounds 1] [--out DIR]

Runs the fio nbd engine (QD16, one connection: 128k seq write, 4k randwrite,
4k randread, 128k seq read) and nbdcopy round trips against each server in
turn, and prints IOPS/throughput, the server's CPU time per request, and the
uzram/nbdkit ratios.  Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBS = [
    ("seqwrite-128k", "write", "128k"),
    ("randwrite-4k", "randwrite", "4k"),
    ("randread-4k", "randread", "4k"),
    ("seqread-128k", "read", "128k"),
]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_fraction(interval: float = 1.0) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)

    i0, t0 = sample()
    time.sleep(interval)
    i1, t1 = sample()
    return (i1 - i0) / max(t1 - t0, 1)


def wait_idle(threshold: float, max_wait: float) -> float:
    """Wait (up to max_wait s) for the machine to be idle; return the last idle fraction."""
    deadline = time.monotonic() + max_wait
    idle = idle_fraction()
    while idle < threshold and time.monotonic() < deadline:
        idle = idle_fraction()
    return idle


def wait_socket(path: str) -> None:
    for _ in range(200):
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


def fio_job(uri: str, rw: str, bs: str, runtime: int, out: str) -> dict:
    cmd = [
        "fio",
        "--name=" + rw,
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={rw}",
        f"--bs={bs}",
        "--size=1g",
        "--time_based=1",
        f"--runtime={runtime}",
        "--ramp_time=1",
        "--iodepth=16",
        "--numjobs=1",
        "--norandommap=1",
        "--output-format=json",
        f"--output={out}",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=os.path.dirname(out))
    with open(out) as f:
        text = f.read()
    job = json.loads(text[text.index("{") :])["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] else job["read"]
    return {"iops": side["iops"], "mibs": side["bw"] / 1024, "ios": side["total_ios"]}


def bench_server(label: str, start: list[str], sock: str, args: argparse.Namespace, tmp: str) -> dict:
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen(start, stdout=subprocess.DEVNULL, cwd=TOP)
    try:
        wait_socket(sock)
        uri = f"nbd+unix:///?socket={sock}"
        res: dict = {}
        for name, rw, bs in JOBS:
            best = None
            for _ in range(args.rounds):
                idle = wait_idle(args.idle, args.idle_wait)
                c0 = cpu_seconds(proc.pid)
                r = fio_job(uri, rw, bs, args.runtime, os.path.join(tmp, f"{label}-{name}.json"))
                # CPU was also spent during the 1 s ramp, which total_ios leaves out
                r["cpu_us"] = (cpu_seconds(proc.pid) - c0) * 1e6 / max(r["iops"] * (args.runtime + 1), 1)
                r["idle_before"] = idle
                if best is None or r["iops"] > best["iops"]:
                    best = r
            res[name] = best
        img = os.path.join(tmp, "src.img")
        for name, src, dst in (("nbdcopy-in", img, uri), ("nbdcopy-out", uri, "null:")):
            t = time.perf_counter()
            subprocess.run(["nbdcopy", "--request-size=262144", src, dst], check=True)
            res[name] = {"mibs": 1024 / (time.perf_counter() - t)}
        return res
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runtime", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--idle", type=float, default=0.9, help="idle fraction to wait for before each job")
    p.add_argument("--idle-wait", type=float, default=120.0)
    args = p.parse_args()
    tmp = args.out or tempfile.mkdtemp(prefix="uzbench-")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "src.img"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(1024):
            f.write(chunk)
    usock, ksock = os.path.join(tmp, "u.sock"), os.path.join(tmp, "k.sock")
    results = {
        "uzram": bench_server(
            "uzram",
            [sys.executable, "-m", "tests.nbd.memserver", "--socket", usock, "--size", "1G"],
            usock,
            args,
            tmp,
        ),
        "nbdkit": bench_server("nbdkit", ["nbdkit", "-f", "-U", ksock, "memory", "1G"], ksock, args, tmp),
    }
    print(f"{'workload':15} {'uzram':>22} {'nbdkit':>22} {'ratio':>6}")
    for name in [j[0] for j in JOBS] + ["nbdcopy-in", "nbdcopy-out"]:
        u, k = results["uzram"][name], results["nbdkit"][name]
        fmt = (
            (lambda r: f"{r['iops'] / 1000:6.1f}k {r['mibs']:6.0f}MiB/s {r['cpu_us']:4.1f}us")
            if "iops" in u
            else (lambda r: f"{r['mibs']:15.0f}MiB/s")
        )
        key = "iops" if "iops" in u else "mibs"
        idle = f"  idle {u.get('idle_before', 1):.0%}/{k.get('idle_before', 1):.0%}" if "iops" in u else ""
        print(f"{name:15} {fmt(u):>22} {fmt(k):>22} {u[key] / k[key]:6.2f}{idle}")
    with open(os.path.join(tmp, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
