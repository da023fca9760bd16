"""uzramctl against a real uzramd (tests/daemon.py): listing, set-up,
reset, attributes, hot add/remove and connection errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from uzram.ctl.sizes import human_size

from .harness import running_uzramd
from ..nbdclient import NBDClient

HEADER = "NAME       ALGORITHM DISKSIZE DATA COMPR TOTAL STREAMS MOUNTPOINT\n"


def names(d) -> list[str]:
    return d.request(cmd="devices")["devices"]


# -- listing ------------------------------------------------------------------------------

def test_lists_configured_devices_like_zramctl(ctl_ro):
    r = ctl_ro()
    assert (r.rc, r.err) == (0, "")
    assert r.out == (HEADER +
                     "/dev/zram0 lz4            64M   0B    0B    0B         \n"
                     "/dev/zram2 zstd            1G   0B    0B    0B         \n")


def test_bytes_raw_noheadings(ctl_ro):
    assert ctl_ro("-b").out == (
        "NAME       ALGORITHM   DISKSIZE DATA COMPR TOTAL STREAMS MOUNTPOINT\n"
        "/dev/zram0 lz4         67108864    0     0     0         \n"
        "/dev/zram2 zstd      1073741824    0     0     0         \n")
    assert ctl_ro("--raw").out == (
        "NAME ALGORITHM DISKSIZE DATA COMPR TOTAL STREAMS MOUNTPOINT\n"
        "/dev/zram0 lz4 64M 0B 0B 0B  \n"
        "/dev/zram2 zstd 1G 0B 0B 0B  \n")
    assert ctl_ro("-n", "--raw", "-b", "-o", "name,disksize").out == (
        "/dev/zram0 67108864\n/dev/zram2 1073741824\n")
    assert ctl_ro("--noheadings", "-o", "NAME,ALGORITHM").out == "/dev/zram0 lz4\n/dev/zram2 zstd\n"


def test_output_columns(ctl_ro):
    assert ctl_ro("-o", "name,DiskSize,clients").out == (
        "NAME       DISKSIZE CLIENTS\n"
        "/dev/zram0      64M       0\n"
        "/dev/zram2       1G       0\n")
    r = ctl_ro("-o+COMP-RATIO", "/dev/zram2")
    assert r.out == (HEADER.rstrip("\n") + " COMP-RATIO\n"
                     "/dev/zram2 zstd            1G   0B    0B    0B                          -nan\n")
    header = ctl_ro("--output-all").out.splitlines()[0]
    assert header.split() == ["NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES",
                              "TOTAL", "MEM-LIMIT", "MEM-USED", "MIGRATED", "COMP-RATIO", "MOUNTPOINT",
                              "CLIENTS"]
    assert ctl_ro("--output-all", "-o", "+name", "-n", "--raw", "zram0").out.split(" ")[-1] == "/dev/zram0\n"
    r = ctl_ro("-o", "NAME,BOGUS")
    assert (r.rc, r.out, r.err) == (1, "", "uzramctl: unknown column: BOGUS\n")


def test_device_argument_limits_listing(ctl_ro):
    # a named device is shown even with disksize 0, as zramctl does
    assert ctl_ro("zram1", "-o", "NAME,DISKSIZE,ALGORITHM", "--raw").out.splitlines()[1].split()[:2] == [
        "/dev/zram1", "0B"]
    assert ctl_ro("/dev/zram0", "-n", "-o", "name").out == "/dev/zram0\n"
    for bad in ("zram7", "/dev/zram7"):
        r = ctl_ro(bad)
        assert (r.rc, r.out, r.err) == (1, "", "uzramctl: /dev/zram7: No such device\n")
    assert ctl_ro("sda").err == "uzramctl: sda: No such device\n"
    r = ctl_ro("zram0", "zram2")
    assert r.rc == 2 and "only one <device> at a time is allowed" in r.err


def test_no_used_devices_prints_nothing(tmp_path, run_main):
    with running_uzramd(tmp_path, devices=("zram0",)) as d:
        r = run_main("--control", str(d.control_sock))
    assert (r.rc, r.out, r.err) == (0, "", "")


def test_statistics_columns_follow_mm_stat(ctl, daemon):
    with NBDClient(daemon.nbd_sock, "zram0") as nbd:
        nbd.pwrite(0, bytes(4096))                          # same-filled
        nbd.pwrite(4096, bytes(range(256)) * 16)             # compressible
        nbd.pwrite(8192, os.urandom(8192))                   # incompressible (huge)
        mm = daemon.mm_stat("zram0")
        cols = "NAME,DATA,COMPR,TOTAL,MEM-LIMIT,MEM-USED,ZERO-PAGES,MIGRATED,COMP-RATIO,CLIENTS"
        human = ctl("-o", cols, "-n", "--raw", "zram0").out.split()
        raw = ctl("-o", cols, "-n", "--raw", "-b", "zram0").out.split()
    assert mm[0] == 4 * 4096 and mm[1] > 2 * 4096 and mm[2] > 0 and mm[5] == 1
    ratio = "%.4f" % (mm[0] / mm[2])
    assert raw == ["/dev/zram0", *map(str, (mm[0], mm[1], mm[2], mm[3], mm[4], mm[5], mm[6])), ratio, "1"]
    assert human == ["/dev/zram0", *map(human_size, (mm[0], mm[1], mm[2], mm[3], mm[4])), str(mm[5]),
                     human_size(mm[6]), ratio, "1"]
    assert human[1] == "16K"


# -- set-up ---------------------------------------------------------------------------------

def test_size_algorithm_params_configure_the_device(ctl, daemon):
    r = ctl("-s", "1.5M", "-a", "zstd", "-p", "algo=zstd level=3", "zram1")
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert daemon.show("zram1", "disksize") == f"{3 << 19}\n"
    assert daemon.show("zram1", "comp_algorithm").split().count("[zstd]") == 1
    assert daemon.show("zram1", "initstate") == "1\n"
    # reset comes first: an initialised device can be reconfigured
    assert ctl("-s", "1MB", "zram2").rc == 0
    assert daemon.show("zram2", "disksize") == "1003520\n"          # 10^6 rounded up to pages
    assert "[zstd]" not in daemon.show("zram2", "comp_algorithm")   # reset restored the default
    assert ctl("--size", "1MiB", "--algorithm", "lz4hc", "/dev/zram2").rc == 0
    assert daemon.show("zram2", "disksize") == "1048576\n"
    assert "[lz4hc]" in daemon.show("zram2", "comp_algorithm")


def test_params_are_stored_after_the_algorithm(ctl, daemon):
    # algorithm_params algo=NAME must find NAME configured, so order matters
    r = ctl("-s", "1M", "-p", "algo=zstd", "zram1")
    assert (r.rc, r.err) == (1, "uzramctl: /dev/zram1: failed to set algorithm params: Invalid argument\n")
    assert daemon.show("zram1", "initstate") == "0\n"
    r = ctl("-s", "1M", "-a", "nosuch", "zram1")
    assert (r.rc, r.err) == (1, "uzramctl: /dev/zram1: failed to set algorithm: Invalid argument\n")
    r = ctl("-s", "0", "zram1")
    assert (r.rc, r.err) == (1, "uzramctl: /dev/zram1: failed to set disksize (0 bytes): Invalid argument\n")
    r = ctl("-s", "1M", "zram9")
    assert (r.rc, r.err) == (1, "uzramctl: /dev/zram9: No such device\n")


def test_setup_usage_errors(ctl_ro, shared_daemon):
    for args in (["-a", "zstd", "zram1"], ["-p", "level=1"], ["-f", "-a", "zstd"], ["-t", "2", "zram1"]):
        r = ctl_ro(*args)
        assert r.rc == 2
        assert r.err.endswith("uzramctl: error: options --algorithm, --algorithm-params, and --streams "
                              "must be combined with --size\n")
    r = ctl_ro("-s", "1x", "zram1")
    assert r.rc == 2 and "failed to parse size: '1x'" in r.err
    assert "no device specified" in ctl_ro("-s", "1M").err
    assert "option --find is mutually exclusive with <device>" in ctl_ro("-f", "zram1").err
    assert "options --find and --output cannot be combined" in ctl_ro("-f", "-o", "NAME").err
    assert "options --output and --size cannot be combined" in ctl_ro("-o", "NAME", "-s", "1M", "zram1").err
    assert "options --reset and --size cannot be combined" in ctl_ro("-r", "-s", "1M", "zram1").err
    assert shared_daemon.show("zram1", "initstate") == "0\n"


def test_streams_are_accepted_and_ignored(ctl, daemon):
    # max_comp_streams is gone since Linux 6.15; zramctl ignores ENOENT
    assert ctl("-s", "4M", "-t", "4", "zram1").rc == 0
    assert daemon.show("zram1", "disksize") == f"{4 << 20}\n"


def test_find_uses_the_first_free_device(ctl, daemon):
    r = ctl("-f")
    assert (r.rc, r.out) == (0, "/dev/zram1\n")
    assert names(daemon) == ["zram0", "zram1", "zram2"]          # nothing hot-added
    r = ctl("--find", "--size", "2M", "-a", "lz4hc")
    assert (r.rc, r.out) == (0, "/dev/zram1\n")
    assert daemon.show("zram1", "disksize") == f"{2 << 20}\n"
    assert "[lz4hc]" in daemon.show("zram1", "comp_algorithm")


def test_find_hot_adds_when_all_are_used(ctl, daemon):
    daemon.store("zram1", "disksize", "1M")
    r = ctl("-f")
    assert (r.rc, r.out) == (0, "/dev/zram3\n")
    assert names(daemon) == ["zram0", "zram1", "zram2", "zram3"]
    assert daemon.show("zram3", "initstate") == "0\n"
    r = ctl("-f", "-s", "8M")   # zram3 is still free: no second hot-add
    assert (r.rc, r.out) == (0, "/dev/zram3\n")
    assert daemon.show("zram3", "disksize") == f"{8 << 20}\n" and len(names(daemon)) == 4


def test_find_fills_a_gap_by_hot_adding(tmp_path, run_main):
    # zramctl stops at the first missing id and hot-adds there (hot_add takes the lowest free id)
    with running_uzramd(tmp_path, devices=("zram0:disksize=1M", "zram2")) as d:
        r = run_main("--control", str(d.control_sock), "-f")
        assert (r.rc, r.out) == (0, "/dev/zram1\n")
        assert names(d) == ["zram0", "zram1", "zram2"]


# -- reset ------------------------------------------------------------------------------------

def test_reset_resets_and_removes(ctl, daemon):
    r = ctl("-r", "zram0", "/dev/zram2")
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert names(daemon) == ["zram1"]
    assert ctl().out == ""


def test_reset_failures(ctl, daemon):
    r = ctl("--reset", "zram9", "zram1", "bogus")
    assert r.rc == 1
    assert r.err == ("uzramctl: /dev/zram9: failed to reset: No such device\n"
                     "uzramctl: bogus: failed to reset: No such device\n")
    assert names(daemon) == ["zram0", "zram2"]   # zram1 was still reset and removed
    with NBDClient(daemon.nbd_sock, "zram0") as nbd:
        nbd.pwrite(0, os.urandom(4096))
        r = ctl("-r", "zram0")
        assert (r.rc, r.err) == (1, "uzramctl: /dev/zram0: failed to reset: Device or resource busy\n")
        assert names(daemon) == ["zram0", "zram2"]
        assert daemon.mm_stat("zram0")[0] == 4096       # data untouched
    assert "no device specified" in ctl("-r").err


# -- attributes -------------------------------------------------------------------------------

def test_attr_reads_kernel_text(ctl_ro, shared_daemon):
    for attr in ("comp_algorithm", "mm_stat", "disksize", "initstate", "io_stat"):
        r = ctl_ro("--attr", attr, "zram2")
        assert (r.rc, r.out, r.err) == (0, shared_daemon.show("zram2", attr), "")
    assert ctl_ro("--attr", "disksize", "/dev/zram0").out == "67108864\n"


def test_attr_writes(ctl, daemon):
    r = ctl("--attr", "mem_limit=1M", "zram0")
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert daemon.mm_stat("zram0")[3] == 1 << 20
    assert ctl("--attr", "comp_algorithm=deflate", "zram1").rc == 0
    assert "[deflate]" in daemon.show("zram1", "comp_algorithm")
    assert ctl("--attr", "reset=1", "zram0").rc == 0
    assert daemon.show("zram0", "disksize") == "0\n"
    assert names(daemon) == ["zram0", "zram1", "zram2"]   # a plain reset keeps the device


def test_attr_errors(ctl, daemon):
    r = ctl("--attr", "disksize=2G", "zram0")
    assert (r.rc, r.out, r.err) == (1, "", "uzramctl: zram0: disksize: Device or resource busy\n")
    assert daemon.show("zram0", "disksize") == f"{64 << 20}\n"
    assert ctl("--attr", "mem_limit", "zram0").err == "uzramctl: zram0: mem_limit: Permission denied\n"
    assert ctl("--attr", "initstate=1", "zram0").err == "uzramctl: zram0: initstate: Permission denied\n"
    assert ctl("--attr", "nosuch", "zram0").err == "uzramctl: zram0: nosuch: No such file or directory\n"
    assert ctl("--attr", "disksize", "zram5").err == "uzramctl: zram5: disksize: No such device\n"
    r = ctl("--attr", "disksize")
    assert r.rc == 2 and "no device specified" in r.err


def test_idle_and_compact(ctl, daemon):
    with NBDClient(daemon.nbd_sock, "zram0") as nbd:
        nbd.pwrite(0, bytes(range(256)) * 16)
    assert ctl("--idle", "all", "zram0").rc == 0
    assert ctl("--idle", "0", "zram0").rc == 0
    assert ctl("--compact", "/dev/zram0").rc == 0
    r = ctl("--idle", "all", "zram1")   # needs an initialised device
    assert (r.rc, r.err) == (1, "uzramctl: zram1: idle: Invalid argument\n")
    assert ctl("--idle", "soon", "zram0").err == "uzramctl: zram0: idle: Invalid argument\n"
    assert ctl("--compact", "zram1").err == "uzramctl: zram1: compact: Invalid argument\n"
    assert "cannot be combined" in ctl("--idle", "all", "--compact", "zram0").err


def test_hot_add_and_remove(ctl, daemon):
    r = ctl("--hot-add")
    assert (r.rc, r.out, r.err) == (0, "/dev/zram3\n", "")
    assert names(daemon)[-1] == "zram3"
    assert ctl("--hot-remove", "3").rc == 0
    assert ctl("--hot-remove", "/dev/zram1").rc == 0
    assert ctl("--hot-remove", "zram2").rc == 0
    assert names(daemon) == ["zram0"]
    r = ctl("--hot-remove", "zram2")
    assert (r.rc, r.err) == (1, "uzramctl: zram2: hot_remove: No such device\n")
    assert ctl("--hot-add").out == "/dev/zram1\n"    # the lowest free id


# -- control socket ------------------------------------------------------------------------------

def test_uzram_control_selects_the_socket(shared_daemon, run_main, monkeypatch, tmp_path):
    daemon = shared_daemon
    monkeypatch.setenv("UZRAM_CONTROL", str(daemon.control_sock))
    assert run_main("-n", "-o", "NAME").out == "/dev/zram0\n/dev/zram2\n"
    # --control wins over the environment
    monkeypatch.setenv("UZRAM_CONTROL", str(tmp_path / "elsewhere.sock"))
    assert run_main("--control", str(daemon.control_sock), "-n", "-o", "NAME").rc == 0
    r = run_main("-n")
    assert r.rc == 1 and str(tmp_path / "elsewhere.sock") in r.err


def test_daemon_not_running(run_main, tmp_path):
    missing = tmp_path / "missing.sock"
    stale = tmp_path / "stale.sock"          # a socket file nobody listens on
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    for path, why in ((missing, "No such file or directory"), (stale, "Connection refused")):
        r = run_main("--control", str(path), "-f")
        assert (r.rc, r.out) == (1, "")
        assert r.err == (f"uzramctl: cannot connect to uzramd at {path}: {why}\n"
                         "uzramctl: uzramd does not seem to be running "
                         "(use --control PATH or UZRAM_CONTROL to select another socket)\n")


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "uzram.ctl"],
                                 [os.path.join(os.path.dirname(sys.executable), "uzramctl")]])
def test_runs_as_a_program(shared_daemon, cmd):
    env = {**os.environ, "UZRAM_CONTROL": str(shared_daemon.control_sock)}
    res = subprocess.run(cmd + ["--raw", "-o", "NAME,ALGORITHM"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (
        0, "NAME ALGORITHM\n/dev/zram0 lz4\n/dev/zram2 zstd\n", "")
    res = subprocess.run(cmd + ["--attr", "disksize=1G", "zram2"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert (res.returncode, res.stderr) == (1, "uzramctl: zram2: disksize: Device or resource busy\n")


def test_ctl_does_not_import_the_daemon():
    code = "import sys, uzram.ctl.__main__; print(any(m.startswith('uzram.daemon') for m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.stdout == "False\n"


def test_debug_files(daemon, ctl):
    """zram's block_state and zsmalloc's classes table, through the daemon."""
    with NBDClient(daemon.nbd_sock, "zram0") as nbd:
        nbd.pwrite(0, b"a" * 4096 + bytes(range(256)) * 16)
    out = ctl("--debug", "block_state", "zram0")
    assert out.rc == 0, out.err
    lines = out.out.splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1"]
    assert lines[0].split()[2] == "s....."
    out = ctl("--debug", "classes", "/dev/zram0")
    assert out.rc == 0 and out.out.splitlines()[-1].split()[0] == "Total"
    out = ctl("--debug", "classes", "zram1")
    assert out.rc == 1 and "Invalid argument" in out.err
    out = ctl("--debug", "nope", "zram0")
    assert out.rc == 1 and "No such file" in out.err


def test_hardening_shows_the_measures_and_the_reserve(ctl_ro):
    r = ctl_ro("--hardening")
    assert r.rc == 0 and r.err == "", r.err
    fields = dict(line.split(None, 1) for line in r.out.splitlines())
    assert fields["locked"] == "no" and "--swap" in fields["not_locked"]
    assert fields["low_reserve"] == "no" and fields["shed_requests"] == "0"
    assert fields["reserve"] == "0B" and fields["heap_cushion"] == "0B"
    assert dict(line.split(None, 1) for line in ctl_ro("--hardening", "-b").out.splitlines())["reserve"] == "0"
    r = ctl_ro("--hardening", "zram0")
    assert r.rc == 2 and "--hardening does not take a <device>" in r.err
