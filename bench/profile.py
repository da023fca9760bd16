"""Where uzramd's time goes per request: py-spy samples the daemon while fio
drives one workload at QD16 over NBD, on a device holding the seeded corpus.

    python bench/profile.py [--workload 4k-randwrite|128k-read|4k-randread|128k-write]... [--seconds 10]
                            [--rate 200] [--corpus-mib 256] [--flamegraph DIR] [--native]

For each workload: the requests served (fio), the share of the sampled time
the daemon's thread was busy, and the functions costing the most, by self
time and including callees, in % of the busy samples and in µs per request.
py-spy samples wall-clock time in which the thread is not idle: on a loaded
machine that includes time the thread waits for a CPU, spread alike over the
functions, so the shares are steadier than the µs.
py-spy comes with ``pip install 'uzram[profile]'``; it needs ptrace rights
over the daemon (root, or kernel.yama.ptrace_scope 0).

``--native`` then samples the whole daemon with ``perf record`` for as
long again, and splits its CPU time by where the code lives: the
compression library, the kernel (system calls, copies into and out of
sockets, page faults), the Python interpreter, the C library (copies,
malloc) and the rest. The compression library and the kernel are what no
change to uzram's Python removes; the kernel's zram spends its time on the
same compression. Needs perf (Debian: linux-perf) and root, or
kernel.perf_event_paranoid at most 1.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus  # noqa: E402
from bench.targets import cpu_seconds, fio, fio_result, nbd_fio, nbdcopy_cmd, need, uzramd  # noqa: E402

WORKLOADS = {
    "4k-randwrite": {"rw": "randwrite", "bs": "4k", "iodepth": "16", "buffer_compress_percentage": "55",
                     "buffer_compress_chunk": "4096", "refill_buffers": "1"},
    "4k-randread": {"rw": "randread", "bs": "4k", "iodepth": "16"},
    "128k-read": {"rw": "read", "bs": "128k", "iodepth": "16"},
    "128k-write": {"rw": "write", "bs": "128k", "iodepth": "16", "buffer_compress_percentage": "55",
                   "buffer_compress_chunk": "4096", "refill_buffers": "1"},
}
PYSPY = str(Path(sys.executable).with_name("py-spy")) if Path(sys.executable).with_name("py-spy").exists() \
    else "py-spy"
TRIO_RUN = "trio/_core/_run.py:run"
NATIVE_GROUPS = (   # (group, substrings of perf's shared-object names), the first match wins
    ("compression library", ("_block.cpython", "lz4", "zstd", "_lzo", "libz.", "zlib")),
    ("kernel", ("[kernel",)),
    ("Python interpreter", ("libpython", "python3")),
    ("C library", ("libc.so", "libc-", "ld-linux", "[vdso]")),
)
PERF_LINE = re.compile(r"^\s*(?P<share>\d+(?:\.\d+)?)%\s+(?P<dso>\S.*?)\s*$")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    """``func (path/to/uzram/nbd/server.py:123)`` -> ``nbd/server.py:func``."""
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("/uzram/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m['func']}"


def tally(raw: Path) -> tuple[int, int, collections.Counter[str], collections.Counter[str]]:
    """From py-spy's raw (collapsed) output: the samples of the trio thread and
    of other threads, and the trio thread's self and inclusive samples per function."""
    total = others = 0
    own, incl = collections.Counter[str](), collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if "(" in f]
        if TRIO_RUN not in frames:   # a worker thread: not on the request path
            others += n
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, others, own, incl


def native_shares(report: str) -> dict[str, float]:
    """``perf report --sort dso --stdio`` output -> % of the samples per
    NATIVE_GROUPS group ("other" for the rest)."""
    shares: dict[str, float] = {g: 0.0 for g, _ in NATIVE_GROUPS}
    shares["other"] = 0.0
    for line in report.splitlines():
        if line.startswith("#"):
            continue
        m = PERF_LINE.match(line)
        if not m:
            continue
        dso = m["dso"]
        group = next((g for g, keys in NATIVE_GROUPS if any(k in dso for k in keys)), "other")
        shares[group] += float(m["share"])
    return shares


def native(pid: int, work: Path, name: str, seconds: float) -> tuple[dict[str, float], float, float]:
    """perf's split of the daemon's CPU time over about ``seconds``, that CPU
    time, and the wall time it was taken over (perf's start and stop included)."""
    data = work / f"{name}.perf"
    before, t0 = cpu_seconds(pid), time.monotonic()
    subprocess.run(["perf", "record", "-q", "-o", str(data), "-p", str(pid), "--", "sleep", f"{seconds:g}"],
                   check=True, capture_output=True)
    used, wall = cpu_seconds(pid) - before, time.monotonic() - t0
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"], check=True,
                            capture_output=True, text=True).stdout
    return native_shares(report), used, wall


def profile(name: str, uri: str, pid: int, work: Path, nbytes: int, seconds: float, rate: int,
            flamegraph: Path | None, with_native: bool = False) -> str:
    runtime = seconds * (2 if with_native else 1) + 3
    job = fio({**nbd_fio(uri), **WORKLOADS[name], "size": str(nbytes)}, work, seconds=runtime, ramp=1)
    time.sleep(1.5)   # fio has connected and ramps up
    raw = work / f"{name}.txt"
    subprocess.run([PYSPY, "record", "--pid", str(pid), "--rate", str(rate), "--duration", f"{seconds:g}",
                    "--format", "raw", "--output", str(raw)], check=True, capture_output=True)
    if flamegraph:
        flamegraph.mkdir(parents=True, exist_ok=True)
        svg = flamegraph / f"profile-{name}.svg"
        subprocess.run([PYSPY, "record", "--pid", str(pid), "--rate", str(rate), "--duration", "2",
                        "--output", str(svg)], check=True, capture_output=True)
    split = native(pid, work, name, seconds) if with_native else None
    res = fio_result(job, work)
    requests = float(res["iops"]) * seconds
    busy, others, own, incl = tally(raw)

    def per_req(n: int) -> float:   # µs per request
        return n / rate / requests * 1e6
    lines = [f"## {name}: {res['iops']:,.0f} IOPS ({res['mbps']:,.0f} MB/s); the trio thread busy "
             f"{busy / (rate * seconds):.0%} of the time, {per_req(busy):.1f} µs per request "
             f"(other threads: {others / (rate * seconds):.0%})", "",
             "| function | self | self µs/request | with callees | with callees µs/request |", "|---|---|---|---|---|"]
    for func, n in own.most_common(15):
        lines.append(f"| `{func}` | {n / busy:.1%} | {per_req(n):.2f} | {incl[func] / busy:.1%} | "
                     f"{per_req(incl[func]):.2f} |")
    lines += ["", "Including callees (the request path's layers):", "",
              "| function | share | µs/request |", "|---|---|---|"]
    for func, n in incl.most_common(25):
        lines.append(f"| `{func}` | {n / busy:.1%} | {per_req(n):.2f} |")
    if split is not None:
        shares, used, wall = split
        cpu_per_req = used / (float(res["iops"]) * wall) * 1e6
        lines += ["", f"The whole daemon under perf: {used / wall:.0%} of a CPU, {cpu_per_req:.1f} µs "
                  "of CPU per request, by where the code lives:", "",
                  "| code | share | µs/request |", "|---|---|---|"]
        for group, share in shares.items():
            lines.append(f"| {group} | {share:.1f}% | {share / 100 * cpu_per_req:.2f} |")
        fixed = shares["compression library"] + shares["kernel"]
        lines += ["", f"Compression and kernel together: {fixed:.0f}% ({fixed / 100 * cpu_per_req:.2f} µs "
                  "a request), what no change to uzram's Python takes away."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="append", choices=WORKLOADS)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--algorithm", default="lz4")
    ap.add_argument("--flamegraph", type=Path, metavar="DIR", help="also write an SVG flame graph per workload")
    ap.add_argument("--native", action="store_true",
                    help="also split the daemon's CPU time by library with perf (compression, kernel, interpreter)")
    args = ap.parse_args()
    need("fio", "nbdcopy")
    if args.native and shutil.which("perf") is None:
        sys.exit("bench: --native needs perf (Debian: apt install linux-perf)")
    if shutil.which(PYSPY) is None:
        sys.exit("bench: py-spy is missing: pip install 'uzram[profile]'")
    work = Path(tempfile.mkdtemp(prefix="uzram-profile-"))
    try:
        img = work / "corpus.img"
        nbytes = corpus.build(img, args.corpus_mib) * corpus.PAGE
        uz = uzramd(work, "uz", [f"zram0:comp_algorithm={args.algorithm},disksize={nbytes}"])
        try:
            subprocess.run(nbdcopy_cmd(img, uz.uri("zram0")), check=True, capture_output=True)
            for name in args.workload or ["4k-randwrite", "128k-read"]:
                print(profile(name, uz.uri("zram0"), uz.proc.pid, work, nbytes, args.seconds, args.rate,
                              args.flamegraph, args.native), end="\n\n", flush=True)
        finally:
            uz.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
