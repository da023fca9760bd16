"""A swap-like page set: the resident anonymous memory of a real Python
process that built ordinary data structures (dicts, strings, lists of ints,
floats, numpy arrays, some random bytes), read through /proc/PID/mem.

    python bench/corpus.py OUT.img [MiB]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

PAGE = 4096

CHILD = r"""
import json, os, random, sys, time
import numpy as np
target = int(sys.argv[1]) << 20
rng = random.Random(7)
keep = []
while True:
    keep.append({f"user:{i}:session": (i, f"name-{i}", i * 0.5, None) for i in range(20000)})
    keep.append([json.dumps({"id": i, "tags": ["a", "b", str(i)], "score": rng.random()}) for i in range(5000)])
    keep.append(list(range(100000)))
    keep.append([rng.random() for _ in range(20000)])
    keep.append(np.linspace(0, 1, 100000))
    keep.append(np.arange(200000, dtype=np.int32) % 1000)
    keep.append(np.zeros(250000, dtype=np.uint8))
    keep.append(os.urandom(200000))
    keep.append(bytearray(b"x" * 65536))
    with open("/proc/self/statm") as f:
        if int(f.read().split()[1]) * 4096 >= target:
            break
print("ready", flush=True)
sys.stdin.read()
"""


def anon_regions(pid: int) -> list[tuple[int, int]]:
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        perms = parts[1]
        name = parts[5] if len(parts) > 5 else ""
        if perms.startswith("rw") and perms[3] == "p" and (not name or name in ("[heap]", "[stack]") or name.startswith("[anon")):
            out.append((start, end))
    return out


def resident(pid: int, start: int, end: int) -> list[int]:
    """Addresses of resident pages (pagemap bit 63) in [start, end)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        raw = f.read((end - start) // PAGE * 8)
    return [start + i * PAGE for i in range(len(raw) // 8) if raw[i * 8 + 7] & 0x80]


def build(out: Path, mib: int) -> int:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(mib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        n = 0
        with open(f"/proc/{child.pid}/mem", "rb") as mem, open(out, "wb") as dst:
            for start, end in anon_regions(child.pid):
                for addr in resident(child.pid, start, end):
                    mem.seek(addr)
                    try:
                        dst.write(mem.read(PAGE))
                        n += 1
                    except OSError:
                        pass
                    if n * PAGE >= mib << 20:
                        return n
        return n
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    out = Path(sys.argv[1])
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    t = time.monotonic()
    pages = build(out, mib)
    print(f"{out}: {pages} pages ({pages * PAGE >> 20} MiB) in {time.monotonic() - t:.1f} s")
