"""Two devices against one, with and without ``--process-per-device``.

Each device is driven by a client of its own: fio 4k randread at QD16, and
nbdcopy writing the corpus with 128 KiB requests. Per round, both modes are
measured back to back (one device alone, then two at once), in alternating
order; medians over the rounds. The ratio reported is the two devices'
aggregate over one device alone, in the same mode.

    python bench/multi.py [--rounds 3] [--seconds 5] [--corpus-mib 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus  # noqa: E402
from bench.targets import Server, copy_rate, nbd_fio, nbdcopy_cmd, need, run_fio, together  # noqa: E402

MODES = {"one process": [], "process per device": ["--process-per-device"]}
JOBS = ("4k randread", "128k write")


def server(work: Path, name: str, nbytes: int, extra: list[str]) -> Server:
    cmd = [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{work / (name + '.sock')}",
           "--control", str(work / (name + ".ctl")), *extra]
    for i in (0, 1):
        cmd += ["--device", f"zram{i}:comp_algorithm=lz4,disksize={nbytes}"]
    return Server("uzramd", cmd, work / (name + ".sock"), [work / (name + ".ctl")])


def measure_mode(srv: Server, img: Path, nbytes: int, work: Path, seconds: float) -> dict[str, dict[str, float]]:
    def fio_on(export: str, tag: str) -> Callable[[], dict[str, Any]]:
        opts = {**nbd_fio(srv.uri(export)), "rw": "randread", "bs": "4k", "iodepth": "16", "size": str(nbytes)}
        return lambda: run_fio(opts, work / tag, seconds=seconds, ramp=1)

    def copy_to(export: str) -> Callable[[], dict[str, Any]]:
        return lambda: copy_rate(nbdcopy_cmd(img, srv.uri(export)), nbytes, seconds)
    out: dict[str, dict[str, float]] = {}
    one = copy_to("zram0")()
    a, b = together(copy_to("zram0"), copy_to("zram1"))
    out["128k write"] = {"one": one["mbps"], "two": a["mbps"] + b["mbps"]}
    one = fio_on("zram0", "a")()
    a, b = together(fio_on("zram0", "a"), fio_on("zram1", "b"))
    out["4k randread"] = {"one": one["iops"], "two": a["iops"] + b["iops"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--corpus-mib", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    need("fio", "nbdcopy")
    rows: dict[str, dict[str, list[dict[str, float]]]] = {m: {j: [] for j in JOBS} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="uzram-multi-") as tmp:
        work = Path(tmp)
        for d in ("a", "b"):
            (work / d).mkdir()
        img = work / "corpus.img"
        nbytes = corpus.build(img, args.corpus_mib, 7) * corpus.PAGE
        for rnd in range(args.rounds):
            order = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))
            for mode in order:
                srv = server(work, f"m{rnd}{len(MODES[mode])}", nbytes, MODES[mode])
                try:
                    res = measure_mode(srv, img, nbytes, work, args.seconds)
                finally:
                    srv.stop()
                for job in JOBS:
                    rows[mode][job].append(res[job])
                print(f"bench: round {rnd + 1} {mode}: " + "; ".join(
                    f"{j} one {res[j]['one']:,.0f} two {res[j]['two']:,.0f} ({res[j]['two'] / res[j]['one']:.2f}x)"
                    for j in JOBS), file=sys.stderr)
    result: dict[str, Any] = {"unit": {"4k randread": "IOPS", "128k write": "MB/s"}, "rounds": rows, "median": {}}
    print("| mode | measure | one device | two devices | ratio |\n|---|---|---|---|---|")
    for mode in MODES:
        for job in JOBS:
            one = statistics.median(r["one"] for r in rows[mode][job])
            two = statistics.median(r["two"] for r in rows[mode][job])
            ratio = statistics.median(r["two"] / r["one"] for r in rows[mode][job])
            result["median"].setdefault(mode, {})[job] = {"one": one, "two": two, "ratio": ratio}
            print(f"| {mode} | {job} ({result['unit'][job]}) | {one:,.0f} | {two:,.0f} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
