"""Fixtures for the QEMU tests: host tools, the cached guest kernel, memhog."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .guestkernel import KernelUnavailable, fetch
from .vm import CACHE, QemuAssets, Unavailable, build_memhog, ensure_packages, static_busybox


@pytest.fixture(scope="session")
def qemu_assets() -> QemuAssets:
    """Everything a guest needs; skips when a prerequisite cannot be met here."""
    try:
        ensure_packages(["qemu-system-x86", "busybox-static", "gcc", "libc6-dev"])
        kernel = fetch(CACHE)
    except (Unavailable, KernelUnavailable) as e:
        pytest.skip(str(e))
    busybox = static_busybox()
    assert busybox is not None
    return QemuAssets(kernel, build_memhog(CACHE), busybox, CACHE)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for UNIX sockets (paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="uzq-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
