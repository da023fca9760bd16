"""bench/plots.py draws the three PNGs from a bench/run.py result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def result() -> dict:
    pct = {"1.0": 20.0, "50.0": 60.0, "90.0": 120.0, "99.0": 400.0, "99.9": 900.0}
    row = lambda n: {"iops": n, "mbps": n / 100, "lat_us": 70.0, "clat_pct_us": pct}  # noqa: E731
    ratio = lambda x: {"ratio_compr": x, "ratio_mem": x * 0.97}  # noqa: E731
    return {
        "algorithm": "lz4", "rounds": 1, "seconds": 1, "cpus": 2, "corpus_bytes": 249 << 20,
        "fio": {j: {"nbdkit": row(150000), "uzram": row(100000), "kernel zram": row(230000)}
                for j in ("4k randwrite", "4k randread", "128k write", "128k read")},
        "nbdcopy": {"nbdkit": {"write": 2800, "read": 3500}, "uzramd": {"write": 700, "read": 1500}},
        "memory": {"uzram": {"ratio_compr": 2.9, "ratio_mem": 2.8, "same_pages": 1, "huge_pages": 2,
                             "rss_per_stored_byte": 0.37}},
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
    assert "| fio 4k randread | 150,000 IOPS | 100,000 IOPS | **0.67×** |" in r.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bench-compression.png", "bench-latency-cdf.png", "bench-throughput.png"]
    for p in out.iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
