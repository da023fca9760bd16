"""The FUSE tree refuses what it cannot do, and an unexpected failure in one
operation is that request's EIO, never the daemon's end."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..daemon import Uzramd, _wait_for
from .test_fuse import need_root_fuse, tree, write_attr  # noqa: F401  (fixture)

MiB = 1 << 20


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def test_setattr_that_cannot_take_effect_is_refused(tree):  # noqa: F811
    _d, mnt = tree
    attr = mnt / "zram0" / "comp_algorithm"
    dev = mnt / "dev" / "zram0"
    before = attr.stat()
    assert errno_of(os.chmod, attr, 0o666) == errno.EPERM
    assert errno_of(os.chown, attr, 65534, -1) == errno.EPERM
    assert errno_of(os.utime, attr, (0, 0)) == errno.EPERM
    assert errno_of(os.chmod, mnt / "zram0", 0o700) == errno.EPERM
    assert attr.stat().st_mode == before.st_mode and attr.stat().st_uid == before.st_uid
    # as sysfs: a size on an attribute is ignored, so echo > attr (O_TRUNC) works
    assert errno_of(os.truncate, attr, 0) == 0
    assert write_attr(attr, "zstd") == 0
    (mnt / "zram0" / "disksize").write_text("8M")
    # dev/zramN is a block device's bytes: truncate(2) is EINVAL, O_TRUNC is ignored
    assert errno_of(os.truncate, dev, 4096) == errno.EINVAL
    assert errno_of(os.truncate, dev, 0) == errno.EINVAL
    with open(dev, "r+b") as f:
        f.write(b"kept" * 1024)
    fd = os.open(dev, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert dev.stat().st_size == 8 * MiB
    with open(dev, "rb") as f:
        assert f.read(4096) == b"kept" * 1024


FAULTY = """
import sys
from uzram.zram.device import ZramDevice
from uzram.daemon.main import main

show = ZramDevice.show
def faulty_show(self, name):
    if name == "debug_stat":
        raise RuntimeError("injected fault")
    if name == "io_stat":
        raise OSError(0, "an OSError without errno")
    return show(self, name)
ZramDevice.show = faulty_show
sys.exit(main(sys.argv[1:]))
"""


def test_an_unexpected_exception_is_eio_and_the_daemon_keeps_serving(tmp_path):
    """A fault injected into one attribute's show (the daemon otherwise
    unchanged) costs that read an EIO, not the daemon."""
    need_root_fuse()
    work = tmp_path / "d"
    work.mkdir()
    mnt, nbd, ctl = tmp_path / "sys", work / "nbd.sock", work / "control.sock"
    log = open(work / "uzramd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", FAULTY, "-q", "--listen", f"unix:{nbd}", "--control", str(ctl),
                             "--device", "zram0:disksize=8M", "--fuse", str(mnt)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    try:
        _wait_for([nbd, ctl], proc, work / "uzramd.log", 20)
        d = Uzramd(work, proc, nbd, ctl)
        deadline = time.monotonic() + 20
        while not (mnt / "zram0").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(3):
            assert errno_of((mnt / "zram0" / "debug_stat").read_text) == errno.EIO
            assert errno_of((mnt / "zram0" / "io_stat").read_text) == errno.EIO
        assert d.alive()
        assert (mnt / "zram0" / "disksize").read_text() == f"{8 * MiB}\n"
        assert d.show("zram0", "disksize") == f"{8 * MiB}\n"
        assert d.stop(signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert "injected fault" in (work / "uzramd.log").read_text()
