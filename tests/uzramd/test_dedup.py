"""uzramd --dedup: pages read over NBD and written to other blocks unchanged
(a swap-in, then a swap-out to a new slot) take no new pool memory; on by
default under --swap, and reported by ``hardening``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..daemon import Uzramd, uzramd
from ..nbdclient import NBDClient

MiB = 1 << 20
PAGES = 1024


def half_pages(n: int) -> bytes:
    rnd = os.urandom(n * 2048)
    return b"".join(rnd[i * 2048: (i + 1) * 2048] + bytes(2048) for i in range(n))


def mem_used(d: Uzramd, dev: str = "zram0") -> int:
    return int(d.show(dev, "mm_stat").split()[2])


def reswap(d: Uzramd, dev: str = "zram0") -> tuple[int, int]:
    """mem_used_total after writing 4 MiB, and after reading it back and
    writing it 32 MiB further on (before the old blocks are trimmed)."""
    data = half_pages(PAGES)
    with NBDClient(d.nbd_sock, dev) as c:
        c.pwrite(0, data)
        before = mem_used(d, dev)
        for off in range(0, len(data), 128 * 1024):   # swap-ins of 32 pages, then 32 swap-outs
            chunk = c.pread(off, 128 * 1024)
            assert chunk == data[off: off + 128 * 1024]
            c.pwrite(32 * MiB + off, chunk)
        assert c.pread(32 * MiB, len(data)) == data
        after = mem_used(d, dev)
        c.trim(0, len(data))                          # the old slots freed: the copies stay
        assert c.pread(32 * MiB, len(data)) == data
    return before, after


def test_swap_mode_shares_reswapped_pages(tmp_path: Path) -> None:
    with uzramd(tmp_path, "--swap", devices=("zram0:disksize=64M",)) as d:
        before, after = reswap(d)
        st = d.request(cmd="hardening")["hardening"]
    # a key collision in the table of recent reads loses a page now and then
    assert st["dedup"] is True and st["dedup_shares"] >= PAGES * 0.97, st
    assert st["dedup_pages"] == 0, st    # the TRIM dropped the other references
    assert after <= before * 1.03, (before, after)


def test_dedup_off(tmp_path: Path) -> None:
    with uzramd(tmp_path, "--swap", "--dedup", "off", devices=("zram0:disksize=64M",)) as d:
        before, after = reswap(d)
        st = d.request(cmd="hardening")["hardening"]
    assert st["dedup"] is False and st["dedup_shares"] == 0, st
    assert after > 1.8 * before, (before, after)   # both copies


def test_dedup_in_a_device_process(tmp_path: Path) -> None:
    """``dedup = true`` from the file, without swap, in a worker process."""
    conf = tmp_path / "uzramd.toml"
    conf.write_text('[uzramd]\ndedup = true\n[zram0]\ndisksize = "64M"\n')
    with uzramd(tmp_path / "d", "--config", str(conf), "--process-per-device", devices=()) as d:
        before, after = reswap(d)
    assert after <= before * 1.03, (before, after)


def test_a_bad_dedup_value_is_refused(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "uzram.daemon", "--dedup", "yes",
                          "--control", str(tmp_path / "c.sock")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--dedup: bad value 'yes': on or off" in run.stderr, run.stderr
    conf = tmp_path / "uzramd.toml"
    conf.write_text('[uzramd]\ndedup = "yes"\n')
    run = subprocess.run([sys.executable, "-m", "uzram.daemon", "--config", str(conf),
                          "--control", str(tmp_path / "c.sock")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "dedup must be true or false" in run.stderr, run.stderr


