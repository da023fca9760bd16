"""uzramd --swap: the memory measures for serving swap on the same machine
are in force and reported, and a burst of writes within the pool reserve
faults in no new memory (a swap-out must not need memory only a swap-out
can free)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..daemon import Uzramd, uzramd
from ..nbdclient import NBDClient

MiB = 1 << 20


def minflt(pid: int) -> int:
    """Minor page faults of the daemon's main thread (the one serving NBD;
    the reserve is refilled by worker threads) so far: field 10 of its stat."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def burst_faults(d: Uzramd, total: int = 8 * MiB) -> int:
    """Page faults taken by the daemon while it stores ``total`` bytes of
    half-compressible pages, after a warm-up on the same connection."""
    rnd = os.urandom(MiB)
    half = b"".join(rnd[i * 4096: i * 4096 + 2048] + bytes(2048) for i in range(256))
    with NBDClient(d.nbd_sock, "zram0") as c:
        c.pwrite(0, half)
        c.pread(0, 4096)
        time.sleep(1.0)             # the reserve keeper refills after the warm-up
        before = minflt(d.proc.pid)
        for off in range(MiB, MiB + total, MiB):
            c.pwrite(off, half)
        c.pread(0, 4096)            # every write has been answered
        return minflt(d.proc.pid) - before


def wait_ready(d: Uzramd) -> dict:
    deadline = time.monotonic() + 20
    while True:
        st = d.request(cmd="hardening")["hardening"]
        if st or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def test_swap_mode_reports_its_measures(tmp_path: Path) -> None:
    with uzramd(tmp_path, "--swap", devices=("zram0:disksize=128M",)) as d:
        st = wait_ready(d)
    assert st["pymalloc"] == "malloc"
    if os.geteuid() == 0:
        assert st["locked"] is True and st["cap_ipc_lock"] is True, st
        assert st["heap_cushion"] > 0, st
    else:
        assert st["locked"] or "CAP_IPC_LOCK" in st["not_locked"], st


def test_without_swap_mode_nothing_is_locked(tmp_path: Path) -> None:
    with uzramd(tmp_path, devices=("zram0:disksize=128M",)) as d:
        st = wait_ready(d)
    assert st["locked"] is False and "--swap" in st["not_locked"], st


def test_writes_within_the_reserve_fault_in_nothing(tmp_path: Path) -> None:
    """8 MiB of writes: with --swap (prefaulted ring, slot table, heap and
    pool reserve, refilled by a worker thread) the serving thread takes
    almost no page faults; without, every new pool page is one (so the
    measurement can tell them apart)."""
    with uzramd(tmp_path / "swap", "--swap", devices=("zram0:disksize=128M",)) as d:
        wait_ready(d)
        locked = burst_faults(d)
    with uzramd(tmp_path / "plain", devices=("zram0:disksize=128M",)) as d:
        plain = burst_faults(d)
    assert plain > 1000, f"the burst faulted only {plain} pages in without --swap"
    assert locked < 100, f"with --swap the burst still faulted {locked} pages in (without: {plain})"


def test_swap_key_in_the_config_file_means_swap_mode(tmp_path: Path) -> None:
    """``swap = true`` in [uzramd] does what --swap does (malloc, lock, reserve)."""
    conf = tmp_path / "uzramd.toml"
    conf.write_text('[uzramd]\nswap = true\nreserve = "16M"\n[zram0]\ndisksize = "64M"\n')
    with uzramd(tmp_path / "d", "--config", str(conf), devices=()) as d:
        st = wait_ready(d)
        deadline = time.monotonic() + 20
        while st["reserve"] == 0 and time.monotonic() < deadline:   # the keeper gives the pool its reserve
            time.sleep(0.05)
            st = wait_ready(d)
    assert st["pymalloc"] == "malloc" and st["reserve"] == 16 * MiB, st
    if os.geteuid() == 0:
        assert st["locked"] is True, st
