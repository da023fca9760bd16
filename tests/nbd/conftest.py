"""Fixtures for the NBD layer: an in-process server on a UNIX socket."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from .memexport import MemExport
from .support import NBDEnv, start_env


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short directory name: UNIX socket paths are limited to 107 bytes."""
    d = tempfile.mkdtemp(prefix="uzn-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def nbd_errors(request: pytest.FixtureRequest) -> Iterator[list[logging.LogRecord]]:
    """Fails the test if the NBD layer logged an error, unless marked
    ``allow_nbd_errors``."""
    h = _ErrorCollector()
    logger = logging.getLogger("uzram.nbd")
    logger.addHandler(h)
    try:
        yield h.records
    finally:
        logger.removeHandler(h)
    if not request.node.get_closest_marker("allow_nbd_errors"):
        assert not h.records, [r.getMessage() for r in h.records]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_nbd_errors: the test provokes logged export failures")


@pytest.fixture
async def env(
    nursery: trio.Nursery, short_tmp: str, nbd_errors: list[logging.LogRecord]
) -> AsyncIterator[NBDEnv]:
    """Server with two exports: 'mem' (default, 64 MiB) and 'other' (1 MiB, read-only)."""
    exports = [
        MemExport(64 << 20, "mem", "test export"),
        MemExport(1 << 20, "other", "read-only export", read_only=True),
    ]
    e = await start_env(nursery, short_tmp, exports)
    e.errors = nbd_errors
    yield e
    await e.stop()
    for x in exports:
        assert x.attached == 0, f"{x.name} still attached"
