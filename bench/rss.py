"""Where uzramd's resident memory goes: at start, and holding the corpus.

1. Imports: in a fresh interpreter, the modules the daemon loads, imported
   one after the other in the order below; RSS (anonymous and file-backed)
   after each, so each row is what that import adds to those before it.
2. A uzramd (lz4) holding the seeded corpus (bench/corpus.py, written with
   nbdcopy as bench/run.py does): RSS fresh, right after the copy, and
   ``--settle`` seconds later (after the daemon's heap trim); smaps grouped by
   kind of mapping; and from bench/probe/sitecustomize.py the pool's own
   counters (with the resident bytes of its chunks and of the slot table,
   by mincore), glibc's mallinfo2 and the Python objects by type, beside
   mm_stat's mem_used_total (what the kernel's zram would hold).

    python bench/rss.py [--corpus-mib 256] [--settle 5] [--swap] [--lazy MODULES] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus  # noqa: E402
from bench.targets import nbdcopy_cmd, need, wait_for  # noqa: E402
from uzram.ctl.client import Client  # noqa: E402

MiB = 1 << 20
IMPORTS = ("trio", "zstandard", "lz4.block", "lz4.frame", "ssl", "uzram.zram", "uzram.nbd.server",
           "uzram.daemon.metrics", "uzram.daemon.main", "pyfuse3", "uzram.daemon.fusefs")

IMPORT_PROBE = r"""
import importlib, json, sys
def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out
rows = [["python", rss()]]
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as e:
        rows.append([name + " (missing)", rss()])
        continue
    rows.append([name, rss()])
print(json.dumps(rows))
"""


def imports() -> list[tuple[str, dict[str, int]]]:
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *IMPORTS], capture_output=True, text=True,
                         check=True, cwd=HERE.parent).stdout
    return [(name, r) for name, r in json.loads(out)]


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out


def smaps(pid: int) -> dict[str, dict[str, int]]:
    """Rss, size and mapping count per kind: the heap (glibc's main arena),
    files (code and data of the interpreter and its .so), stacks, and the
    other anonymous mappings (the kernel merges adjacent ones, so pool
    chunks, the slot table, pymalloc's arenas and library buffers share
    VMAs: the probe's mincore counts tell them apart)."""
    groups: dict[str, dict[str, int]] = defaultdict(lambda: {"rss": 0, "maps": 0, "size": 0})
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            if path == "[heap]":
                kind = "heap"
            elif path.startswith("[stack") or path in ("[vdso]", "[vvar]", "[vsyscall]"):
                kind = "stack"
            elif path.startswith("/") and not path.startswith("/memfd"):
                kind = "files"
            else:
                kind = "anonymous"
            groups[kind]["maps"] += 1
            groups[kind]["size"] += end - start
        elif fields[0] == "Rss:":
            groups[kind]["rss"] += int(fields[1]) << 10
    return dict(groups)


def probe(pid: int, out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(3000):
        if out.exists():
            break
        time.sleep(0.01)
    snap: dict[str, Any] = json.loads(out.read_text())
    return snap


def with_data(img: Path, nbytes: int, work: Path, settle: float, swap: bool, lazy: str) -> dict[str, Any]:
    sock, ctl, out = work / "rss.sock", work / "rss.ctl", work / "rss.probe.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "probe"), str(HERE.parent)]),
           "UZRAM_PROBE": str(out), "UZRAM_PROBE_LAZY": lazy}
    cmd = [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{sock}", "--control", str(ctl),
           "--device", f"zram0:comp_algorithm=lz4,disksize={nbytes}", *(["--swap"] if swap else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for p in (sock, ctl):
            wait_for(p, proc, "uzramd")
        time.sleep(0.5)
        res: dict[str, Any] = {"fresh": status(proc.pid), "fresh_smaps": smaps(proc.pid)}
        res["fresh_probe"] = probe(proc.pid, out)     # its full collection comes before the copy
        subprocess.run(nbdcopy_cmd(img, f"nbd+unix:///zram0?socket={sock}"), check=True, capture_output=True)
        res["after_copy"] = status(proc.pid)
        time.sleep(settle)
        res["settled"] = status(proc.pid)
        res["smaps"] = smaps(proc.pid)
        with Client(ctl) as c:
            res["mm_stat"] = [int(x) for x in c.show("zram0", "mm_stat").split()]
        res["probe"] = probe(proc.pid, out)
        res["after_probe"] = status(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return res


def report(imp: list[tuple[str, dict[str, int]]], data: dict[str, Any]) -> str:
    def m(n: float) -> str:
        return f"{n / MiB:.1f}"
    lines = ["## A fresh interpreter, importing one module after the other", "",
             "| import | RSS MiB | +RSS | +anon | +file |", "|---|---|---|---|---|"]
    prev: dict[str, int] = {}
    for name, r in imp:
        d = {k: r[k] - prev.get(k, 0) for k in r} if prev else r
        lines.append(f"| {name} | {m(r['VmRSS'])} | {m(d['VmRSS'])} | {m(d['RssAnon'])} | {m(d['RssFile'])} |")
        prev = r
    mm = data["mm_stat"]
    used = mm[2]
    lines += ["", "## uzramd holding the corpus", "",
              f"RSS fresh {m(data['fresh']['VmRSS'])} MiB (anon {m(data['fresh']['RssAnon'])}); right after "
              f"the copy {m(data['after_copy']['VmRSS'])} (anon {m(data['after_copy']['RssAnon'])}); settled "
              f"{m(data['settled']['VmRSS'])} (anon {m(data['settled']['RssAnon'])}); mm_stat orig "
              f"{m(mm[0])}, compr {m(mm[1])}, mem_used_total {m(used)} MiB: RSS - mem_used "
              f"{m(data['settled']['VmRSS'] - used)} MiB", "",
              "| mapping kind | maps | size MiB | RSS MiB | fresh RSS MiB |", "|---|---|---|---|---|"]
    fresh = data["fresh_smaps"]
    for kind, g in sorted(data["smaps"].items(), key=lambda kv: -kv[1]["rss"]):
        lines.append(f"| {kind} | {g['maps']} | {m(g['size'])} | {m(g['rss'])} | "
                     f"{m(fresh.get(kind, {}).get('rss', 0))} |")
    p = data["probe"]
    pools = p["pools"]
    mall = p.get("malloc", {})
    f = data["fresh_probe"]
    fm = f.get("malloc", {})
    anon = data["smaps"].get("anonymous", {}).get("rss", 0)
    chunks, table = pools.get("pool_chunk_resident_bytes", 0), pools.get("slot_table_resident_bytes", 0)
    lines.append(f"| anonymous: pool chunks (mincore) | | | {m(chunks)} | |")
    lines.append(f"| anonymous: slot table (mincore) | | | {m(table)} | |")
    lines.append(f"| anonymous: the rest (pymalloc arenas, library buffers, stacks) | | | {m(anon - chunks - table)} | |")
    lines += ["", f"pool: {pools.get('pool_pages', 0) * 4096 / MiB:.1f} MiB in zspages "
              f"({pools.get('pool_live_zspages', 0):,} zspages, {pools.get('pool_objects', 0):,} objects, "
              f"{pools.get('pool_chunks', 0)} chunks of 4 MiB, {m(pools.get('pool_chunk_resident_bytes', 0))} MiB "
              f"of them resident, handle table "
              f"{pools.get('pool_handle_table_bytes', 0) / MiB:.1f} MiB, {pools.get('pool_frame_tuples', 0):,} "
              f"free frames); slot table {m(pools.get('slot_table_bytes', 0))} MiB mapped, "
              f"{m(pools.get('slot_table_resident_bytes', 0))} resident",
              f"glibc malloc: heap {m(mall.get('arena', 0))} MiB, in use {m(mall.get('uordblks', 0))}, free "
              f"(kept) {m(mall.get('fordblks', 0))}, mmapped blocks {m(mall.get('hblkhd', 0))}; "
              f"Python: {p['allocated_blocks']:,} allocated blocks, {p['gc_tracked']:,} objects tracked by gc; "
              f"a full collection takes {p['full_collection_ms']:.0f} ms, then malloc_trim(0) frees "
              f"{m(p['malloc_trim_freed'])} MiB; modules: "
              + ", ".join(f"{k} {v}" for k, v in p.get("modules", {}).items()),
              f"Growth with the corpus: {p['allocated_blocks'] - f['allocated_blocks']:,} allocated blocks, "
              f"heap in use +{m(mall.get('uordblks', 0) - fm.get('uordblks', 0))} MiB",
              "", "| type (gc-tracked) | objects | MiB (getsizeof) | objects fresh | MiB fresh |",
              "|---|---|---|---|---|"]
    counts, fcounts, fsizes = dict(p["by_type"]), dict(f["by_type"]), dict(f["bytes_by_type"])
    for name, size in p["bytes_by_type"][:12]:
        lines.append(f"| {name} | {counts.get(name, 0):,} | {size / MiB:.2f} | {fcounts.get(name, 0):,} | "
                     f"{fsizes.get(name, 0) / MiB:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--settle", type=float, default=5, help="seconds after the copy before the breakdown")
    ap.add_argument("--swap", action="store_true", help="run the daemon with --swap")
    ap.add_argument("--lazy", default="", metavar="MODULES",
                    help="import these modules lazily in the daemon (comma-separated, e.g. zstandard)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    need("nbdcopy")
    work = Path(tempfile.mkdtemp(prefix="uzram-rss-"))
    try:
        imp = imports()
        img = work / "corpus.img"
        nbytes = corpus.build(img, args.corpus_mib) * corpus.PAGE
        data = with_data(img, nbytes, work, args.settle, args.swap, args.lazy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(imp, data))
    if args.json:
        args.json.write_text(json.dumps({"imports": imp, "data": data}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
