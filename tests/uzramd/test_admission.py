"""Admission while the pool reserve runs low: a real uzramd ``--swap`` whose
file size limit is lowered while it runs (``prlimit``) to the size of its
pool's memfd, so its reserve feed can add no memory to the pool, as under
memory pressure. Work that allocates is
refused with EAGAIN; writeback is admitted, and the memory it frees lets
the reserve recover. Entering and leaving the state is logged and counted
in the ``hardening`` reply."""

from __future__ import annotations

import errno
import os
import resource
import time
from pathlib import Path

import pytest

from uzram.ctl.__main__ import main as uzramctl

from ..daemon import Uzramd, raise_for, uzramd
from ..nbdclient import NBDClient

MiB = 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="prlimit on the daemon and mlockall need root")


def hardening(d: Uzramd) -> dict:
    return raise_for(d.request(cmd="hardening"))["hardening"]


def wait_for(d: Uzramd, what: str, cond, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = hardening(d)
        if cond(st):
            return st
        assert time.monotonic() < deadline, f"{what}: {st}\n{(d.workdir / 'uzramd.log').read_text()[-3000:]}"
        time.sleep(0.05)


def pool_file_size(pid: int) -> int:
    """The size of the daemon's pool memfds (the largest). Descriptors that
    close while they are listed (a control connection's) are passed over."""
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:uzram-pool"):
                sizes.append(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
        except FileNotFoundError:
            continue
    assert sizes, "no pool memfd"
    return max(sizes)


def store_errno(d: Uzramd, device: str, attr: str, value: str) -> int:
    reply = d.request(cmd="store", device=device, attr=attr, value=value)
    return 0 if reply.get("ok") else int(reply["errno"])


def test_low_reserve_sheds_work_that_allocates_and_admits_writeback(tmp_path: Path, capsys) -> None:
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    backing.chmod(0o600)
    devices = (f"zram0:backing_dev={backing},disksize=64M", "zram1")
    with uzramd(tmp_path / "d", "--swap", "--reserve", "16M", "-v", devices=devices) as d:
        pid = d.proc.pid
        with NBDClient(d.nbd_sock, "zram0") as c:
            deadline = time.monotonic() + 30
            while not (st := hardening(d))["reserve_free"] >= st["reserve"] > 0:
                assert time.monotonic() < deadline, f"the reserve was not filled: {st}"
                c.pwrite(0, os.urandom(MiB))   # the pool takes the chunks its feed made when it stores
                time.sleep(0.05)
            assert st["low_reserve"] is False and st["low_reserve_episodes"] == 0, st  # not while first filled
            d.store("zram0", "writeback", "huge")   # the I/O path, used once
            # no file of the daemon grows past the pool's now; writeback
            # writes below that (fewer pages than the reserve, and the first ones)
            cap = pool_file_size(pid)
            assert cap >= 20 * MiB, cap
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (cap, resource.RLIM_INFINITY))
            try:
                refused = 0
                for i in range(1, 40):          # incompressible pages until the reserve runs low
                    try:
                        c.pwrite(i * MiB, os.urandom(MiB))
                    except OSError as e:
                        assert e.errno == errno.ENOMEM, e
                        refused += 1
                    if hardening(d)["low_reserve"]:
                        break
                st = hardening(d)
                assert st["low_reserve"] is True and st["low_reserve_episodes"] == 1, st
                assert st["reserve_free"] * 4 < st["reserve"], st
                assert st["refused_writes"] == refused, st

                # work that allocates and can wait: EAGAIN, counted
                assert store_errno(d, "zram0", "idle", "all") == errno.EAGAIN
                assert store_errno(d, "zram0", "recompress", "type=huge") == errno.EAGAIN
                assert store_errno(d, "zram1", "disksize", "16M") == errno.EAGAIN
                assert d.request(cmd="hot_add")["errno"] == errno.EAGAIN
                assert uzramctl(["--control", str(d.control_sock), "--idle", "all", "zram0"]) == 1
                assert "Resource temporarily unavailable" in capsys.readouterr().err
                st = hardening(d)
                assert st["shed_requests"] == 5 and st["low_reserve"] is True, st
                # compaction frees memory (allocating nothing): admitted
                assert store_errno(d, "zram0", "compact", "1") == 0
                # reading is never refused
                assert d.show("zram0", "mm_stat") and d.show("zram1", "disksize") == "0\n"

                # writeback frees pool memory: admitted, and the reserve recovers
                before = int(d.show("zram0", "bd_stat").split()[0])
                d.store("zram0", "writeback", "huge")
                assert int(d.show("zram0", "bd_stat").split()[0]) > before
                st = wait_for(d, "reserve recovered", lambda s: not s["low_reserve"])
                assert st["low_reserve_episodes"] == 1 and st["reserve_free"] * 2 >= st["reserve"], st
                assert store_errno(d, "zram0", "compact", "1") == 0
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            assert c.pread(MiB, 4096)             # still serving
    log = (tmp_path / "d" / "uzramd.log").read_text()
    assert log.count('msg="pool reserve low') == 1 and log.count('msg="pool reserve recovered"') == 1, log
    assert "shed=5" in log and 'request="idle on zram0"' in log, log


def test_without_a_reserve_nothing_is_shed(tmp_path: Path) -> None:
    with uzramd(tmp_path, devices=("zram0:disksize=16M",)) as d:
        st = hardening(d)
        assert (st["reserve"], st["low_reserve"], st["shed_requests"]) == (0, False, 0), st
        assert store_errno(d, "zram0", "compact", "1") == 0
        assert d.request(cmd="hot_add")["ok"] is True


def test_a_low_reserve_compacts_the_pool(tmp_path: Path) -> None:
    """A fragmented pool whose reserve runs low is compacted by the daemon
    itself (as zsmalloc's shrinker compacts when the kernel reclaims), and
    the frames compaction frees refill the reserve."""
    rnd = os.urandom(MiB)
    half = b"".join(rnd[i * 4096: i * 4096 + 2048] + bytes(2048) for i in range(256))   # ~2 KiB objects
    with uzramd(tmp_path / "d", "--swap", "--reserve", "16M", "-v", devices=("zram0:disksize=64M",)) as d:
        pid = d.proc.pid
        with NBDClient(d.nbd_sock, "zram0") as c:
            for off in range(0, 16 * MiB, MiB):
                c.pwrite(off, half)
            for off in range(0, 16 * MiB, 8192):
                c.trim(off, 4096)             # every other page: zspages half empty
            wait_for(d, "reserve filled", lambda s: s["reserve_free"] >= s["reserve"] > 0)
            assert hardening(d)["pressure_compactions"] == 0
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (pool_file_size(pid), resource.RLIM_INFINITY))
            try:
                for i in range(16, 48):        # incompressible: the reserve runs low
                    try:
                        c.pwrite(i * MiB, os.urandom(MiB))
                    except OSError as e:
                        assert e.errno == errno.ENOMEM, e
                    if hardening(d)["pressure_compactions"]:
                        break
                st = wait_for(d, "compaction for the low reserve", lambda s: s["pressure_compactions"] >= 1)
                assert st["pressure_compacted_pages"] > 0, st
                assert int(d.show("zram0", "mm_stat").split()[6]) == st["pressure_compacted_pages"], st
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            for off in range(0, 16 * MiB, 8192):   # the data moved intact
                assert c.pread(off + 4096, 4096) == half[(off + 4096) % MiB: (off + 4096) % MiB + 4096]
    log = (tmp_path / "d" / "uzramd.log").read_text()
    assert 'msg="compacted for a low pool reserve" device=zram0' in log, log
