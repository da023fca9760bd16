"""READ replies built in the dispatcher's loop: the export's buffers are
checked (a short read is EIO and the stream stays in step, a non-byte
format is sent as its bytes)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from uzram.nbd import constants as C

from .memexport import MemExport
from .rawclient import RawClient
from .support import start_env


class OddExport(MemExport):
    """Answers READs at once with the data in some odd shape: ``short``
    drops the last byte, ``words`` returns a memoryview of 4-byte items."""

    shape = "words"

    def read(self, offset: int, length: int) -> Any:
        data = bytes(self.data[offset : offset + length])
        if self.shape == "short":
            return [data[:-1]]
        return [memoryview(data).cast("I"), b""]


@pytest.mark.parametrize("structured", [False, True])
async def test_buffers_of_items_wider_than_a_byte(nursery: trio.Nursery, short_tmp: str, structured: bool) -> None:
    exp = OddExport(1 << 20)
    env = await start_env(nursery, short_tmp, [exp])
    c = RawClient(await env.connect())
    await c.go(structured=structured)
    await c.pwrite(4096, bytes(range(256)) * 32)
    assert await c.pread(0, 3 * 4096) == bytes(4096) + bytes(range(256)) * 32
    assert await c.pread(4096 + 8, 16) == bytes(range(8, 24))
    c.sock.close()
    await env.stop()


@pytest.mark.allow_nbd_errors
@pytest.mark.parametrize("structured", [False, True])
async def test_short_read_is_eio(nursery: trio.Nursery, short_tmp: str, structured: bool, nbd_errors: list[Any]) -> None:
    exp = OddExport(1 << 20)
    exp.shape = "short"
    env = await start_env(nursery, short_tmp, [exp])
    c = RawClient(await env.connect())
    await c.go(structured=structured)
    r = await c.call(C.CMD_READ, 0, 4096)
    assert r.error == C.EIO
    exp.shape = "words"
    await c.pwrite(0, b"x" * 4096)
    assert await c.pread(0, 4096) == b"x" * 4096   # the stream is still in step
    assert any("expected" in r.getMessage() for r in nbd_errors)
    c.sock.close()
    await env.stop()
