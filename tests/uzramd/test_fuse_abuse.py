"""Random writes to every file of the FUSE tree: each gets an errno or
succeeds, the daemon keeps serving, and data stored on another device reads
back intact."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uzram.zram import attrs

from ..daemon import uzramd
from ..nbdclient import NBDClient

PAGE = 4096
# stores that would legitimately destroy the reference data or the tree itself
_SPARED = {"reset", "disksize", "backing_dev", "writeback", "recompress", "compact"}


@pytest.fixture
def tree(tmp_path: Path):
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse")
    mnt = tmp_path / "sys"
    with uzramd(tmp_path / "d", "--fuse", str(mnt), devices=("zram0:disksize=16M", "zram1")) as d:
        for _ in range(500):
            if (mnt / "zram1" / "disksize").exists():
                break
            time.sleep(0.02)
        with NBDClient(d.nbd_sock, "zram0") as c:
            data = os.urandom(PAGE)
            c.pwrite(5 * PAGE, data)
            yield d, mnt, c, data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=st.sampled_from(["zram0", "zram1"]),
       attr=st.sampled_from(sorted(set(attrs.names()) - _SPARED)),
       value=st.one_of(st.binary(max_size=200), st.text(max_size=60).map(str.encode),
                       st.sampled_from([b"9" * 5000, b"-1", b"0x", b"1G\n", b"all", b"\x00" * 64,
                                        b"algo=zstd priority=" + b"9" * 300])))
def test_fuzzed_attribute_writes(tree, device: str, attr: str, value: bytes) -> None:
    d, mnt, c, data = tree
    try:
        fd = os.open(mnt / device / attr, os.O_WRONLY)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            os.write(fd, value)
        except OSError:
            pass
        finally:
            os.close(fd)
    assert d.alive()
    assert (mnt / "zram0" / "disksize").read_text() == f"{16 << 20}\n"
    assert c.pread(5 * PAGE, PAGE) == data
