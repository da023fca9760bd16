"""Compression ratio per algorithm on the swap-like corpus: uzram's device
model side by side with the host kernel's zram0 (when root can use it; it is
reset afterwards).

    python bench/ratios.py [--corpus-mib 256] [--algorithms lzo-rle,lzo,lz4,zstd] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import corpus  # noqa: E402
from uzram.zram import ZramDevice  # noqa: E402

ALGORITHMS = ("lzo-rle", "lzo", "lz4", "zstd")
FIELDS = ("orig", "compr", "mem_used", "same_pages", "huge_pages")


def _row(mm: list[int]) -> dict[str, float]:
    row: dict[str, float] = dict(zip(FIELDS, (mm[0], mm[1], mm[2], mm[5], mm[7])))
    row["ratio_compr"] = mm[0] / max(mm[1], 1)
    row["ratio_mem"] = mm[0] / max(mm[2], 1)
    return row


def uzram_stats(img: Path, alg: str) -> dict[str, float]:
    size = img.stat().st_size
    dev = ZramDevice()
    dev.store("comp_algorithm", alg)
    dev.store("disksize", str(size))
    with open(img, "rb") as f:
        off = 0
        while chunk := f.read(1 << 20):
            dev.write(off, memoryview(chunk), False)
            off += len(chunk)
    row = _row([int(x) for x in dev.show("mm_stat").split()])
    dev.reset()
    return row


def kernel_stats(img: Path, alg: str) -> dict[str, float] | None:
    sysfs = Path("/sys/block/zram0")
    if os.geteuid() != 0 or not sysfs.exists() or (sysfs / "initstate").read_text().strip() != "0":
        return None
    if alg not in (sysfs / "comp_algorithm").read_text().replace("[", " ").replace("]", " ").split():
        return None
    try:
        (sysfs / "reset").write_text("1")
        (sysfs / "comp_algorithm").write_text(alg)
        (sysfs / "disksize").write_text(str(img.stat().st_size))
        subprocess.run(["dd", f"if={img}", "of=/dev/zram0", "bs=1M", "oflag=direct", "status=none"], check=True)
        return _row([int(x) for x in (sysfs / "mm_stat").read_text().split()])
    finally:
        (sysfs / "reset").write_text("1")


def measure(img: Path, algorithms: tuple[str, ...] = ALGORITHMS) -> dict[str, dict[str, dict[str, float] | None]]:
    return {alg: {"uzram": uzram_stats(img, alg), "kernel": kernel_stats(img, alg)} for alg in algorithms}


def cell(x: dict[str, float]) -> str:
    return f"{x['ratio_compr']:.3f} ({x['ratio_mem']:.3f})"


def report(results: dict[str, dict[str, dict[str, float] | None]], corpus_bytes: int) -> str:
    lines = [f"Corpus: {corpus_bytes >> 20} MiB. orig_data_size / compr_data_size "
             "(orig / mem_used_total in parentheses):", "",
             "| algorithm | uzram | kernel zram | uzram / kernel |", "|---|---|---|---|"]
    for alg, r in results.items():
        u, k = r["uzram"], r["kernel"]
        assert u is not None
        lines.append(f"| {alg} | {cell(u)} | " + (cell(k) if k else "n/a") + " | "
                     + (f"{u['ratio_compr'] / k['ratio_compr']:.3f}" if k else "") + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-mib", type=int, default=256)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="uzram-ratios-") as tmp:
        img = Path(tmp) / "corpus.img"
        pages = corpus.build(img, args.corpus_mib)
        results = measure(img, tuple(args.algorithms.split(",")))
    print(report(results, pages * corpus.PAGE))
    if args.json:
        args.json.write_text(json.dumps({"corpus_bytes": pages * corpus.PAGE, "ratios": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
