"""A built wheel installs into a fresh virtualenv without pyfuse3 (or python-lzo)
and runs: both programs, by their scripts and with python -m, one version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import uzram

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


def test_wheel_in_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    r = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, ROOT)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("uzram-*.whl")
    assert wheel.name.startswith(f"uzram-{uzram.__version__}-")
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    py, bin_ = venv / "bin/python", venv / "bin"
    r = run(py, "-m", "pip", "install", "--disable-pip-version-check", wheel)
    assert r.returncode == 0, r.stdout + r.stderr
    freeze = run(py, "-m", "pip", "freeze").stdout.lower()
    assert "pyfuse3" not in freeze and "python-lzo" not in freeze and "trio" in freeze

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    versions = set()
    for cmd in ([bin_ / "uzramd"], [bin_ / "uzramctl"], [py, "-m", "uzram.daemon"], [py, "-m", "uzram.ctl"]):
        r = run(*cmd, "--version", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        versions.add(r.stdout.split(" ", 1)[1].strip())
    assert versions == {f"from uzram {uzram.__version__}"}

    # --fuse says what to install; lzo is listed only with its extra
    r = run(bin_ / "uzramd", "--fuse", tmp_path / "mnt", "--control", tmp_path / "c0.sock", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "pip install 'uzram[fuse]'" in r.stderr
    r = run(py, "-c", "from uzram.zram.compressors import AVAILABLE; print(' '.join(AVAILABLE))", cwd=tmp_path, env=env)
    assert r.stdout.split() == ["lz4", "lz4hc", "zstd", "deflate"]

    # the daemon starts, serves, and the installed uzramctl talks to it
    nbd, ctl = tmp_path / "nbd.sock", tmp_path / "ctl.sock"
    log = tmp_path / "uzramd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([bin_ / "uzramd", "-q", "--listen", f"unix:{nbd}", "--control", ctl,
                                 "--device", "zram0:disksize=8M"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (nbd.exists() and ctl.exists()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = run(bin_ / "uzramctl", "--control", ctl, "--bytes", "-o", "NAME,DISKSIZE", cwd=tmp_path, env=env)
        assert r.returncode == 0 and "/dev/zram0" in r.stdout and str(8 << 20) in r.stdout, r.stderr
        r = run("nbdinfo", "--size", f"nbd+unix:///zram0?socket={nbd}")
        assert r.stdout.strip() == str(8 << 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
