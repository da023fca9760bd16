"""The sysfs-like FUSE tree, used the way LTP's zram tests use sysfs, and
dev/zramN under a loop device: a real kernel block device on this host."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..daemon import uzramd

MiB = 1 << 20


def need_root_fuse():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse")


def sh(*cmd, check=True):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and res.returncode:
        raise AssertionError(f"{cmd} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res


def write_attr(path, value):
    """echo VALUE > path: returns the errno (0 on success)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as e:
        return e.errno
    try:
        os.write(fd, value.encode())
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
    return 0


@pytest.fixture
def tree(tmp_path):
    need_root_fuse()
    mnt = tmp_path / "sys"
    with uzramd(tmp_path / "d", "--fuse", str(mnt), devices=("zram0",)) as d:
        for _ in range(500):
            if (mnt / "zram0" / "disksize").exists():
                break
            import time
            time.sleep(0.02)
        yield d, mnt
    assert not os.path.ismount(mnt), "the tree stayed mounted after the daemon stopped"


def test_attributes_as_files(tree):
    d, mnt = tree
    z = mnt / "zram0"
    assert (z / "initstate").read_text() == "0\n"
    names = (z / "comp_algorithm").read_text().replace("[", "").replace("]", "").split()
    for name in names:                                  # LTP zram01: write back every listed name
        assert write_attr(z / "comp_algorithm", name + "\n") == 0
    assert write_attr(z / "disksize", "26214400\n") == 0
    assert write_attr(z / "mem_limit", "25M\n") == 0
    assert write_attr(z / "disksize", "1G\n") == errno.EBUSY
    assert write_attr(z / "comp_algorithm", "lz4\n") == errno.EBUSY
    assert write_attr(z / "reset", "0\n") == errno.EINVAL
    assert write_attr(z / "mm_stat", "1\n") == errno.EACCES
    with pytest.raises(PermissionError):
        (z / "reset").read_text()
    assert (z / "disksize").read_text() == "26214400\n"
    assert d.show("zram0", "mm_stat") == (z / "mm_stat").read_text()
    assert oct((z / "mm_stat").stat().st_mode & 0o777) == "0o444"
    assert oct((z / "reset").stat().st_mode & 0o777) == "0o200"


def test_hot_add_and_hot_remove(tree):
    d, mnt = tree
    assert (mnt / "zram-control" / "hot_add").read_text() == "1\n"
    assert (mnt / "zram1" / "disksize").read_text() == "0\n"
    assert (mnt / "dev" / "zram1").exists()
    assert write_attr(mnt / "zram-control" / "hot_remove", "1") == 0
    assert not (mnt / "zram1").exists()
    assert write_attr(mnt / "zram-control" / "hot_remove", "7") == errno.ENODEV


def test_loop_device_filesystem_compresses_like_ltp_zram01(tree, tmp_path):
    """mkfs, mount, fill with zeros until full; mem_used_total must be non-zero
    and the ratio written/mem_used_total at least 1, as zram01 demands."""
    d, mnt = tree
    if not shutil.which("losetup") or not shutil.which("mkfs.ext4"):
        pytest.skip("losetup and mkfs.ext4 are needed")
    assert write_attr(mnt / "zram0" / "disksize", "26214400") == 0
    loop = sh("losetup", "-f", "--show", str(mnt / "dev" / "zram0")).stdout.strip()
    fsdir = tmp_path / "fs"
    fsdir.mkdir()
    try:
        sh("mkfs.ext4", "-q", loop)
        sh("mount", loop, str(fsdir))
        try:
            written = 0
            fd = os.open(fsdir / "file", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                while True:                     # dd bs=1024 count=1 oflag=append, until it fails
                    try:
                        os.write(fd, bytes(1024))
                        written += 1
                    except OSError:
                        break
            finally:
                os.close(fd)
            os.sync()
        finally:
            sh("umount", str(fsdir))
        assert written > 10000
        mm = [int(x) for x in (mnt / "zram0" / "mm_stat").read_text().split()]
        assert mm[2] > 0
        assert 100 * 1024 * written / mm[2] >= 100
        # busy: a reset while the loop device holds the file is refused
        assert write_attr(mnt / "zram0" / "reset", "1") == errno.EBUSY
    finally:
        sh("losetup", "-d", loop)
    assert write_attr(mnt / "zram0" / "reset", "1") == 0


def test_loop_device_swap_like_ltp_zram02(tree):
    d, mnt = tree
    if not shutil.which("losetup") or not shutil.which("mkswap"):
        pytest.skip("losetup and mkswap are needed")
    assert write_attr(mnt / "zram0" / "disksize", "107374182400") == 0   # 100 GiB, sparse
    assert write_attr(mnt / "zram0" / "mem_limit", "1M") == 0
    loop = sh("losetup", "-f", "--show", str(mnt / "dev" / "zram0")).stdout.strip()
    try:
        sh("mkswap", loop)
        sh("swapon", loop)
        assert loop in Path("/proc/swaps").read_text()
        sh("swapoff", loop)
    finally:
        sh("losetup", "-d", loop)
    mm = [int(x) for x in (mnt / "zram0" / "mm_stat").read_text().split()]
    assert mm[0] >= 4096 and mm[2] <= 1 * MiB + 64 * 1024
