"""The pool's reserve (uzramd --swap): stores take prefaulted frames from a
feed thread, freed frames are kept resident up to the reserve, and with no
frame in time a store fails with ENOMEM instead of faulting memory in."""

from __future__ import annotations

import errno
import threading

import pytest

from uzram.zram.chunkfeed import ChunkFeed
from uzram.zram.zsmalloc import CHUNK_PAGES, ZsPool, prefaulted_chunk

OBJ = b"x" * 2000


def test_stores_take_chunks_only_from_the_feed() -> None:
    pool = ZsPool()
    feed = ChunkFeed(prefaulted_chunk)
    pool.set_feed(feed, 2 * CHUNK_PAGES)
    try:
        handles = [pool.store(OBJ) for _ in range(6000)]   # ~3 chunks of objects
        assert len(pool._chunks) == feed.made, "a chunk was made on the storing thread"
        for h in handles:
            pool.free(h)
        pool.check()
        assert pool.total_pages == 0
        # freed frames stay resident up to the reserve, the rest is released
        # (plus what the feed had in flight)
        assert 0 < pool.reserve_free <= pool.reserve_pages + 2 * CHUNK_PAGES
    finally:
        pool.set_feed(None, 0)


def test_no_frame_in_time_is_enomem_and_the_pool_stays_consistent() -> None:
    gate = threading.Event()
    made = []

    def slow_chunk():   # a system short of memory: faulting in blocks
        gate.wait()
        c = prefaulted_chunk()
        made.append(c)
        return c

    pool = ZsPool()
    pool.set_feed(ChunkFeed(slow_chunk), CHUNK_PAGES)
    try:
        with pytest.raises(OSError) as e:
            pool.store(OBJ)
        assert e.value.errno == errno.ENOMEM
        assert pool.reserve_misses == 1 and pool.objects == 0
        pool.check()
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
