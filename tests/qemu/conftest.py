"""Fixtures for the QEMU tests: host tools, the cached guest kernel, memhog."""

from __future__ import annotations

import os
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stress tests run only when asked for (``-m stress`` or UZRAM_STRESS=1):
    deselected, not skipped, so that CI's no-skip rule does not apply."""
    if "stress" in (config.getoption("markexpr") or "") or os.environ.get("UZRAM_STRESS") == "1":
        return
    keep = [i for i in items if i.get_closest_marker("stress") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("stress")])
        items[:] = keep
