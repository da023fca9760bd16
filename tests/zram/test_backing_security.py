"""The backing store holds swapped-out memory: it must be private, exclusive,
on disk when a page counts as written back, and out of the page cache."""

import errno
import os
import pwd
import random
import subprocess
import sys

import pytest

from uzram.zram import ZramDevice, backing
from uzram.zram.slots import WB

from ..faultyfs import faulty_file
from . import pages

PAGE = 4096
MiB = 1 << 20


def private_file(path, size=256 * PAGE, mode=0o600):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, mode)
    os.ftruncate(fd, size)
    os.close(fd)
    os.chmod(path, mode)  # whatever the umask
    return path


def store_errno(dev, attr, value):
    with pytest.raises(OSError) as e:
        dev.store(attr, value)
    return e.value


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (chown, loop devices)")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_file_others_can_access_is_refused_with_eacces(tmp_path, caplog, mode):
    path = private_file(tmp_path / "backing", mode=mode)
    e = store_errno(ZramDevice(), "backing_dev", str(path))
    assert e.errno == errno.EACCES
    assert "chmod 600" in e.strerror
    assert any("chmod 600" in r.getMessage() for r in caplog.records)  # the log line says what to do


def test_a_private_file_is_accepted(tmp_path):
    path = private_file(tmp_path / "backing")
    dev = ZramDevice()
    dev.store("backing_dev", str(path))
    dev.store("reset", "1")


def test_a_file_of_another_user_is_refused_with_eperm(tmp_path):
    need_root()
    path = private_file(tmp_path / "backing")
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    e = store_errno(ZramDevice(), "backing_dev", str(path))
    assert e.errno == errno.EPERM
    assert "chmod 600" in e.strerror and "chown" in e.strerror


def test_a_symlink_to_a_file_is_not_followed(tmp_path):
    victim = private_file(tmp_path / "victim")
    with open(victim, "r+b") as f:
        f.write(b"precious" * 512)
    link = tmp_path / "link"
    link.symlink_to(victim)
    e = store_errno(ZramDevice(), "backing_dev", str(link))
    assert e.errno == errno.ELOOP
    assert victim.read_bytes()[:8] == b"precious"


def test_two_devices_cannot_share_a_file(tmp_path):
    path = private_file(tmp_path / "backing")
    a, b = ZramDevice("zram0"), ZramDevice("zram1")
    a.store("backing_dev", str(path))
    assert store_errno(b, "backing_dev", str(path)).errno == EBUSY
    # through another name (a hard link) it is still the same inode
    os.link(path, tmp_path / "alias")
    assert store_errno(b, "backing_dev", str(tmp_path / "alias")).errno == EBUSY
    a.store("reset", "1")  # releases it
    b.store("backing_dev", str(path))
    b.store("reset", "1")


EBUSY = errno.EBUSY


def test_another_process_holding_the_file_gives_ebusy(tmp_path):
    path = private_file(tmp_path / "backing")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from uzram.zram.backing import BackingStore; s = BackingStore(sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert store_errno(ZramDevice(), "backing_dev", str(path)).errno == EBUSY
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    dev = ZramDevice()
    dev.store("backing_dev", str(path))  # free again once the holder exited


def fincore_bytes(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "fdatasync"])
def test_written_back_pages_leave_the_page_cache(tmp_path, monkeypatch, direct):
    """32 MiB written back: the file keeps (almost) nothing in RAM."""
    monkeypatch.setattr(backing, "USE_O_DIRECT", direct)
    n = 32 * MiB // PAGE
    path = private_file(tmp_path / "backing", size=64 * MiB)
    dev = ZramDevice()
    dev.store("backing_dev", str(path))
    dev.store("disksize", "64M")
    rng = random.Random(3)
    data = [pages.incompressible(rng) for _ in range(256)]
    for i in range(0, n, 256):
        dev.write(i * PAGE, b"".join(data))
    dev.store("idle", "all")
    dev.store("writeback", "idle")
    assert dev.show("bd_stat").split()[0] == str(n)
    assert os.stat(path).st_blocks * 512 >= 32 * MiB  # really on disk
    assert fincore_bytes(path) < 1 * MiB
    assert dev.read(5 * PAGE, PAGE) == data[5]  # reads do not fill the cache either
    assert fincore_bytes(path) < 1 * MiB


def test_backing_io_is_direct_where_the_filesystem_allows(tmp_path):
    dev = ZramDevice()
    dev.store("backing_dev", str(private_file(tmp_path / "backing")))
    assert dev.backing.direct  # ext4/xfs/tmpfs (Linux 6.6+) take O_DIRECT
    dev.store("reset", "1")


def test_a_failed_fdatasync_keeps_the_pages_in_ram(tmp_path, monkeypatch):
    """Without O_DIRECT (a filesystem that refuses it; forced here): the page
    cache accepts the writes, the disk refuses at fsync, and no page may
    count as written back."""
    monkeypatch.setattr(backing, "USE_O_DIRECT", False)
    with faulty_file(tmp_path, 16 * MiB) as ff:
        dev = ZramDevice()
        dev.store("backing_dev", str(ff.path))
        assert not dev.backing.direct
        dev.store("disksize", "1M")
        rng = random.Random(7)
        data = [pages.incompressible(rng) for _ in range(64)]
        dev.write(0, b"".join(data))
        ff.control("failsync 5")
        assert store_errno(dev, "writeback", "huge").errno == errno.EIO
        assert ff.counters()["syncs"] >= 1
        assert dev.show("bd_stat").split()[0] == "0"
        assert not any(dev.slot_state(i)[1] & WB for i in range(64))
        assert dev.read(0, 64 * PAGE) == b"".join(data)
        ff.control("ok")
        dev.store("writeback", "huge")
        assert dev.show("bd_stat").split()[0] == "64"
        assert dev.read(0, 64 * PAGE) == b"".join(data)
        dev.store("reset", "1")


def test_a_block_device_still_works_and_may_be_named_by_a_link(tmp_path):
    need_root()
    image = private_file(tmp_path / "image", size=8 * MiB)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        link = tmp_path / "by-id"
        link.symlink_to(loop)
        dev = ZramDevice()
        dev.store("backing_dev", str(link))
        dev.store("disksize", "1M")
        other = ZramDevice("zram1")
        assert store_errno(other, "backing_dev", loop).errno == EBUSY
        rng = random.Random(9)
        data = [pages.incompressible(rng) for _ in range(16)]
        dev.write(0, b"".join(data))
        dev.store("writeback", "huge")
        assert dev.show("bd_stat").split()[0] == "16"
        assert dev.read(0, 16 * PAGE) == b"".join(data)
        dev.store("reset", "1")
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
