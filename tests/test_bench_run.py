"""bench/run.py --quick end to end: every target has its row, with a mark,
in the markdown table and in the JSON; the host's zram0 is left as found.
No figure is checked: the machine's speed is not the code's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.targets import KERNEL_SYSFS

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(any(shutil.which(t) is None for t in ("fio", "nbdkit", "nbdcopy", "dd")),
                                 reason="needs fio, nbdkit and nbdcopy (scripts/setup installs them)")]


def kernel_disksize() -> str | None:
    try:
        return (KERNEL_SYSFS / "disksize").read_text().strip()
    except OSError:
        return None


def test_quick_run_reports_every_target(tmp_path):
    before = kernel_disksize()
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert kernel_disksize() == before
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    for t in report.TARGETS:
        row = next(line for line in table if line.startswith(f"| {t.label} |"))
        assert row.endswith(("| pass |", "| **FAIL** |", "| n/a |")), row
    for label in ("memory: uzramd RSS holding the corpus", "memory: a fresh uzramd's RSS"):
        assert any(line.startswith(f"| {label} |") for line in table)
    assert "load average" in r.stdout and " cores, Linux " in r.stdout
    saved = json.loads(out.read_text())
    assert [row["measure"] for row in saved["rows"]] == [t.label for t in report.TARGETS] + [
        "memory: uzramd RSS holding the corpus", "memory: a fresh uzramd's RSS"]
    assert saved["corpus"]["census"]["same-filled"] == round(saved["corpus"]["pages"] * 0.14)
    assert saved["corpus"]["census"]["incompressible"] == round(saved["corpus"]["pages"] * 0.13)
    assert all(k in saved["load"] for k in ("start", "end"))
    cores = saved["machine"]["cores"]
    for job, sides in saved["multi"].items():   # the CPUs in use, daemon and machine, were measured
        for side in ("one", "two"):
            use = sides[side]
            assert 0 < use["daemon_cpus"] <= use["machine_cpus"] * 1.1 + 0.05, (job, side, use)
            assert use["machine_cpus"] <= cores * 1.05, (job, side, use)
        kind = "random read" if job == "4k randread" else "sequential write"
        row = next(line for line in table if line.startswith(f"| two devices at once: {kind}"))
        assert "CPUs busy: " in row and f" of {cores}, uzramd " in row, row
    if saved["kernel"] is None:   # the host's zram0 was used: every kernel figure is there
        assert all(row["pass"] is not None for row in saved["rows"] if row["target"])
    else:
        assert f"kernel zram: not measured ({saved['kernel']})" in r.stdout
