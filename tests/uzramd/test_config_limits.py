"""The limit settings, and config files that are wrong in every way an
operator can make them wrong: each is a clear error, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uzram.daemon.config import AUTO_RESERVE, MAX_CONFIG_BYTES, ConfigError, build, swap_mode


def test_limits_from_options_and_file(tmp_path: Path) -> None:
    cfg = build(None, [], None, [], None, {"max_buffer_memory": "32M", "shutdown_timeout": "2.5"})
    assert cfg.limits.max_buffer_memory == 32 << 20 and cfg.limits.shutdown_timeout == 2.5
    f = tmp_path / "u.toml"
    f.write_text('[uzramd]\nmax_buffer_memory = "1G"\nmax_connections = 8\nidle_timeout = 5\n')
    cfg = build(str(f), [], None, [], None, {"max_connections": "9"})
    assert (cfg.limits.max_buffer_memory, cfg.limits.max_connections, cfg.limits.idle_timeout) == (1 << 30, 9, 5.0)
    assert cfg.limits.busy_poll == 50
    f.write_text('[uzramd]\nbusy_poll = 0\n')
    assert build(str(f), [], None, [], None, {}).limits.busy_poll == 0
    assert build(str(f), [], None, [], None, {"busy_poll": "200"}).limits.busy_poll == 200


@pytest.mark.parametrize("key, value", [
    ("max_buffer_memory", "12"), ("max_buffer_memory", "64Q"), ("max_buffer_memory", "9" * 5000),
    ("max_connections", "-1"), ("max_connections", "many"), ("idle_timeout", "0"),
    ("shutdown_timeout", "nan"), ("shutdown_timeout", "1e999"),
    ("busy_poll", "-1"), ("busy_poll", "10001"), ("busy_poll", "0.5"),
])
def test_bad_limits_are_config_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("_", "-")):
        build(None, [], None, [], None, {key: value})


BUSY_POLL = """
import os, sys
from uzram.daemon.hardening import busy_poll_seconds
if sys.argv[1] == "one-cpu":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
elif sys.argv[1] == "realtime":
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
print(busy_poll_seconds(50, sys.argv[1] == "swap"))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or os.geteuid() != 0,
                    reason="needs two CPUs, and root for SCHED_RR")
@pytest.mark.parametrize("how, expected", [("plain", 50e-6), ("one-cpu", 0.0), ("realtime", 0.0), ("swap", 0.0)])
def test_busy_poll_only_where_the_client_can_run_meanwhile(how: str, expected: float) -> None:
    """Off on one CPU (the client could not run while the daemon spins), for
    swap on the same machine, and under a real-time policy (a spinning
    SCHED_RR thread would keep the client from a CPU)."""
    r = subprocess.run([sys.executable, "-c", BUSY_POLL, how], capture_output=True, text=True, check=True)
    assert float(r.stdout) == pytest.approx(expected)


@pytest.mark.parametrize("text", [
    b"uzramd = 3\n",
    b"[uzramd]\ncontrol = [1, 2]\n",
    b"[uzramd]\nlisten = {a = 1}\n",
    b"[uzramd]\nmax_connections = [1]\n",
    b"\xff\xfe not text",
    b"[zram0]\ndisksize = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b"zram0 = 1\n",
])
def test_malformed_files_are_config_errors(tmp_path: Path, text: bytes) -> None:
    f = tmp_path / "bad.toml"
    f.write_bytes(text)
    with pytest.raises(ConfigError):
        build(str(f), [], None, [], None)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "big.toml"
    f.write_bytes(b"# x\n" * (MAX_CONFIG_BYTES // 4 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        build(str(f), [], None, [], None)


def test_uzramd_reports_a_bad_file_and_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_bytes(b"[uzramd]\ncontrol = [1]\n")
    res = subprocess.run([sys.executable, "-m", "uzram.daemon", "--config", str(f)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and res.stderr.startswith("uzramd: ") and "Traceback" not in res.stderr


def test_swap_and_reserve_from_file_and_options(tmp_path: Path) -> None:
    """``swap = true`` means ``--swap``; ``reserve`` is ``--reserve``; the options win."""
    assert swap_mode(build(None, [], None, []), False, None) == (False, 0)
    assert swap_mode(build(None, [], None, []), True, None) == (True, AUTO_RESERVE)
    f = tmp_path / "u.toml"
    f.write_text("[uzramd]\nswap = true\n")
    cfg = build(str(f), [], None, [])
    assert swap_mode(cfg, False, None) == (True, AUTO_RESERVE)
    assert swap_mode(cfg, False, "8M") == (True, 8 << 20)
    f.write_text('[uzramd]\nswap = true\nreserve = "32M"\n')
    assert swap_mode(build(str(f), [], None, []), False, None) == (True, 32 << 20)
    assert swap_mode(build(str(f), [], None, []), False, "0") == (True, 0)
    f.write_text("[uzramd]\nswap = false\nreserve = 1048576\n")
    assert swap_mode(build(str(f), [], None, []), False, None) == (False, 1 << 20)
    assert swap_mode(build(str(f), [], None, []), True, None) == (True, 1 << 20)
    f.write_text('[uzramd]\nreserve = "auto"\n')
    assert swap_mode(build(str(f), [], None, []), False, None) == (False, AUTO_RESERVE)


@pytest.mark.parametrize("line", [
    'swap = "yes"', "swap = 1", 'reserve = "lots"', "reserve = -1", 'reserve = "16Q"', "reserve = true",
    'reserve = "' + "9" * 5000 + '"', "reserve = 2.5",
])
def test_bad_swap_keys_are_config_errors(tmp_path: Path, line: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(f"[uzramd]\n{line}\n")
    with pytest.raises(ConfigError, match=line.split()[0]):
        build(str(f), [], None, [])


def test_bad_reserve_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reserve"):
        swap_mode(build(None, [], None, []), True, "some")
