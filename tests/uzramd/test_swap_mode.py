"""uzramd --swap: the memory measures for serving swap on the same machine
are in force and reported, and a burst of writes within the pool reserve
faults in no new memory (a swap-out must not need memory only a swap-out
can free)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from uzram.daemon import hardening

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
        refilled(d)                 # (and on a loaded machine, waits until it has)
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


def refilled(d: Uzramd, timeout: float = 30) -> None:
    """Until the pool's reserve is full (at once without one): a sleep
    alone leaves it to the scheduler."""
    deadline = time.monotonic() + timeout
    while (st := d.request(cmd="hardening")["hardening"]).get("reserve_free", 0) < st.get("reserve", 0):
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def policies(pid: int, field: int = 41) -> dict[str, set[int]]:
    """Scheduling policy (0 other, 2 rr) of the daemon's threads, by name;
    or another ``field`` of their stat (9: the kernel's task flags)."""
    found: dict[str, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            value = int(f.read().rsplit(")", 1)[1].split()[field - 3])
        found.setdefault("main" if tid == str(pid) else name, set()).add(value)
    return found


def test_only_the_feed_may_swap_out_in_its_reclaim(tmp_path: Path) -> None:
    """Threads inherit PR_SET_IO_FLUSHER. The serving thread keeps it (its
    reclaim must not wait on its own device); the pool's feed drops it: with
    no I/O in its reclaim it could free no anonymous page, so under global
    pressure it never grew the pool and every swap-out after the reserve
    was refused (a guest without sysctls hung so). The reply's count is
    checked against the kernel's task flags; where the daemon may not set
    PR_SET_IO_FLUSHER (no CAP_SYS_RESOURCE), no thread has it, and the QEMU
    global-pressure test checks the feed in a guest where it may."""
    with uzramd(tmp_path, "--swap", devices=("zram0:disksize=128M",)) as d:
        st = wait_ready(d)
        deadline = time.monotonic() + 20
        while (st := d.request(cmd="hardening")["hardening"])["feeds_reclaim_io"] < 1:
            if time.monotonic() > deadline:
                break           # (then the asserts below say what is wrong)
            time.sleep(0.05)
        flags = policies(d.proc.pid, field=9)
    noio = hardening.PF_MEMALLOC_NOIO
    assert st["feeds"] == 1 and st["feeds_reclaim_io"] == 1, st
    assert not any(f & noio for f in flags["uzram-feed-zram"]), flags
    assert all(bool(f & noio) == st["io_flusher"] for f in flags["main"]), (flags, st)
    assert st["io_flusher"] == st["cap_sys_resource"], st


def test_swap_mode_reports_its_measures(tmp_path: Path) -> None:
    with uzramd(tmp_path, "--swap", devices=("zram0:disksize=128M",)) as d:
        st = wait_ready(d)
        deadline = time.monotonic() + 20
        while "uzram-feed-zram" not in (threads := policies(d.proc.pid)):
            assert time.monotonic() < deadline, threads
            time.sleep(0.05)
    assert st["pymalloc"] == "malloc"
    if os.geteuid() == 0:   # serving and feeding the pool real-time
        assert threads["main"] == threads["uzram-feed-zram"] == {2}, threads
    if os.geteuid() == 0:
        assert st["locked"] is True and st["cap_ipc_lock"] is True, st
        assert st["heap_cushion"] > 0, st
        assert st["realtime"] is True, st
    else:
        assert st["locked"] or "CAP_IPC_LOCK" in st["not_locked"], st


def test_without_swap_mode_nothing_is_locked(tmp_path: Path) -> None:
    with uzramd(tmp_path, devices=("zram0:disksize=128M",)) as d:
        st = wait_ready(d)
    assert st["locked"] is False and "--swap" in st["not_locked"], st
    assert st["realtime"] is False, st
    assert st["swap"] is False and not any(k.startswith("vm_") for k in st), st   # not a swap server


def test_swap_mode_reports_the_vm_settings_swap_needs(tmp_path: Path) -> None:
    """The machine's own values, read when asked, and what is short of
    systemd/uzram-swap's (whichever way this machine is set)."""
    now = {name: int(Path(f"/proc/sys/vm/{name}").read_text()) for name in hardening.VM_NEEDS}
    with uzramd(tmp_path, "--swap", devices=("zram0:disksize=64M",)) as d:
        st = wait_ready(d)
    assert st["swap"] is True
    short = [name for name, need in hardening.VM_NEEDS.items() if now[name] < need]
    for name in hardening.VM_NEEDS:
        assert st[f"vm_{name}"] == now[name], st
        assert (f"vm.{name} {now[name]} < " in st.get("vm_short", "")) == (name in short), st
    assert ("vm_short" in st) == bool(short), st


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


# Calls that take the mmap_lock for writing (or start and end threads,
# which map and unmap their Python frame stacks). Queued behind a thread in
# reclaim, one of them stops every page fault of the daemon, the serving
# thread's included: under global pressure, a hung guest (see
# uzram/zram/arena.py).
ADDRESS_SPACE_CALLS = ("mmap", "munmap", "mremap", "mprotect", "brk", "mlock", "mlock2", "munlock",
                       "mlockall", "munlockall", "clone", "clone3")


def traced(pid: int, log: Path) -> subprocess.Popen:
    """strace on every thread of ``pid``, returned once attached."""
    tids = os.listdir(f"/proc/{pid}/task")
    st = subprocess.Popen(["strace", "-f", "-qq", "-o", str(log), "-e", "trace=" + ",".join(ADDRESS_SPACE_CALLS),
                           *[a for t in tids for a in ("-p", t)]])
    deadline = time.monotonic() + 10
    while not all(tracer(pid, t) for t in tids):
        assert time.monotonic() < deadline and st.poll() is None, "strace did not attach"
        time.sleep(0.05)
    return st


def tracer(pid: int, tid: str) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])
    except (OSError, StopIteration):
        return 1   # gone: nothing to wait for


@pytest.mark.skipif(os.geteuid() != 0, reason="mlockall and strace need root")
def test_serving_swap_changes_no_mapping(tmp_path: Path) -> None:
    """With --swap, once warm, nothing the daemon does for a swap client maps,
    unmaps or locks memory or starts a thread: writes beyond the reserve (the
    feed refills it), overwrites and TRIMs (frames given back), reads,
    writeback of huge and idle pages and reads of them, compaction, and all
    of it again after 11 s idle (trio would have ended its worker threads),
    and a new connection each time."""
    assert shutil.which("strace"), "strace is missing: scripts/setup installs it"
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    backing.chmod(0o600)
    rnd = os.urandom(MiB)
    half = b"".join(rnd[i * 4096: i * 4096 + 2048] + bytes(2048) for i in range(256))
    with uzramd(tmp_path / "d", "--swap", "--reserve", "8M",
                devices=(f"zram0:backing_dev={backing},disksize=128M",)) as d:
        assert wait_ready(d)["locked"] is True
        with NBDClient(d.nbd_sock, "zram0") as c:
            c.pwrite(0, rnd)                  # the connection's first request of each kind
            c.pread(0, MiB)
            c.trim(0, MiB)
            with NBDClient(d.nbd_sock, "zram0") as c2:   # its ring is kept for the next connection
                c2.pread(0, 4096)
            time.sleep(1.0)                   # the keeper has given the pool its reserve and threads
            refilled(d)
            st = traced(d.proc.pid, tmp_path / "strace.log")
            try:
                for rounds in range(2):
                    for off in range(0, 32 * MiB, MiB):
                        c.pwrite(off, half if off % (3 * MiB) else os.urandom(MiB))
                    for off in range(0, 32 * MiB, 2 * MiB):
                        c.pwrite(off, half)   # overwrites free objects
                    c.trim(16 * MiB, 8 * MiB)
                    for store in (("idle", "all"), ("writeback", "huge"), ("writeback", "idle")):
                        d.store("zram0", *store)
                    for off in range(0, 32 * MiB, MiB):
                        c.pread(off, MiB)     # written-back pages included
                    d.store("zram0", "compact", "1")
                    with NBDClient(d.nbd_sock, "zram0") as c2:   # a new connection takes a kept ring
                        assert c2.pread(0, 4096) == c.pread(0, 4096)
                    if not rounds:
                        time.sleep(11)
                assert int(d.show("zram0", "bd_stat").split()[2]) > 0, "nothing was written back"
            finally:
                st.send_signal(signal.SIGINT)
                st.wait(10)
    calls = [line for line in (tmp_path / "strace.log").read_text().splitlines()
             if line.split(None, 1)[1].split("(", 1)[0] in ADDRESS_SPACE_CALLS]
    assert not calls, "address-space calls while serving:\n" + "\n".join(calls[:20])


def test_vm_settings_name_what_is_short(tmp_path: Path) -> None:
    """Below, at and above systemd/uzram-swap's values, and unreadable."""
    (tmp_path / "min_free_kbytes").write_text("2508\n")
    (tmp_path / "watermark_scale_factor").write_text("500\n")
    st = hardening.vm_settings(str(tmp_path))
    assert st["vm_min_free_kbytes"] == 2508 and st["vm_watermark_scale_factor"] == 500
    short = str(st["vm_short"])
    assert short.startswith("vm.min_free_kbytes 2508 < 16384: ") and "watermark_scale_factor 500 <" not in short
    assert "`systemd/uzram-swap start` raises vm.min_free_kbytes to 16384 and vm.watermark_scale_factor to 500" \
        in short
    (tmp_path / "min_free_kbytes").write_text("65536\n")
    assert hardening.vm_settings(str(tmp_path)) == {"vm_min_free_kbytes": 65536, "vm_watermark_scale_factor": 500}
    (tmp_path / "watermark_scale_factor").unlink()
    assert hardening.vm_settings(str(tmp_path)) == {"vm_min_free_kbytes": 65536, "vm_watermark_scale_factor": None}
