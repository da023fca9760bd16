"""The pool's reserve (uzramd --swap): stores take prefaulted frames from a
feed thread, freed frames are kept resident up to the reserve, and with no
frame in time a store fails with ENOMEM instead of faulting memory in."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

import pytest

from uzram.zram import zsmalloc
from uzram.zram.chunkfeed import ChunkFeed
from uzram.zram.zsmalloc import CHUNK_PAGES, ZsPool

OBJ = b"x" * 2000
SHORT = zsmalloc.FEED_WAIT
LONG = 10.0


@pytest.fixture(autouse=True)
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores that must succeed wait as long as a loaded machine may keep the
    feed thread off a CPU; a test expecting ENOMEM sets the wait back to
    ``SHORT`` around that store (its feed is blocked or failing: the result
    does not depend on the wait)."""
    monkeypatch.setattr(zsmalloc, "FEED_WAIT", LONG)


def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_stores_take_chunks_only_from_the_feed() -> None:
    pool = ZsPool()
    filled: list[int] = []

    def fill(job):
        filled.extend(job[1])
        pool.feed_fill(job)

    feed = ChunkFeed(fill)
    pool.set_feed(feed, 2 * CHUNK_PAGES)
    try:
        handles = [pool.store(OBJ) for _ in range(6000)]   # ~3 chunks of objects
        frames = {pool._zpage[pool.zspage_of(h)] << 12 for h in handles}
        chunks = {a >> 22 << 22 for a in filled}
        assert all(f >> 22 << 22 in chunks or f in filled for f in frames), "a frame not made resident by the feed"
        for h in handles:
            pool.free(h)
        pool.check()
        assert pool.total_pages == 0
        # freed frames stay resident up to the reserve, the rest is released
        # (plus what the feed had in flight)
        assert 0 < pool.reserve_free <= pool.reserve_pages + 2 * CHUNK_PAGES
        # released frames are made resident again by the feed, not new chunks
        before = len(pool._chunks)
        handles = [pool.store(OBJ) for _ in range(6000)]
        assert len(pool._chunks) <= before + 1, "the address space grew while released frames were there"
        for h in handles:
            assert bytes(pool.view(h, len(OBJ))) == OBJ
        pool.check()
    finally:
        pool.set_feed(None, 0)


def test_no_frame_in_time_is_enomem_and_the_pool_stays_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    made = []

    pool = ZsPool()

    def slow_fill(job):   # a system short of memory: allocating blocks
        gate.wait()
        pool.feed_fill(job)
        made.append(job)

    pool.set_feed(ChunkFeed(slow_fill), CHUNK_PAGES)
    try:
        monkeypatch.setattr(zsmalloc, "FEED_WAIT", SHORT)
        with pytest.raises(OSError) as e:
            pool.store(OBJ)
        assert e.value.errno == errno.ENOMEM
        assert pool.reserve_misses == 1 and pool.objects == 0
        pool.check()
        monkeypatch.setattr(zsmalloc, "FEED_WAIT", LONG)
        gate.set()
        h = pool.store(OBJ)          # the feed delivers: stores succeed again
        assert bytes(pool.view(h, len(OBJ))) == OBJ
        pool.check()
    finally:
        gate.set()
        pool.set_feed(None, 0)


def test_without_a_feed_the_pool_grows_on_demand() -> None:
    pool = ZsPool()
    h = pool.store(OBJ)
    assert pool.reserve_pages == 0 and len(pool._chunks) == 1
    pool.free(h)
    pool.check()


def test_a_failing_feed_retries_until_memory_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job the system cannot give memory for (here: the file size limit,
    as ENOMEM under pressure) is retried, not lost: the reserve refills."""
    pool = ZsPool()
    fail = threading.Event()
    fail.set()

    def fill(job):
        if fail.is_set():
            raise OSError(errno.ENOMEM, "no memory")
        pool.feed_fill(job)

    feed = ChunkFeed(fill)
    pool.set_feed(feed, CHUNK_PAGES)
    try:
        monkeypatch.setattr(zsmalloc, "FEED_WAIT", SHORT)
        with pytest.raises(OSError):
            pool.store(OBJ)
        assert until(lambda: feed.failed > 0) and pool.reserve_free == 0
        monkeypatch.setattr(zsmalloc, "FEED_WAIT", LONG)
        fail.clear()
        h = pool.store(OBJ)
        assert bytes(pool.view(h, len(OBJ))) == OBJ
        pool.check()
    finally:
        pool.set_feed(None, 0)


def test_frames_given_back_read_as_zeros_and_free_memory(tmp_path) -> None:
    """Freed frames beyond the reserve are punched out of the pool's file:
    its allocated blocks fall (memory really returns)."""
    pool = ZsPool()
    handles = [pool.store(b"\xaa" * 4096) for _ in range(2048)]   # huge: one page each
    arena = pool._arenas[0]
    used = os.fstat(arena.fd).st_blocks
    assert used * 512 >= 2048 * 4096
    for h in handles:
        pool.free(h)
    assert os.fstat(arena.fd).st_blocks * 512 <= 128 * 4096, "freed frames still hold memory"
    h = pool.store(b"\x55" * 100)
    assert bytes(pool.view(h, 100)) == b"\x55" * 100
    pool.check()


def test_reset_gives_every_page_back() -> None:
    pool = ZsPool()
    for _ in range(3000):
        pool.store(os.urandom(3000))
    arena = pool._arenas[0]
    assert os.fstat(arena.fd).st_blocks > 0
    for _ in pool.release_steps():
        pass
    assert os.fstat(arena.fd).st_blocks == 0
