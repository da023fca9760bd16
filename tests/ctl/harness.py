"""Starting uzramd for uzramctl's tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..daemon import Uzramd, uzramd

# zram0 in use, zram1 unconfigured, zram2 in use with zstd
DEVICES = ("zram0:comp_algorithm=lz4,disksize=64M", "zram1", "zram2:comp_algorithm=zstd,disksize=1G")


@contextmanager
def running_uzramd(workdir: Path, devices: tuple[str, ...] = DEVICES) -> Iterator[Uzramd]:
    """tests/daemon.py's uzramd with uzramctl's test devices."""
    with uzramd(workdir, devices=devices) as d:
        yield d
