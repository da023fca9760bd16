"""bench/plots.py draws the three PNGs from a bench/run.py result, and the
report of a saved result has its rows and marks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def result() -> dict[str, Any]:
    pct = {"1.0": 20.0, "50.0": 60.0, "90.0": 120.0, "99.0": 400.0, "99.9": 900.0}
    row = lambda n: {"iops": n, "mbps": n / 100, "lat_us": 70.0, "lat_pct_us": pct}  # noqa: E731
    ratio = lambda x: {"ratio_compr": x, "ratio_mem": x * 0.97}  # noqa: E731
    mm = {"ratio_compr": 2.3, "ratio_mem": 2.0, "mem_used_mib": 110.0, "same_pages": 9175, "huge_pages": 8520}
    return {
        "date": "2026-12-02 08:00 UTC", "algorithm": "lz4", "rounds": 1, "seconds": 1, "quick": False,
        "kernel": None, "loadavg": [1.0, 1.5], "load": {"start": [1.0, 0.9, 0.8], "end": [1.5, 1.0, 0.9]},
        "machine": {"cpu": "Some CPU", "cores": 2, "kernel": "6.1.0", "python": "3.11.7",
                    "tools": {"fio": "fio-3.33", "nbdcopy": "nbdcopy 1.14.2", "nbdkit": "nbdkit 1.32.5"}},
        "corpus": {"bytes": 256 * MiB, "pages": 65536, "seed": 7,
                   "census": {"same-filled": 9175, "incompressible": 8520, "heap-like": 28705,
                              "text-like": 19136}},
        "fio": {j: {"nbdkit": row(150000), "uzram": row(100000), "kernel zram": row(230000)}
                for j in ("128k write", "128k read", "4k randread", "4k randread QD1", "4k randwrite")},
        "multi": {j: {"one": row(100000), "two": row(160000)} for j in ("4k randread", "128k write")},
        "memory": {"uzram": {**mm, "fresh_rss": 40 * MiB, "rss": 150 * MiB, "rss_anon": 120 * MiB},
                   "kernel": {**mm, "mem_used": 110 * MiB}},
        "ratios": {"lzo-rle": {"uzram": ratio(3.1), "kernel": ratio(3.1)},
                   "zstd": {"uzram": ratio(5.1), "kernel": None}},
    }


def test_plots_from_a_saved_result(tmp_path):
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(result()))
    out = tmp_path / "png"
    r = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--from-json", str(saved), "--plots", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ("| random read 4 KiB, QD16 | 100,000 IOPS | 230,000 IOPS | 150,000 IOPS | **0.67×** nbdkit "
            "(0.43× kernel zram) | ≥1.2× nbdkit | **FAIL** |") in r.stdout
    assert "| **1.60×** one device (100,000 IOPS alone) | ≥1.5× one device | pass |" in r.stdout
    assert "| 150 MiB RSS | 110 MiB mem_used_total | | **+40 MiB** | ≤ kernel mem_used_total + 32 MiB | **FAIL** |" \
        in r.stdout
    assert "CPUs busy" not in r.stdout   # a result saved before they were measured
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bench-compression.png", "bench-latency-cdf.png", "bench-throughput.png"]
    for p in out.iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000


def test_report_shows_the_cpus_in_use(tmp_path):
    r = result()
    m = r["multi"]["4k randread"]
    m["one"] |= {"machine_cpus": 1.74, "daemon_cpus": 0.98}
    m["two"] |= {"machine_cpus": 1.98, "daemon_cpus": 1.21}
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(r))
    p = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--from-json", str(saved)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert ("| **1.60×** one device (100,000 IOPS alone; CPUs busy: 1.7 → 2.0 of 2, uzramd 1.0 → 1.2) "
            "| ≥1.5× one device | pass |") in p.stdout
    assert p.stdout.count("CPUs busy") == 1   # the 128 KiB row's were not measured
