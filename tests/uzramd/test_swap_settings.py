"""systemd/uzram-swap's start path applies a zram-generator config's
swap-priority, options and fs-type, read from the NAME.swap file that a real
uzramd writes. The host kernel has no NBD client, so nbd-client, mkswap,
swapon and modprobe are stand-ins on PATH that record their arguments (the
attach itself runs under QEMU in tests/qemu)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..daemon import uzramd

SCRIPT = Path(__file__).resolve().parents[2] / "systemd/uzram-swap"


def run_script(tmp_path: Path, runtime: Path, export: str, env: dict[str, str] | None = None):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for tool in ("nbd-client", "mkswap", "swapon", "modprobe"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bindir / tool).chmod(0o755)
    log.write_text("")
    r = subprocess.run(["sh", str(SCRIPT), "start", export], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                            "UZRAM_RUNTIME_DIR": str(runtime), "NBD_SERVER": "unix:/run/x.sock",
                            "UZRAM_SYSCTLS": "0",   # never change the host's vm sysctls
                            **(env or {})})
    return r, log.read_text().splitlines()


def test_start_applies_zram_generator_settings(tmp_path):
    conf = tmp_path / "zram-generator.conf"
    conf.write_text("[zram0]\nzram-size = 16\nswap-priority = 42\noptions = discard=once,nofail\n"
                    "[zram1]\nzram-size = 16\noptions =\n"
                    "[zram2]\nzram-size = 16\nfs-type = ext4\nmount-point = /mnt/z\n")
    with uzramd(tmp_path / "d", "--zram-generator-config", str(conf), devices=()) as d:
        runtime = d.control_sock.parent
        r, calls = run_script(tmp_path, runtime, "zram0")
        assert r.returncode == 0, r.stderr
        assert calls[-2:] == ["mkswap /dev/nbd0", "swapon --options=discard=once,nofail --priority 42 /dev/nbd0"]
        r, calls = run_script(tmp_path, runtime, "zram0", {"SWAP_PRIORITY": "3"})  # the unit's env wins
        assert calls[-1] == "swapon --options=discard=once,nofail --priority 3 /dev/nbd0"
        r, calls = run_script(tmp_path, runtime, "zram1")          # options= clears discard
        assert calls[-1] == "swapon --priority 100 /dev/nbd0"
        r, calls = run_script(tmp_path, runtime, "zram2")          # not swap: detach and refuse
        assert r.returncode == 2 and "fs-type=ext4" in r.stderr
        assert "mkswap /dev/nbd0" not in calls and calls[-1] == "nbd-client -d /dev/nbd0"
        r, calls = run_script(tmp_path, runtime, "zram5", {"SWAP_PRIORITY": "7"})  # no file: the defaults
        assert calls[-1] == "swapon --options=discard --priority 7 /dev/nbd0"
