"""Access to the host kernel's own zram0, the reference uzram is compared with.

Tests using it are skipped when not root, when the kernel has no zram0, or
when zram0 is in use; the device is always reset afterwards.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

SYSFS = Path("/sys/block/zram0")


class KernelZram:
    def __init__(self, root: Path = SYSFS) -> None:
        self.root = root
        self.dev = Path("/dev") / root.name

    def show(self, name: str) -> str:
        return (self.root / name).read_text()

    def store(self, name: str, value: str) -> None:
        fd = os.open(self.root / name, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def has(self, name: str) -> bool:
        return (self.root / name).exists()

    def write_direct(self, offset: int, data: bytes) -> None:
        import mmap
        buf = mmap.mmap(-1, max(len(data), 4096))
        buf[: len(data)] = data
        fd = os.open(self.dev, os.O_RDWR | os.O_DIRECT)
        try:
            os.pwritev(fd, [memoryview(buf)[: len(data)]], offset)
            os.fsync(fd)
        finally:
            os.close(fd)


def kernel_zram_or_skip() -> KernelZram:
    if os.geteuid() != 0:
        pytest.skip("the host zram0 comparison needs root")
    if not SYSFS.exists():
        pytest.skip("the host kernel has no zram0 (modprobe zram)")
    k = KernelZram()
    if k.show("initstate").strip() != "0":
        pytest.skip("the host zram0 is in use")
    try:
        k.store("reset", "1")
    except OSError as e:
        if e.errno == errno.EBUSY:
            pytest.skip("the host zram0 is busy")
        raise
    return k
