"""PNG plots of a bench/run.py result (matplotlib: ``pip install 'uzram[plots]'``):
throughput and IOPS against nbdkit and the kernel's zram, the 4 KiB latency
CDF, and the compression ratio per algorithm against the kernel's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVERS = (("nbdkit", "nbdkit memory", "#999999"), ("uzram", "uzram", "#1f77b4"),
           ("kernel zram", "kernel zram (block device)", "#2ca02c"))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench: --plots needs matplotlib: pip install 'uzram[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt: Any, fig: Any, path: Path, title: str | None = None) -> None:
    if title is not None:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _subtitle(r: dict[str, Any]) -> str:
    load = r.get("loadavg")
    busy = f"; load average {load[0]:.1f} at the start, {load[-1]:.1f} at the end" if load else ""
    return (f"{r['algorithm']}, {r['machine']['cores']} CPUs, medians of {r['rounds']} rounds of {r['seconds']:g} s; "
            f"fio QD16 (nbd engine over a UNIX socket), corpus writes with nbdcopy / dd{busy}")


def throughput(r: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (unit, key, jobs) in zip(axes, (("IOPS", "iops", ("4k randwrite", "4k randread")),
                                            ("MB/s", "mbps", ("128k write", "128k read")))):
        present = [s for s in SERVERS if any(s[0] in r["fio"][j] for j in jobs)]
        width = 0.8 / len(present)
        for i, (name, label, color) in enumerate(present):
            xs = [x + (i - (len(present) - 1) / 2) * width for x in range(len(jobs))]
            vals = [r["fio"][j].get(name, {}).get(key, 0) for j in jobs]
            bars = ax.bar(xs, vals, width, label=label, color=color)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7)
        ax.set_xticks(range(len(jobs)), list(jobs))
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    _save(plt, fig, path, "uzram against nbdkit's memory plugin and the kernel's zram\n" + _subtitle(r))


def latency_cdf(r: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    jobs = [j for j in ("4k randread QD1", "4k randread", "4k randwrite") if j in r["fio"]]
    fig, axes = plt.subplots(1, len(jobs), figsize=(5.5 * len(jobs), 4.2), sharey=True)
    for ax, job in zip(axes, jobs):
        for name, label, color in SERVERS:
            row = r["fio"].get(job, {}).get(name)
            if not row or not row.get("lat_pct_us"):
                continue
            pts = sorted((float(p), v) for p, v in row["lat_pct_us"].items())
            ax.plot([v for _, v in pts], [p / 100 for p, _ in pts], marker=".", label=label, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("latency, submission to completion (µs, log scale)")
        ax.set_title(f"fio {job}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of requests")
    _save(plt, fig, path, "Latency CDF of 4 KiB requests\n" + _subtitle(r))


def compression(r: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    ratios = r["ratios"]
    algs = list(ratios)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.38
    for i, (who, label, color) in enumerate((("uzram", "uzram", "#1f77b4"), ("kernel", "kernel zram", "#2ca02c"))):
        vals = [(ratios[a][who] or {}).get("ratio_compr", 0) for a in algs]
        bars = ax.bar([x + (i - 0.5) * width for x in range(len(algs))], vals, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in vals], fontsize=8)
    ax.set_xticks(range(len(algs)), algs)
    ax.set_ylabel("orig_data_size / compr_data_size")
    ax.legend(fontsize=8)
    ax.set_title(f"Compression ratio on the {r['corpus']['bytes'] >> 20} MiB swap-like corpus "
                 "(kernel: n/a where the host's zram lacks the algorithm)", fontsize=9)
    _save(plt, fig, path)


def write_all(r: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fn in (("bench-throughput.png", throughput), ("bench-latency-cdf.png", latency_cdf),
                     ("bench-compression.png", compression)):
        if fn is compression and "ratios" not in r:
            continue
        fn(r, directory / name)
        out.append(directory / name)
    return out
