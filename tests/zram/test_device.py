"""ZramDevice semantics, checked against zram_drv.c behaviour."""

import errno
import os
import random

import pytest

from uzram.zram import ZramDevice
from uzram.zram.device import Extent
from uzram.zram.slots import HUGE, IDLE, SAME

from . import pages

PAGE = 4096
MiB = 1 << 20


def mm_stat(dev):
    return [int(x) for x in dev.show("mm_stat").split()]


def new(size="16M", **kw):
    dev = ZramDevice("zram0", **kw)
    dev.store("disksize", size)
    return dev


def errno_of(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_uninitialised_device_has_no_capacity():
    dev = ZramDevice()
    assert dev.show("initstate") == "0\n"
    assert errno_of(dev.read, 0, PAGE) == errno.EINVAL
    assert errno_of(dev.write, 0, bytes(PAGE)) == errno.ENOSPC


def test_disksize_rounds_up_and_is_immutable():
    dev = ZramDevice()
    dev.store("disksize", "5000")
    assert dev.show("disksize") == "8192\n"
    assert dev.show("initstate") == "1\n"
    assert errno_of(dev.store, "disksize", "1G") == errno.EBUSY


def test_never_written_pages_read_as_zeros():
    dev = new()
    assert dev.read(0, 3 * PAGE) == bytes(3 * PAGE)
    assert mm_stat(dev)[0] == 0


def test_same_filled_pages_cost_no_pool_memory():
    dev = new()
    dev.write(0, b"a" * (64 * PAGE))
    dev.write(64 * PAGE, bytes(PAGE))
    dev.write(65 * PAGE, pages.same(0x0123456789ABCDEF))
    st = mm_stat(dev)
    assert st[0] == 66 * PAGE      # orig_data_size counts them
    assert st[1] == 0 and st[2] == 0  # no compressed bytes, no pool pages
    assert st[5] == 66             # same_pages
    assert dev.read(0, 64 * PAGE) == b"a" * (64 * PAGE)
    assert dev.read(65 * PAGE, PAGE) == pages.same(0x0123456789ABCDEF)
    assert dev.slot_state(65)[0] == 0x0123456789ABCDEF
    assert dev.slot_state(65)[1] & SAME


def test_byte_same_but_not_word_same_is_compressed():
    dev = new()
    page = (b"ab" * 2048)  # 8-byte words all equal: same-filled
    dev.write(0, page)
    assert mm_stat(dev)[5] == 1
    page = bytes(range(7)) * 586 + bytes(2)  # period 7: not word-same
    dev.write(PAGE, page[:PAGE])
    assert mm_stat(dev)[5] == 1
    assert dev.read(PAGE, PAGE) == page[:PAGE]


def test_incompressible_pages_are_huge():
    dev = new()
    rng = random.Random(1)
    data = pages.incompressible(rng)
    dev.write(0, data)
    st = mm_stat(dev)
    assert st[1] == PAGE and st[7] == 1 and st[8] == 1
    assert dev.slot_state(0)[1] & HUGE
    assert dev.read(0, PAGE) == data
    dev.write(0, pages.compressible(rng))
    st = mm_stat(dev)
    assert st[7] == 0 and st[8] == 1  # huge_pages drops, huge_pages_since does not


def test_huge_threshold_is_huge_class_size():
    dev = new()
    assert dev.huge_class_size == 3625
    assert new(chain_size=4).huge_class_size == 3257


def test_overwrite_keeps_accounting_exact():
    dev = new()
    rng = random.Random(2)
    for _ in range(5):
        for i in range(32):
            dev.write(i * PAGE, pages.any_page(rng))
    st = mm_stat(dev)
    assert st[0] == 32 * PAGE
    sizes = [dev.slot_state(i)[1] & 0x1FFF for i in range(32)]
    assert st[1] == sum(sizes)
    dev.pool.check()


def test_partial_and_unaligned_io_read_modify_write():
    dev = new()
    rng = random.Random(3)
    model = bytearray(64 * PAGE)
    for _ in range(300):
        off = rng.randrange(len(model))
        n = rng.randint(1, min(3 * PAGE, len(model) - off))
        data = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * n
        dev.write(off, data)
        model[off : off + n] = data
        a = rng.randrange(len(model))
        b = rng.randint(a, len(model))
        assert dev.read(a, b - a) == model[a:b]
    assert dev.read(0, len(model)) == model


def test_discard_frees_whole_pages_only():
    dev = new()
    rng = random.Random(4)
    data = [pages.compressible(rng) for _ in range(8)]
    dev.write(0, b"".join(data))
    dev.discard(100, 3 * PAGE)          # head page 0 partial: skipped; pages 1, 2 freed; tail partial
    assert dev.read(0, PAGE) == data[0]
    assert dev.read(PAGE, 2 * PAGE) == bytes(2 * PAGE)
    assert dev.read(3 * PAGE, PAGE) == data[3]
    st = mm_stat(dev)
    assert st[0] == 6 * PAGE
    assert dev.show("io_stat").split()[3] == "2"   # notify_free per freed page
    dev.discard(5 * PAGE + 10, 100)                # inside one page: nothing
    assert dev.read(5 * PAGE, PAGE) == data[5]


def test_write_zeroes_is_exact_at_any_alignment():
    dev = new()
    rng = random.Random(5)
    model = bytearray(b"".join(pages.compressible(rng) for _ in range(8)))
    dev.write(0, model)
    for off, n in [(100, 50), (4000, 5000), (3 * PAGE, 2 * PAGE), (7 * PAGE - 1, 1)]:
        dev.write_zeroes(off, n)
        model[off : off + n] = bytes(n)
        assert dev.read(0, len(model)) == model
    # whole pages were freed, not stored as zero pages
    assert dev.slot_state(3)[1] == 0 and dev.slot_state(4)[1] == 0


def test_out_of_range_io():
    dev = new("1M")
    assert errno_of(dev.read, MiB - 10, 11) == errno.EINVAL
    assert errno_of(dev.write, MiB, b"x") == errno.ENOSPC
    assert errno_of(dev.discard, MiB - PAGE, 2 * PAGE) == errno.ENOSPC
    dev.write(MiB - 1, b"x")
    assert dev.read(MiB - 1, 1) == b"x"


def test_mem_limit_refuses_writes_but_not_same_pages():
    dev = new("64M")
    rng = random.Random(6)
    dev.store("mem_limit", "64K")
    written = {}
    with pytest.raises(OSError) as e:
        for i in range(1000):
            page = pages.incompressible(rng)
            dev.write(i * PAGE, page)
            written[i] = page
    assert e.value.errno == errno.ENOMEM
    failed_at = len(written)
    st = mm_stat(dev)
    assert st[3] == 64 * 1024
    assert st[2] <= 64 * 1024           # the refused object was freed again
    assert st[4] > 64 * 1024            # but the peak saw the overshoot
    assert dev.show("io_stat").split()[1] == "1"
    assert dev.read(failed_at * PAGE, PAGE) == bytes(PAGE)  # nothing half-written
    for i, page in written.items():
        assert dev.read(i * PAGE, PAGE) == page
    dev.write(2000 * PAGE, b"z" * PAGE)  # same-filled: no memory needed, never refused
    # an overwrite that fails keeps the old contents
    with pytest.raises(OSError):
        dev.write(0, pages.incompressible(rng))
    assert dev.read(0, PAGE) == written[0]
    dev.store("mem_limit", "0")
    dev.write(0, pages.incompressible(rng))


def test_mem_used_max_reset_to_current():
    dev = new()
    rng = random.Random(7)
    for i in range(50):
        dev.write(i * PAGE, pages.half_random(rng))
    dev.discard(0, 40 * PAGE)
    st = mm_stat(dev)
    assert st[4] > st[2]
    dev.store("mem_used_max", "0")
    st = mm_stat(dev)
    assert st[4] == st[2]
    assert errno_of(dev.store, "mem_used_max", "5") == errno.EINVAL


def test_idle_marking_all_and_by_age():
    now = [1000]
    dev = new(clock=lambda: now[0])
    rng = random.Random(8)
    dev.write(0, pages.compressible(rng))       # t=1000
    dev.write(PAGE, bytes(PAGE))                 # same-filled: never idle
    now[0] = 1100
    dev.write(2 * PAGE, pages.compressible(rng))  # t=1100
    now[0] = 1200
    dev.store("idle", "150")                     # cutoff 1050: only slot 0
    assert dev.slot_state(0)[1] & IDLE
    assert not dev.slot_state(1)[1] & IDLE
    assert not dev.slot_state(2)[1] & IDLE
    dev.store("idle", "all")
    assert dev.slot_state(2)[1] & IDLE and not dev.slot_state(1)[1] & IDLE
    assert not dev.slot_state(3)[1] & IDLE      # unallocated
    dev.read(2 * PAGE, 10)                       # any access clears IDLE
    assert not dev.slot_state(2)[1] & IDLE
    dev.store("idle", "0x32")                    # age 50, base auto: cutoff 1150, younger ones cleared
    assert dev.slot_state(0)[1] & IDLE and not dev.slot_state(2)[1] & IDLE
    assert dev.slot_state(2)[2] == 1200          # ac_time updated by the read
    state = dev.block_state().splitlines()
    assert state[0].split() == ["0", "1000.000000", "...i.."]
    assert state[1].split() == ["1", "1000.000000", "s....."]


def test_compaction_frees_pool_pages():
    dev = new("64M")
    rng = random.Random(9)
    n = 4000
    for i in range(n):
        dev.write(i * PAGE, pages.half_random(rng))
    for i in rng.sample(range(n), 3000):
        dev.discard(i * PAGE, PAGE)
    before = mm_stat(dev)
    dev.store("compact", "1")
    after = mm_stat(dev)
    assert after[2] < before[2]
    assert after[6] == (before[2] - after[2]) // PAGE   # pages_compacted counts them
    assert after[1] == before[1]


def test_algorithms_round_trip():
    rng = random.Random(10)
    data = b"".join(pages.any_page(rng) for _ in range(32))
    for alg in ("lz4", "lz4hc", "zstd", "deflate"):
        dev = ZramDevice()
        dev.store("comp_algorithm", alg)
        dev.store("disksize", "1M")
        assert f"[{alg}]" in dev.show("comp_algorithm")
        dev.write(0, data)
        assert dev.read(0, len(data)) == data, alg


def test_algorithm_params_level_and_dict(tmp_path):
    rng = random.Random(11)
    corpus = [pages.compressible(rng) for _ in range(200)]
    import zstandard
    d = zstandard.train_dictionary(8192, corpus)
    path = tmp_path / "dict"
    path.write_bytes(d.as_bytes())
    plain = ZramDevice()
    plain.store("comp_algorithm", "zstd")
    plain.store("disksize", "1M")
    tuned = ZramDevice()
    tuned.store("comp_algorithm", "zstd")
    tuned.store("algorithm_params", f"algo=zstd level=5 dict={path}")
    tuned.store("disksize", "1M")
    for i, page in enumerate(corpus[:100]):
        plain.write(i * PAGE, page)
        tuned.write(i * PAGE, page)
    assert mm_stat(tuned)[1] < mm_stat(plain)[1]
    assert tuned.read(0, 100 * PAGE) == b"".join(corpus[:100])


def test_bad_params_fail_at_disksize():
    dev = ZramDevice()
    dev.store("comp_algorithm", "deflate")
    dev.store("algorithm_params", "deflate.winbits=30")
    assert errno_of(dev.store, "disksize", "1M") == errno.EINVAL
    assert dev.show("initstate") == "0\n"


def test_reset_restores_defaults():
    dev = ZramDevice()
    dev.store("comp_algorithm", "zstd")
    dev.store("recomp_algorithm", "algo=deflate priority=2")
    dev.store("mem_limit", "1M")
    dev.store("disksize", "4M")
    dev.write(0, os.urandom(PAGE))
    dev.openers = 1
    assert errno_of(dev.store, "reset", "1") == errno.EBUSY
    dev.openers = 0
    dev.store("reset", "1")
    assert dev.show("disksize") == "0\n"
    assert dev.show("comp_algorithm").split().count("[lz4]") == 1
    assert dev.show("recomp_algorithm") == ""
    assert mm_stat(dev) == [0] * 9
    dev.store("disksize", "4M")
    assert dev.read(0, PAGE) == bytes(PAGE)
    ZramDevice().store("reset", "1")  # an uninitialised reset succeeds


def test_stat_counts_ios_and_sectors():
    dev = new()
    dev.write(0, bytes(2 * PAGE))
    dev.read(0, PAGE)
    dev.read(0, 512)
    dev.discard(0, PAGE)
    dev.flush()
    f = [int(x) for x in dev.show("stat").split()]
    assert len(f) == 17
    assert f[0] == 2 and f[2] == 9        # reads, sectors
    assert f[4] == 1 and f[6] == 16       # writes, sectors
    assert f[11] == 1 and f[13] == 8      # discards
    assert f[15] == 1                     # flushes


def test_extents():
    dev = new()
    dev.write(PAGE, os.urandom(PAGE))
    dev.write(2 * PAGE, b"b" * PAGE)       # same-filled, non-zero: data
    dev.write(3 * PAGE, bytes(PAGE))       # zero page: reads as zero
    hole, data, zero = Extent.UNALLOCATED, Extent.DATA, Extent.ZERO
    assert dev.extents(0, 5 * PAGE) == [(PAGE, hole), (2 * PAGE, data), (PAGE, zero), (PAGE, hole)]
    assert dev.extents(100, PAGE) == [(PAGE - 100, hole), (100, data)]
    dev.write_zeroes(0, 2 * PAGE, unmap=False)
    assert dev.extents(0, 2 * PAGE) == [(2 * PAGE, zero)]
    assert mm_stat(dev)[5] == 4 and mm_stat(dev)[0] == 4 * PAGE
    assert dev.read(0, 2 * PAGE) == bytes(2 * PAGE)


def test_huge_sparse_device_initialises_cheaply():
    """LTP zram02: 100 GiB with a 1 MiB limit, then a swap header fits."""
    dev = ZramDevice()
    dev.store("disksize", "107374182400")
    dev.store("mem_limit", "1M")
    header = bytearray(PAGE)
    header[1024:1036] = b"\x01\x00\x00\x00" + b"\xff" * 8
    header[-10:] = b"SWAPSPACE2"
    dev.write(0, header)
    assert dev.read(0, PAGE) == header
    assert mm_stat(dev)[2] <= 1 << 20
    dev.store("reset", "1")


def test_discard_of_huge_range_is_fast_path():
    dev = new("8G")
    dev.write(5 << 30, os.urandom(PAGE))
    dev.discard(0, 8 << 30)
    assert mm_stat(dev)[0] == 0
    assert dev.show("io_stat").split()[3] == str(2 * 1024 * 1024)
