"""uzramd --process-per-device: each device in a worker process of its own,
driven by real NBD clients and uzramctl."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..daemon import Uzramd, raise_for, uzramd
from ..tlscerts import make_certs
from .test_interop import need, run

pytestmark = pytest.mark.interop
MiB = 1 << 20
PER_DEVICE = "--process-per-device"


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_of(d: Uzramd, name: str) -> int:
    for pid in children(d.proc.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"uzram.daemon.worker" in cmdline and json.loads(cmdline[-2])["name"] == name:
            return pid
    raise AssertionError(f"no worker for {name}")


def uzramctl(d: Uzramd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uzram.ctl", "--control", str(d.control_sock), *args],
                          capture_output=True, text=True, timeout=60)


def round_trip(d: Uzramd, export: str, tmp_path: Path, size: int) -> None:
    src = tmp_path / f"{export}.in"
    out = tmp_path / f"{export}.out"
    src.write_bytes(os.urandom(size // 2) + bytes(size // 4) + b"uzram" * (size // 20) + bytes(size // 4 - size // 20 * 5))
    run("nbdcopy", str(src), d.uri(export))
    run("nbdcopy", d.uri(export), str(out))
    got = out.read_bytes()
    assert got[:size] == src.read_bytes() and not any(got[size:])


def wait_until(pred, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_two_devices_in_two_workers_serve_real_clients(tmp_path):
    need("nbdcopy", "nbdinfo", "qemu-io")
    with uzramd(tmp_path / "d", PER_DEVICE, devices=("zram0:disksize=32M", "zram1:comp_algorithm=zstd,disksize=16M")) as d:
        workers = children(d.proc.pid)
        assert len(workers) == 2
        assert worker_of(d, "zram0") != worker_of(d, "zram1")
        info = json.loads(run("nbdinfo", "--json", d.uri("zram1")).stdout)
        assert info["exports"][0]["export-size"] == 16 * MiB
        assert "zstd" in info["exports"][0]["description"]
        round_trip(d, "zram0", tmp_path, 32 * MiB)
        round_trip(d, "zram1", tmp_path, 16 * MiB)
        res = run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 64k", "-c", "read -P 0x5a 4096 64k",
                  d.uri("zram1"))
        assert "read 65536/65536" in res.stdout
        # data landed in each worker's own device
        assert d.mm_stat("zram0")[0] == 32 * MiB - (32 * MiB // 4) and d.mm_stat("zram1")[0] > 0
        listed = run("nbdinfo", "--list", "--json", d.uri("zram0")).stdout
        assert [e["export-name"] for e in json.loads(listed)["exports"]] == ["zram0", "zram1"]


def test_control_requests_reach_the_device_worker(tmp_path):
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    backing.chmod(0o600)
    need("nbdcopy")
    with uzramd(tmp_path / "d", PER_DEVICE,
                devices=("zram0:disksize=16M", f"zram1:backing_dev={backing},disksize=32M")) as d:
        round_trip(d, "zram1", tmp_path, 16 * MiB)
        res = uzramctl(d, "--attr", "mm_stat", "zram1")
        assert res.returncode == 0, res.stderr
        assert int(res.stdout.split()[0]) > 0
        assert uzramctl(d, "--attr", "mm_stat", "zram0").stdout.split()[0] == "0"
        res = uzramctl(d)
        assert res.returncode == 0 and "/dev/zram0" in res.stdout and "/dev/zram1" in res.stdout, res
        assert uzramctl(d, "--idle", "all", "zram1").returncode == 0
        res = uzramctl(d, "--writeback", "idle", "zram1")   # progress lines relayed from the worker
        assert res.returncode == 0, res.stderr
        assert int(d.show("zram1", "bd_stat").split()[0]) > 0
        round_trip(d, "zram1", tmp_path, 16 * MiB)          # written-back pages read back
        # device errors are the worker's, errnos included
        with pytest.raises(OSError) as e:
            d.store("zram1", "comp_algorithm", "zstd")
        assert e.value.errno == errno.EBUSY
        with pytest.raises(OSError) as e:
            d.show("zram7", "mm_stat")
        assert e.value.errno == errno.ENODEV
        # a store changes what the handshake reports
        d.store("zram0", "reset", "1")
        d.store("zram0", "disksize", "8M")
        info = json.loads(run("nbdinfo", "--json", d.uri("zram0")).stdout)
        assert info["exports"][0]["export-size"] == 8 * MiB


def test_hot_add_and_hot_remove_start_and_stop_workers(tmp_path):
    need("nbdcopy")
    with uzramd(tmp_path / "d", PER_DEVICE, devices=("zram0:disksize=16M",)) as d:
        reply = raise_for(d.request(cmd="hot_add"))
        assert reply["value"] == "1\n"
        assert len(children(d.proc.pid)) == 2
        d.store("zram1", "disksize", "8M")
        round_trip(d, "zram1", tmp_path, 8 * MiB)
        assert raise_for(d.request(cmd="devices"))["devices"] == ["zram0", "zram1"]
        pid = worker_of(d, "zram1")
        raise_for(d.request(cmd="hot_remove", value="1"))
        assert not alive(pid)
        assert raise_for(d.request(cmd="devices"))["devices"] == ["zram0"]
        with pytest.raises(OSError) as e:
            raise_for(d.request(cmd="hot_remove", value="1"))
        assert e.value.errno == errno.ENODEV
        assert uzramctl(d, "--hot-add").stdout.strip() == "/dev/zram1"
        assert len(children(d.proc.pid)) == 2


def test_a_killed_worker_fails_its_device_only(tmp_path):
    need("nbdcopy", "nbdinfo")
    with uzramd(tmp_path / "d", PER_DEVICE, devices=("zram0:disksize=16M", "zram1:disksize=16M")) as d:
        round_trip(d, "zram0", tmp_path, 8 * MiB)
        victim = worker_of(d, "zram0")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: raise_for(d.request(cmd="devices")).get("failed") == ["zram0"])
        assert not alive(victim)
        assert d.alive()
        round_trip(d, "zram1", tmp_path, 16 * MiB)
        assert run("nbdinfo", d.uri("zram0"), check=False).returncode != 0
        with pytest.raises(OSError) as e:
            d.show("zram0", "mm_stat")
        assert e.value.errno == errno.EIO
        assert "worker died" in (d.workdir / "uzramd.log").read_text()


def test_sigterm_stops_every_worker(tmp_path):
    with uzramd(tmp_path / "d", PER_DEVICE, devices=("zram0:disksize=16M", "zram1:disksize=16M")) as d:
        workers = children(d.proc.pid)
        assert len(workers) == 2
        assert d.stop() == 0
        assert not any(alive(pid) for pid in workers)
        assert not d.control_sock.exists() and not d.nbd_sock.exists()
        assert not list(d.workdir.glob("control.sock.zram*[0-9]"))


def test_killing_the_main_process_stops_the_workers(tmp_path):
    with uzramd(tmp_path / "d", PER_DEVICE, devices=("zram0:disksize=16M",)) as d:
        workers = children(d.proc.pid)
        d.stop(signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in workers))


def refused(tmp_path: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "uzram.daemon", "-q", PER_DEVICE,
                          "--listen", f"unix:{tmp_path / 'nbd.sock'}", "--control", str(tmp_path / "c.sock"),
                          "--device", "zram0:disksize=16M", *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    return res.stderr


def test_refused_with_tls_fuse_or_metrics(tmp_path):
    certs = make_certs(tmp_path / "certs")
    assert "TLS" in refused(tmp_path, "--tls-certificates", str(certs.server))
    assert "--fuse" in refused(tmp_path, "--fuse", str(tmp_path / "mnt"))
    assert "--metrics" in refused(tmp_path, "--metrics", "tcp:0")
    conf = tmp_path / "u.toml"
    conf.write_text(f'[uzramd]\nprocess_per_device = true\ntls_certificates = "{certs.server}"\n')
    res = subprocess.run([sys.executable, "-m", "uzram.daemon", "-q", "--config", str(conf),
                          "--control", str(tmp_path / "c.sock")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "TLS" in res.stderr
    assert not list(tmp_path.glob("*.sock"))
