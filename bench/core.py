"""The zram core's hot paths in process: µs per page through ZramDevice.

Five workloads on the seeded corpus (bench/corpus.py), as NBD would issue
them but without NBD: 128 KiB sequential writes into a fresh device,
128 KiB sequential reads (``read_chunks``), 4 KiB random overwrites (every
page rewritten with another corpus page), 4 KiB random reads, and 4 KiB
random modifications (every page rewritten with its contents, one 8-byte
word changed: an application updating its data in place).

    python bench/core.py [--mib 64] [--rounds 5] [--baseline REV] [--profile]
    python bench/core.py --instructions [--mib 8] [--baseline REV]

With ``--baseline REV`` the uzram package of that git revision (a ``git
archive`` copy) runs too, alternating with this tree's in separate
processes round by round; the best round of each is reported. Times are
the process's CPU time (user and system, so page faults count): on a
shared machine they vary far less than wall-clock time. ``--profile``
runs this tree's workloads under cProfile instead.

``--instructions`` counts instead the instructions per page of the two read
workloads under valgrind's callgrind (user space only: no system time, no
waits, the same count on every run to within a few tenths of a percent):
each reads a filled device once untimed, then once counted (only the
instructions inside that pass count). Use a small corpus (valgrind is
some 50 times slower).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    del sys.path[0]   # bench/profile.py would shadow the standard library's profile
PAGE = 4096
BIG = 128 << 10
WORKLOADS = ("128k-write", "128k-read", "4k-randwrite", "4k-randread", "4k-modify")
READS = ("128k-read", "4k-randread")
ARENA_UNDER_VALGRIND = 1 << 30   # valgrind cannot map the pool's 64 GiB arena


def run_workloads(corpus_path: Path) -> dict[str, float]:
    """Each workload once on a fresh device; µs per page."""
    import numpy as np

    from uzram.zram.device import ZramDevice

    data = memoryview(corpus_path.read_bytes())
    size = len(data)
    pages = size // PAGE
    rng = np.random.default_rng(1)
    order = rng.permutation(pages).tolist()
    shifted = rng.permutation(pages).tolist()   # the page written over each slot
    dev = ZramDevice("zram0")
    dev.store("disksize", str(size))
    out: dict[str, float] = {}

    def timed(name: str, body: object, repeat: int = 1) -> None:
        assert callable(body)
        for _ in range(repeat):   # reads leave the contents as they were: best of a few
            t = time.process_time()
            body()
            us = (time.process_time() - t) * 1e6 / pages
            out[name] = min(us, out.get(name, us))

    write, read_chunks = dev.write, dev.read_chunks

    def seq_write() -> None:
        for off in range(0, size, BIG):
            write(off, data[off:off + BIG])

    def seq_read() -> None:
        for off in range(0, size, BIG):
            read_chunks(off, BIG)

    def rand_write() -> None:
        for i, j in zip(order, shifted):
            write(i * PAGE, data[j * PAGE:(j + 1) * PAGE])

    def rand_read() -> None:
        for i in order:
            read_chunks(i * PAGE, PAGE)

    timed("128k-write", seq_write)
    timed("128k-read", seq_read, 3)
    timed("4k-randwrite", rand_write)
    timed("4k-randread", rand_read, 3)
    expect = bytearray(size)
    for i, j in zip(order, shifted):
        expect[i * PAGE:(i + 1) * PAGE] = data[j * PAGE:(j + 1) * PAGE]
    modified = memoryview(expect)
    for i in order:   # one word of every page changed, outside the timed part
        at = i * PAGE + (i * 72) % (PAGE - 8)
        expect[at:at + 8] = bytes(b ^ 0x5A for b in expect[at:at + 8])

    def rand_modify() -> None:
        for i in order:
            write(i * PAGE, modified[i * PAGE:(i + 1) * PAGE])

    timed("4k-modify", rand_modify)
    # the contents must be what was written last
    assert dev.read(0, size) == expect, "read back differs from what was written"
    return out


def run_reads(corpus_path: Path, workload: str) -> None:
    """Fill a device (128 KiB writes), read it once as ``workload``, then
    once more inside ``sys.call_tracing``: callgrind counts only that call."""
    import numpy as np

    import uzram.zram.arena as arena
    arena.ARENA_BYTES = min(arena.ARENA_BYTES, ARENA_UNDER_VALGRIND)
    from uzram.zram.device import ZramDevice

    data = memoryview(corpus_path.read_bytes())
    size = len(data)
    dev = ZramDevice("zram0")
    dev.store("disksize", str(size))
    for off in range(0, size, BIG):
        dev.write(off, data[off:off + BIG])
    read_chunks = dev.read_chunks
    if workload == "4k-randread":
        offsets = (np.random.default_rng(1).permutation(size // PAGE) * PAGE).tolist()
        length = PAGE
    else:
        offsets = list(range(0, size, BIG))
        length = BIG

    def reads() -> None:
        for off in offsets:
            read_chunks(off, length)
    reads()
    sys.call_tracing(reads, ())


def instructions(src: Path, corpus_path: Path, workload: str, pages: int) -> float:
    """Instructions per page of one pass of ``workload`` (callgrind)."""
    # compiled beforehand: compiling in the run changes the heap the pass sees
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "uzram")], check=True)
    res = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          "--collect-atstart=no", "--toggle-collect=sys_call_tracing",
                          sys.executable, __file__, "--worker", str(src), "--corpus", str(corpus_path),
                          "--reads", workload],
                         check=True, capture_output=True, text=True)
    collected = [line for line in res.stderr.splitlines() if "Collected :" in line]
    return int(collected[-1].rsplit(":", 1)[1]) / pages


def worker(src: Path, corpus_path: Path) -> None:
    sys.path.insert(0, str(src))
    print(json.dumps(run_workloads(corpus_path)))


def baseline_tree(rev: str, into: Path) -> Path:
    """A copy of the uzram package at ``rev``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "uzram"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reads", choices=READS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker and args.reads:
        sys.path.insert(0, str(args.worker))
        run_reads(args.corpus, args.reads)
        return 0
    if args.worker:
        worker(args.worker, args.corpus)
        return 0
    sys.path.insert(0, str(ROOT))
    from bench import corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.img"
        corpus.build(corpus_path, args.mib)
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(run_workloads, corpus_path)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        trees = {"new": ROOT}
        if args.baseline:
            old = Path(tmp) / "old"
            old.mkdir()
            trees = {"old": baseline_tree(args.baseline, old), **trees}
        if args.instructions:
            pages = (args.mib << 20) // PAGE
            print(f"{args.mib} MiB corpus, instructions per page (callgrind)")
            print("%-14s" % "workload" + "".join("%10s" % n for n in trees) + ("   speed-up" if len(trees) > 1 else ""))
            for w in READS:
                ir = {name: instructions(src, corpus_path, w, pages) for name, src in trees.items()}
                row = "%-14s" % w + "".join("%10.0f" % ir[n] for n in trees)
                if len(trees) > 1:
                    row += "%10.2fx" % (ir["old"] / ir["new"])
                print(row, flush=True)
            return 0
        best: dict[str, dict[str, float]] = {name: {} for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                res = subprocess.run([sys.executable, __file__, "--worker", str(src), "--corpus", str(corpus_path)],
                                     check=True, capture_output=True, text=True)
                for w, us in json.loads(res.stdout).items():
                    best[name][w] = min(us, best[name].get(w, us))
        print(f"{args.mib} MiB corpus, best of {args.rounds} rounds, CPU µs per page")
        print("%-14s" % "workload" + "".join("%10s" % n for n in trees) + ("   speed-up" if len(trees) > 1 else ""))
        for w in WORKLOADS:
            row = "%-14s" % w + "".join("%10.2f" % best[n][w] for n in trees)
            if len(trees) > 1:
                row += "%10.2fx" % (best["old"][w] / best["new"][w])
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
