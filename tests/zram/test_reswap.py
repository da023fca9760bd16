"""Pages read and written again share one object (``dedup``, reswap.py):
each way a slot can lose its object leaves the other slot's page intact."""

import os
import random
import tempfile

import pytest

from uzram.zram import ZramDevice
from uzram.zram.reswap import RecentReads

from .test_device_model import check_sharing

PAGE = 4096
NR = 64


def text(n: int) -> bytes:
    return ((b"swapped page %d " % n) * 300)[:PAGE]


def half(rnd: random.Random) -> bytes:
    return rnd.randbytes(PAGE // 2) + bytes(PAGE // 2)


def device(dedup: bool = True, **attrs: str) -> ZramDevice:
    dev = ZramDevice("zram0")
    dev.dedup = dedup
    for name, value in attrs.items():
        dev.store(name, value)
    dev.store("disksize", str(NR * PAGE))
    return dev


def reswap(dev: ZramDevice, src: int, dst: int, n: int = 1) -> bytes:
    data = dev.read(src * PAGE, n * PAGE)
    dev.write(dst * PAGE, data)
    return data


@pytest.mark.parametrize("n", [1, 4])
def test_a_page_read_and_written_again_is_stored_once(n: int) -> None:
    rnd = random.Random(n)
    pages = b"".join(half(rnd) if k % 2 else text(k) for k in range(n)) + rnd.randbytes(PAGE)
    dev = device()
    dev.write(0, pages)
    used = dev.pool.total_pages
    objects = dev.pool.objects
    assert reswap(dev, 0, 32, n + 1) == pages
    assert dev.pool.objects == objects and dev.pool.total_pages == used
    assert dev.pool.shares == n + 1      # the huge page too
    assert dev.read(32 * PAGE, (n + 1) * PAGE) == pages
    mm = [int(x) for x in dev.show("mm_stat").split()]
    assert mm[0] == 2 * (n + 1) * PAGE   # each slot counts its page
    assert mm[7] == 2                    # and its huge page
    check_sharing(dev)


def test_without_dedup_nothing_is_shared() -> None:
    dev = device(dedup=False)
    dev.write(0, text(1))
    reswap(dev, 0, 1)
    assert dev.pool.objects == 2 and not dev.pool.shared
    assert dev.disk.recent is None


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("overwrite", ["src", "dst"])
def test_a_shared_object_is_never_written_in_place(n: int, overwrite: str) -> None:
    """An overwrite of the same pool class would be written in place; on a
    shared object that would change the other slot's page."""
    dev = device()
    old = b"".join(text(k) for k in range(n))
    dev.write(0, old)
    reswap(dev, 0, 16, n)
    new = b"".join(text(k + 100) for k in range(n))   # the same sizes: the same class
    target = 0 if overwrite == "src" else 16
    dev.write(target * PAGE, new)
    other = 16 if overwrite == "src" else 0
    assert dev.read(other * PAGE, n * PAGE) == old
    assert dev.read(target * PAGE, n * PAGE) == new
    check_sharing(dev)


def test_discard_compaction_and_reset_with_shared_objects() -> None:
    rnd = random.Random(7)
    dev = device()
    pages = [half(rnd) for _ in range(24)]
    dev.write(0, b"".join(pages))
    reswap(dev, 0, 32, 24)
    dev.discard(0, 12 * PAGE)                 # one reference of half the objects
    assert len(dev.pool.shared) == 12
    dev.write(12 * PAGE, bytes(12 * PAGE))    # the other half: same-filled now
    assert not dev.pool.shared and dev.pool.objects == 24
    dev.discard(32 * PAGE, 6 * PAGE)          # fragment the zspages, then compact
    dev.store("compact", "1")
    assert dev.read(38 * PAGE, 18 * PAGE) == b"".join(pages[6:])
    check_sharing(dev)
    reswap(dev, 38, 0, 18)
    dev.reset()
    dev.store("disksize", str(NR * PAGE))
    assert not dev.pool.shared and dev.pool.shared_refs == 0
    assert dev.read(0, PAGE) == bytes(PAGE)


def test_writeback_and_recompression_of_a_shared_object() -> None:
    fd, path = tempfile.mkstemp(prefix="uzram-backing-")
    os.ftruncate(fd, NR * PAGE)
    os.close(fd)
    try:
        rnd = random.Random(3)
        dev = device(backing_dev=path, recomp_algorithm="algo=zstd")
        # 4 bits of entropy a byte: lz4 stores them raw, zstd in half
        pages = bytes(rnd.choice(b"abcdefghijklmnop") for _ in range(8 * PAGE))
        dev.write(0, pages)
        reswap(dev, 0, 8, 8)
        assert len(dev.pool.shared) == 8
        dev.store("idle", "all")
        dev.store("recompress", "type=idle")       # slots 0..15 get objects of their own
        assert dev.pool.objects == 16 and not dev.pool.shared
        assert dev.read(0, 16 * PAGE) == pages * 2
        reswap(dev, 0, 16, 8)                       # recompressed objects are not shared
        assert not dev.pool.shared
        check_sharing(dev)
        pages = b"".join(half(rnd) for _ in range(8))
        dev.reset()
        dev.store("backing_dev", path)
        dev.store("disksize", str(NR * PAGE))
        dev.write(0, pages)
        reswap(dev, 0, 8, 8)
        assert len(dev.pool.shared) == 8
        dev.store("idle", "all")
        dev.store("writeback", "type=idle")         # every slot written back: references dropped
        assert dev.pool.objects == 0 and not dev.pool.shared
        assert dev.read(0, 16 * PAGE) == pages * 2
    finally:
        os.unlink(path)


def test_a_stale_or_colliding_entry_is_never_used() -> None:
    dev = device()
    recent = dev.disk.recent
    assert isinstance(recent, RecentReads)
    recent.size = 1                  # one entry for every key: every lookup collides
    a, b = text(1), text(2)
    dev.write(0, a)
    dev.read(0, PAGE)
    dev.write(0, b)                  # the recorded slot now holds something else
    dev.write(PAGE, a)
    assert dev.pool.shares == 0
    dev.read(0, PAGE)                # slot 0, holding b, is the entry
    dev.write(2 * PAGE, text(3))     # only equal bytes share
    assert dev.pool.shares == 0
    dev.write(3 * PAGE, b)
    assert dev.pool.shares == 1
    assert dev.read(0, 4 * PAGE) == b + a + text(3) + b
    check_sharing(dev)


def test_rewriting_a_page_with_what_it_holds() -> None:
    """A page read and written back to its own slot keeps its one object."""
    dev = device()
    dev.write(0, text(4) + random.Random(1).randbytes(PAGE))
    reswap(dev, 0, 0, 2)
    assert dev.pool.objects == 2 and not dev.pool.shared
    assert dev.read(0, PAGE) == text(4)
    check_sharing(dev)


def test_a_memory_limit_does_not_refuse_a_shared_page() -> None:
    """Sharing allocates nothing, so the limit cannot refuse it."""
    rnd = random.Random(5)
    dev = device()
    pages = b"".join(half(rnd) for _ in range(16))
    dev.write(0, pages)
    dev.store("mem_limit", str(dev.pool.total_pages * PAGE))
    reswap(dev, 0, 16, 16)
    assert dev.read(16 * PAGE, 16 * PAGE) == pages
    with pytest.raises(OSError):
        dev.write(40 * PAGE, b"".join(half(rnd) for _ in range(16)))


def test_swap_mode_prefaults_the_recent_reads_with_the_slot_table() -> None:
    """Under --swap a store into a new slot must not fault memory in: the
    keeper prefaults dedup's two tables with the slot table."""
    import resource

    from uzram.daemon.reserve import prefault_table

    dev = ZramDevice("zram0")
    dev.dedup = True
    dev.store("disksize", str(256 << 20))          # 65536 slots: 256 KiB per table
    recent = dev.disk.recent
    prefault_table(dev.disk.table, recent)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for m in recent.maps:
        for off in range(0, len(m), PAGE):
            m[off] = 0
    assert resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before < 4
    untouched = RecentReads(65536)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for m in untouched.maps:                      # the measure can tell: 128 faults
        for off in range(0, len(m), PAGE):
            m[off] = 0
    assert resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before >= 100
