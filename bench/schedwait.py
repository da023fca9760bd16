"""How long a process's threads wait for a CPU: ``perf sched`` over a few seconds.

For each thread of the processes given (and, for comparison, the threads
that ran most), from ``perf sched record`` (system-wide) and ``perf sched
timehist --state``: CPU time, the waits after a wakeup (scheduling delay)
and the waits after being preempted while runnable (state R at switch-out),
with how many of each exceeded 0.5 and 1 ms. At QD1 every such wait of the
serving thread (or of the client's) delays one request by as much, so their
count next to fio's count of requests slower than 1 ms says how much of the
tail the scheduler explains.

    python bench/schedwait.py --pid PID [--pid PID]... [--seconds 3] [--top 8]

Run it while the load runs (bench/tail.py prints nothing to attach to;
start a daemon and fio by hand, or use the pids of a bench/run.py run).
Needs root (or kernel.perf_event_paranoid -1) and perf.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TASK = re.compile(r"\[(\d+)(?:/(\d+))?\]$")


def timehist(seconds: float, work: Path) -> list[tuple[str, float, float, float, str]]:
    """(task, wait ms, sched delay ms, run ms, state at switch-out) per switch-in."""
    data = work / "perf.data"
    subprocess.run(["perf", "sched", "record", "-o", str(data), "--", "sleep", f"{seconds:g}"],
                   check=True, capture_output=True)
    out = subprocess.run(["perf", "sched", "timehist", "-i", str(data), "--state"], check=True,
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[3:]:
        f = line.split()
        if len(f) < 7:
            continue
        try:
            wait, delay, run = float(f[-4]), float(f[-3]), float(f[-2])
        except ValueError:
            continue
        rows.append((" ".join(f[2:-4]), wait, delay, run, f[-1]))
    return rows


def tally(rows: list[tuple[str, float, float, float, str]]) -> dict[str, dict[str, float]]:
    per: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    state: dict[str, str] = {}
    for task, wait, delay, run, st in rows:
        c = per[task]
        c["switch_ins"] += 1
        c["run_ms"] += run
        c["wakeup_delay_ms"] += delay
        c["wakeup_delay>0.5ms"] += delay > 0.5
        c["wakeup_delay>1ms"] += delay > 1
        if state.get(task) == "R":      # preempted at its last switch-out: this wait was for a CPU
            c["preempted"] += 1
            c["preempt_wait_ms"] += wait
            c["preempt_wait>0.5ms"] += wait > 0.5
            c["preempt_wait>1ms"] += wait > 1
        state[task] = st
    return per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, action="append", default=[], help="a process whose threads to report")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--top", type=int, default=8, help="also the threads that ran most")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("bench: perf is missing")
    with tempfile.TemporaryDirectory(prefix="uzram-sched-") as tmp:
        per = tally(timehist(args.seconds, Path(tmp)))

    def pid_of(task: str) -> int:
        m = TASK.search(task)
        return int(m[2] or m[1]) if m else -1
    chosen = [t for t in per if pid_of(t) in args.pid]
    chosen += [t for t, _ in sorted(per.items(), key=lambda kv: -kv[1]["run_ms"]) if t not in chosen][:args.top]
    cols = ["switch_ins", "run_ms", "wakeup_delay_ms", "wakeup_delay>0.5ms", "wakeup_delay>1ms",
            "preempted", "preempt_wait_ms", "preempt_wait>0.5ms", "preempt_wait>1ms"]
    print(f"perf sched over {args.seconds:g} s (ms, and counts of waits)\n")
    print("| thread | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for t in chosen:
        c = per[t]
        mark = " (asked)" if pid_of(t) in args.pid else ""
        print(f"| {t}{mark} | " + " | ".join(f"{c[k]:,.0f}" for k in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
