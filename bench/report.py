"""The performance targets, and a bench/run.py result turned into rows with
a pass/fail mark each, as a markdown table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    """uzram's figure against a reference: ``ratio`` at least (or at most) ``bound``."""
    job: str          # the fio / copy job of results["fio"], or a special row
    label: str
    key: str          # mbps, iops or a latency percentile
    versus: str       # "kernel zram", "nbdkit" or "one device"
    bound: float
    at_most: bool = False


TARGETS = (
    Target("128k write", "sequential write 128 KiB, QD16", "mbps", "kernel zram", 0.8),
    Target("128k read", "sequential read 128 KiB, QD16", "mbps", "kernel zram", 0.8),
    Target("4k randread", "random read 4 KiB, QD16", "iops", "nbdkit", 1.2),
    Target("4k randwrite", "random write 4 KiB, QD16", "iops", "nbdkit", 0.9),
    Target("4k randread QD1", "p99 latency of 4 KiB reads, QD1", "p99", "nbdkit", 1.5, at_most=True),
    Target("multi 4k randread", "two devices at once: random read 4 KiB, QD16 each", "iops", "one device", 1.5),
    Target("multi 128k write", "two devices at once: sequential write 128 KiB, QD16 each", "mbps", "one device", 1.5),
)
MEMORY_SLACK = 32 * MiB   # uzramd's RSS may exceed the kernel's mem_used_total by this much
SERVERS = ("uzram", "kernel zram", "nbdkit")
BASELINE = "uzram baseline"   # --baseline: another checkout's uzram, measured in the same rounds


def _value(row: dict[str, Any] | None, key: str) -> float | None:
    if not row:
        return None
    if key == "p99":
        return float(row["lat_pct_us"]["99.0"])
    return float(row[key])


def _fmt(v: float | None, key: str, row: dict[str, Any] | None = None) -> str:
    if v is None:
        return "n/a"
    if key == "p99" and row:   # the median request next to the tail
        return f"{v:,.0f} µs (p50 {row['lat_pct_us']['50.0']:,.0f} µs)"
    return {"mbps": f"{v:,.0f} MB/s", "iops": f"{v:,.0f} IOPS", "p99": f"{v:,.0f} µs"}[key]


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per target: the figures, the ratio, the bound and ``pass`` (None: not measured)."""
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        if t.job.startswith("multi "):
            m = r["multi"][t.job.removeprefix("multi ")]
            uz, ref = m["two"][t.key], m["one"][t.key]
            others: dict[str, float | None] = {}
        else:
            servers = r["fio"][t.job]
            uz = _value(servers.get("uzram"), t.key)
            others = {s: _value(servers.get(s), t.key) for s in ("kernel zram", "nbdkit")}
            ref = others[t.versus]
        ratio = uz / ref if uz is not None and ref else None
        ok = None if ratio is None else (ratio <= t.bound if t.at_most else ratio >= t.bound)
        out.append({"measure": t.label, "job": t.job, "key": t.key, "uzram": uz, "versus": t.versus,
                    "reference": ref, "others": others, "ratio": ratio,
                    "target": f"{'≤' if t.at_most else '≥'}{t.bound:g}× {t.versus}", "pass": ok})
    mem = r["memory"]
    uz_rss, kern = mem["uzram"]["rss"], mem.get("kernel")
    diff = uz_rss - kern["mem_used"] if kern else None
    out.append({"measure": "memory: uzramd RSS holding the corpus", "job": "memory", "key": "bytes",
                "uzram": uz_rss, "versus": "kernel zram mem_used_total",
                "reference": kern["mem_used"] if kern else None, "others": {}, "difference": diff,
                "target": f"≤ kernel mem_used_total + {MEMORY_SLACK // MiB} MiB",
                "pass": None if diff is None else diff <= MEMORY_SLACK})
    out.append({"measure": "memory: a fresh uzramd's RSS", "job": "memory", "key": "bytes",
                "uzram": mem["uzram"]["fresh_rss"], "versus": None, "reference": None, "others": {},
                "target": None, "pass": None})
    return out


def _cpus(r: dict[str, Any], job: str) -> str:
    """The CPUs in use alone and together, when the run measured them: on a
    machine with few cores the clients' share bounds what two devices add."""
    m = r["multi"][job.removeprefix("multi ")]
    one, two = m["one"], m["two"]
    if "machine_cpus" not in one or "machine_cpus" not in two:
        return ""
    return (f"; CPUs busy: {one['machine_cpus']:.1f} → {two['machine_cpus']:.1f} of "
            f"{r['machine']['cores']}, uzramd {one['daemon_cpus']:.1f} → {two['daemon_cpus']:.1f}")


def _mark(ok: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "n/a"}[ok]


def markdown(r: dict[str, Any]) -> str:
    m, load = r["machine"], r["load"]
    c = r["corpus"]
    shares = ", ".join(f"{100 * n / c['pages']:.0f}% {kind}" for kind, n in c["census"].items())
    kernel = ("kernel zram: the host's zram0, configured for the run and reset after it" if r["kernel"] is None
              else f"kernel zram: not measured ({r['kernel']})")
    lines = [
        f"uzram benchmark, {r['date']}: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; "
        f"load average {'/'.join(f'{x:.2f}' for x in load['start'])} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load['end'])} at the end.",
        "",
        f"{r['algorithm']}; a seeded {c['bytes'] // MiB} MiB swap-like corpus (seed {c['seed']}: {shares}); "
        f"medians of {r['rounds']} interleaved rounds of {r['seconds']:g} s. Reads and 4 KiB writes: "
        f"{m['tools']['fio']} (nbd engine over a UNIX socket; libaio, O_DIRECT on /dev/zram0); "
        f"128 KiB writes copy the corpus: {m['tools']['nbdcopy']} (one connection, 16 requests of 128 KiB in flight), "
        f"dd oflag=direct on /dev/zram0. 4 KiB random writes carry fio's buffers, 55% compressible. "
        f"{kernel}. nbdkit memory: {m['tools']['nbdkit']}. Two devices: "
        + ("each in its own worker process (`--process-per-device`)." if r.get("multi_mode", "one") == "process"
           else "both in one process."),
        "",
        "| measure | uzram | kernel zram | nbdkit memory | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows(r):
        if row["job"] == "memory":
            uz = f"{row['uzram'] / MiB:,.0f} MiB RSS"
            if row["target"] is None:
                lines.append(f"| {row['measure']} | {uz} | | | | | |")
                continue
            kern = f"{row['reference'] / MiB:,.0f} MiB mem_used_total" if row["reference"] is not None else "n/a"
            diff = f"**{row['difference'] / MiB:+,.0f} MiB**" if row["difference"] is not None else "n/a"
            lines.append(f"| {row['measure']} | {uz} | {kern} | | {diff} | {row['target']} | {_mark(row['pass'])} |")
            continue
        key = row["key"]
        ratio = f"**{row['ratio']:.2f}×** {row['versus']}" if row["ratio"] is not None else "n/a"
        if row["versus"] == "one device":
            lines.append(f"| {row['measure']} | {_fmt(row['uzram'], key)} together | | | {ratio} "
                         f"({_fmt(row['reference'], key)} alone{_cpus(r, row['job'])}) | {row['target']} | "
                         f"{_mark(row['pass'])} |")
            continue
        other = "nbdkit" if row["versus"] == "kernel zram" else "kernel zram"
        if row["uzram"] is not None and row["others"].get(other):
            ratio += f" ({row['uzram'] / row['others'][other]:.2f}× {other})"
        fio = r["fio"][row["job"]]
        cells = [_fmt(v, key, fio.get(s)) for s, v in (("uzram", row["uzram"]), ("kernel zram", row["others"]["kernel zram"]),
                                                       ("nbdkit", row["others"]["nbdkit"]))]
        lines.append(f"| {row['measure']} | {' | '.join(cells)} | {ratio} | {row['target']} | {_mark(row['pass'])} |")
    u, k = r["memory"]["uzram"], r["memory"].get("kernel")
    lines += ["", "Storing the corpus (one device, its size; mm_stat):", "",
              "| | uzram | kernel zram |", "|---|---|---|"]
    for label, key, fmt in (("orig / compr_data_size", "ratio_compr", "{:.2f}"),
                            ("orig / mem_used_total", "ratio_mem", "{:.2f}"),
                            ("mem_used_total (MiB)", "mem_used_mib", "{:.1f}"),
                            ("same-filled pages", "same_pages", "{}"), ("huge pages", "huge_pages", "{}")):
        lines.append(f"| {label} | {fmt.format(u[key])} | " + (fmt.format(k[key]) if k else "n/a") + " |")
    lines.append(f"| daemon RSS, RssAnon (MiB) | {u['rss'] / MiB:.1f}, {u['rss_anon'] / MiB:.1f} | |")
    lines += baseline_table(r)
    return "\n".join(lines)


def baseline_table(r: dict[str, Any]) -> list[str]:
    """With --baseline: this uzram against the other checkout's, job by job."""
    if not r.get("baseline"):
        return []
    lines = ["", f"This uzram against the baseline ({r['baseline']}), same rounds:", "",
             "| job | uzram | baseline | ratio |", "|---|---|---|---|"]
    for job, servers in r["fio"].items():
        new, old = servers.get("uzram"), servers.get(BASELINE)
        if not new or not old:
            continue
        key = "mbps" if job.startswith("128k") else "iops"
        lines.append(f"| {job} | {_fmt(new[key], key)} | {_fmt(old[key], key)} | {new[key] / max(old[key], 1e-9):.2f}× |")
        if "lat_pct_us" in new and "lat_pct_us" in old and job.endswith("QD1"):
            n99, o99 = _value(new, "p99"), _value(old, "p99")
            lines.append(f"| {job} p99 | {_fmt(n99, 'p99')} | {_fmt(o99, 'p99')} | {(n99 or 0) / max(o99 or 1e-9, 1e-9):.2f}× |")
    return lines
