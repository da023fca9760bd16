"""Writeback and recompression: the kernel's syntax and errors, and each race
from the seed threads reproduced with a controlled interleaving."""

import errno
import os
import random

import pytest

from uzram.zram import ZramDevice
from uzram.zram.postprocess import RecompressJob, WritebackJob
from uzram.zram.slots import HUGE, IDLE, INCOMPRESSIBLE, PP_SLOT, PRIO_MASK, WB, SlotState

from . import pages

PAGE = 4096


def mm(dev):
    return [int(x) for x in dev.show("mm_stat").split()]


def bd(dev):
    return [int(x) for x in dev.show("bd_stat").split()]


def errno_of(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


@pytest.fixture
def backing(tmp_path):
    path = tmp_path / "backing"
    with open(path, "wb") as f:
        f.truncate(256 * PAGE)
    path.chmod(0o600)  # a backing file must be private
    return path


def device(backing, size="1M", **attrs):
    dev = ZramDevice()
    dev.store("backing_dev", str(backing))
    for k, v in attrs.items():
        dev.store(k, v)
    dev.store("disksize", size)
    return dev


def filled(backing, n=64, seed=1, **attrs):
    dev = device(backing, **attrs)
    rng = random.Random(seed)
    data = [pages.any_page(rng) for _ in range(n)]
    dev.write(0, b"".join(data))
    return dev, data


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


# -- attributes ----------------------------------------------------------------------------

def test_backing_dev_attribute(backing, tmp_path):
    dev = ZramDevice()
    assert dev.show("backing_dev") == "none\n"
    assert errno_of(dev.store, "backing_dev", str(tmp_path / "missing")) == errno.ENOENT
    assert errno_of(dev.store, "backing_dev", str(tmp_path)) == errno.ENOTBLK
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "empty").chmod(0o600)
    assert errno_of(dev.store, "backing_dev", str(tmp_path / "empty")) == errno.EINVAL
    dev.store("backing_dev", f"{backing}\n")
    assert dev.show("backing_dev") == f"{backing}\n"
    dev.store("disksize", "1M")
    assert errno_of(dev.store, "backing_dev", str(backing)) == errno.EBUSY
    assert errno_of(dev.store, "compressed_writeback", "1") == errno.EBUSY
    dev.store("reset", "1")
    assert dev.show("backing_dev") == "none\n"


def test_writeback_settings_attributes():
    dev = ZramDevice()
    assert dev.show("writeback_batch_size") == "32\n"
    assert errno_of(dev.store, "writeback_batch_size", "0") == errno.EINVAL
    dev.store("writeback_batch_size", "7")
    dev.store("writeback_limit", "100")
    dev.store("writeback_limit_enable", "1")
    assert (dev.show("writeback_limit"), dev.show("writeback_limit_enable")) == ("100\n", "1\n")
    assert errno_of(dev.store, "writeback_limit", "x") == errno.EINVAL
    assert errno_of(dev.store, "compressed_writeback", "maybe") == errno.EINVAL
    dev.store("compressed_writeback", "yes")
    assert dev.show("compressed_writeback") == "1\n"
    assert dev.show("bd_stat") == "       0        0        0\n"
    dev.store("reset", "1")
    assert dev.show("writeback_batch_size") == "32\n" and dev.show("writeback_limit_enable") == "0\n"


@pytest.mark.parametrize("value,code", [
    ("bogus", errno.EINVAL), ("type=bogus", errno.EINVAL), ("page_index=", errno.EINVAL),
    ("page_index=x", errno.EINVAL), ("page_index=256", errno.ERANGE), ("page_indexes=5", errno.EINVAL),
    ("page_indexes=9-3", errno.ERANGE), ("page_indexes=0-256", errno.ERANGE),
])
def test_writeback_syntax_errors(backing, value, code):
    dev, _ = filled(backing)
    before = mm(dev)
    assert errno_of(dev.store, "writeback", value) == code
    assert mm(dev) == before and bd(dev)[2] == 0
    assert not any(dev.slot_state(i)[1] & PP_SLOT for i in range(256))


def test_writeback_needs_init_and_backing(backing):
    assert errno_of(ZramDevice().store, "writeback", "huge") == errno.EINVAL
    dev = ZramDevice()
    dev.store("disksize", "1M")
    assert errno_of(dev.store, "writeback", "huge") == errno.ENODEV


def test_writeback_modes_select_as_the_kernel(backing):
    dev, data = filled(backing, 64)
    huge = [i for i in range(64) if dev.slot_state(i)[1] & HUGE]
    assert huge
    dev.store("writeback", "huge")
    written = [i for i in range(64) if dev.slot_state(i)[1] & WB]
    assert written == huge
    assert bd(dev) == [len(huge), 0, len(huge)]
    assert mm(dev)[7] == 0                               # no huge page left in RAM
    # idle: only slots marked idle; same-filled never
    dev.write(0, pages.compressible(random.Random(9)))
    dev.store("idle", "all")
    dev.write(PAGE, pages.compressible(random.Random(10)))  # accessed after marking
    dev.store("writeback", "type=idle")
    assert dev.slot_state(0)[1] & WB and not dev.slot_state(1)[1] & WB
    assert not any(dev.slot_state(i)[1] & WB for i in range(2, 64) if data[i][8:] == data[i][:-8])
    # unknown keys are ignored; an empty selection does nothing
    n = bd(dev)[2]
    dev.store("writeback", "frobnicate=1")
    dev.store("writeback", "")
    assert bd(dev)[2] == n
    assert dev.read(PAGE * 2, 62 * PAGE) == b"".join(data[2:])


def test_page_index_forms(backing):
    dev, data = filled(backing, 64, seed=3)
    targets = {3, 7} | set(range(10, 21))
    eligible = {i for i in targets if not data[i][8:] == data[i][:-8]}
    dev.store("writeback", "page_index=3 page_index=7 page_indexes=10-20 page_index=7")
    assert {i for i in range(64) if dev.slot_state(i)[1] & WB} == eligible
    assert dev.read(0, 64 * PAGE) == b"".join(data)


def test_largest_objects_first_within_the_budget(backing):
    dev, data = filled(backing, 64, seed=4)
    sizes = {i: dev.slot_state(i)[1] & 0x1FFF for i in range(64)}
    dev.store("writeback_limit_enable", "1")
    dev.store("writeback_limit", "5")
    assert errno_of(dev.store, "writeback", "page_indexes=0-63") == errno.EIO
    written = [i for i in range(64) if dev.slot_state(i)[1] & WB]
    assert len(written) == 5
    assert min(sizes[i] for i in written) // 64 >= max(s for i, s in sizes.items() if i not in written) // 64
    assert dev.show("writeback_limit") == "0\n"
    assert errno_of(dev.store, "writeback", "huge") == errno.EIO   # budget 0: nothing written
    assert not any(dev.slot_state(i)[1] & PP_SLOT for i in range(64))


def test_backing_full_gives_enospc_and_keeps_pages(tmp_path):
    path = tmp_path / "small"
    path.write_bytes(bytes(4 * PAGE))
    path.chmod(0o600)
    dev = ZramDevice()
    dev.store("backing_dev", str(path))
    dev.store("disksize", "1M")
    rng = random.Random(5)
    data = [pages.incompressible(rng) for _ in range(10)]
    dev.write(0, b"".join(data))
    assert errno_of(dev.store, "writeback", "huge") == errno.ENOSPC
    assert bd(dev)[0] == 4
    assert dev.read(0, 10 * PAGE) == b"".join(data)
    assert not any(dev.slot_state(i)[1] & PP_SLOT for i in range(10))


def test_reads_come_from_the_backing_file(backing):
    dev, data = filled(backing, 16, seed=6)
    dev.store("writeback", "page_indexes=0-15")
    n = bd(dev)[0]
    assert mm(dev)[2] == 0 and mm(dev)[1] == 0         # nothing left in the pool
    assert mm(dev)[0] == 16 * PAGE                     # but still stored
    for _ in range(2):                                 # every read hits the backing store
        assert dev.read(0, 16 * PAGE) == b"".join(data)
    assert bd(dev)[1] == 2 * n
    # partial write into a written-back page: read-modify-write from the file
    dev.write(5 * PAGE + 10, b"patch")
    expect = bytearray(data[5])
    expect[10:15] = b"patch"
    assert dev.read(5 * PAGE, PAGE) == expect
    assert not dev.slot_state(5)[1] & WB


def test_overwrite_discard_and_reset_release_and_punch_blocks(backing):
    dev, data = filled(backing, 64, seed=7)
    dev.store("writeback", "page_indexes=0-63")
    n = bd(dev)[0]
    assert allocated_bytes(backing) >= n * PAGE
    dev.discard(0, 32 * PAGE)
    dev.write_zeroes(32 * PAGE, 8 * PAGE)
    dev.write(40 * PAGE, b"\x01" * (8 * PAGE))
    left = sum(1 for i in range(64) if dev.slot_state(i)[1] & WB)
    assert bd(dev)[0] == left
    assert allocated_bytes(backing) <= left * PAGE + 64 * 1024   # holes punched
    dev.store("reset", "1")
    assert dev.show("bd_stat").split()[0] == "0"


def test_compressed_writeback_round_trip(backing):
    dev, data = filled(backing, 32, seed=8, compressed_writeback="1")
    before = mm(dev)
    dev.store("writeback", "page_indexes=0-31")
    wb = [i for i in range(32) if dev.slot_state(i)[1] & WB]
    assert wb
    # size, priority and HUGE are kept to decode on read; huge_pages counts RAM only
    assert all(dev.slot_state(i)[1] & 0x1FFF for i in wb)
    assert mm(dev)[7] == 0 and mm(dev)[0] == before[0]
    assert dev.read(0, 32 * PAGE) == b"".join(data)
    dev.discard(0, 32 * PAGE)
    assert bd(dev)[0] == 0 and mm(dev)[7] == 0


# -- races, one per class of bug in the seed threads ---------------------------------------------

def start(dev, spec):
    job = WritebackJob.prepare(dev, spec)
    batch = job.next_batch()
    assert batch is not None
    return job, batch


def finish(dev, job, batch, fail=False):
    errors = [OSError(errno.EIO, "injected")] * len(batch.blocks) if fail else dev.backing.write_blocks(batch.blocks, batch.bufs)
    job.complete(batch, errors)
    return job.finish()


@pytest.mark.parametrize("action", ["overwrite", "discard", "read", "write_zeroes", "partial"])
def test_slot_touched_while_its_writeback_is_in_flight(backing, action):
    """Kernel PP_SLOT protocol: any access cancels; the newest data wins,
    the written block is released, and the stats stay consistent."""
    dev, data = filled(backing, 8, seed=11)
    rng = random.Random(12)
    job, batch = start(dev, "page_indexes=0-7")
    i = batch.slots[0]
    new = pages.compressible(rng)
    expect = {"overwrite": new, "discard": bytes(PAGE), "read": data[i], "write_zeroes": bytes(PAGE),
              "partial": new[:100] + data[i][100:]}[action]
    if action == "overwrite":
        dev.write(i * PAGE, new)
    elif action == "discard":
        dev.discard(i * PAGE, PAGE)
    elif action == "read":
        assert dev.read(i * PAGE, PAGE) == data[i]
    elif action == "write_zeroes":
        dev.write_zeroes(i * PAGE, PAGE)
    else:
        dev.write(i * PAGE, new[:100])
    assert finish(dev, job, batch) is None
    assert not dev.slot_state(i)[1] & WB
    assert dev.read(i * PAGE, PAGE) == expect
    wb = [j for j in range(8) if dev.slot_state(j)[1] & WB]
    assert bd(dev)[0] == len(wb)                     # the cancelled block was released
    dev.pool.check()


def test_writeback_buffer_is_an_owned_copy(backing):
    """Seed: the buffer changed between compression and copy. Data handed to
    writeback must not change when the slot's memory is reused afterwards."""
    dev, data = filled(backing, 8, seed=13)
    job, batch = start(dev, "page_indexes=0-7")
    copies = [bytes(b) for b in batch.bufs]
    rng = random.Random(14)
    for j in range(8):                                 # rewrite everything: objects are freed and reused
        dev.write(j * PAGE, pages.half_random(rng))
    dev.store("compact", "1")
    assert [bytes(b) for b in batch.bufs] == copies
    assert copies[0] == data[batch.slots[0]]
    finish(dev, job, batch)


def test_write_payload_is_consumed_before_return(backing):
    """The NBD ring is reused by the next request: what is stored is what was written."""
    dev = device(backing)
    ring = bytearray(pages.compressible(random.Random(15)))
    expect = bytes(ring)
    dev.write(0, memoryview(ring))
    ring[:] = bytes(PAGE)
    assert dev.read(0, PAGE) == expect


def test_failed_backing_write_loses_nothing_and_refunds(backing):
    dev, data = filled(backing, 8, seed=16)
    dev.store("writeback_limit_enable", "1")
    dev.store("writeback_limit", "100")
    job, batch = start(dev, "page_indexes=0-7")
    assert dev.show("writeback_limit") == f"{100 - len(batch.slots)}\n"
    err = finish(dev, job, batch, fail=True)
    assert err is not None and err.errno == errno.EIO
    assert dev.show("writeback_limit") == "100\n"
    assert bd(dev) == [0, 0, 0]
    assert dev.read(0, 8 * PAGE) == b"".join(data)
    assert not any(dev.slot_state(i)[1] & (WB | PP_SLOT) for i in range(8))


def test_read_of_written_back_page_racing_release_and_reuse(backing):
    """Seed: read racing a free. A block being read is pinned: releasing it
    and a new writeback that wants a block must not hand it out."""
    dev, data = filled(backing, 8, seed=17)
    dev.store("writeback", "page_indexes=0-7")
    i = next(j for j in range(8) if dev.slot_state(j)[1] & WB)
    block = dev.slot_state(i)[0]
    dev.async_backing_reads = True
    pending = dev.read_chunks(i * PAGE, PAGE)
    dev.async_backing_reads = False
    assert pending.blocks == [block]
    dev.discard(i * PAGE, PAGE)                          # the block is released while pinned
    rng = random.Random(18)
    for j in range(8, 40):
        dev.write(j * PAGE, pages.incompressible(rng))
    dev.store("writeback", "huge")                       # a writeback needs blocks now
    assert block not in {dev.slot_state(j)[0] for j in range(8, 40) if dev.slot_state(j)[1] & WB}
    results = dev.backing.read_blocks(pending.blocks)
    assert b"".join(dev.finish_read(pending, results)) == data[i]
    # once unpinned, the block is free again and its space punched
    assert dev.backing.state[block] == 0


def test_compaction_racing_reads_writes_and_writeback(backing):
    dev, data = filled(backing, 128, seed=19, size="2M")
    model = dict(enumerate(data))
    rng = random.Random(20)
    for j in rng.sample(range(128), 80):
        dev.discard(j * PAGE, PAGE)
        model[j] = bytes(PAGE)
    job, batch = start(dev, "page_indexes=0-127")
    steps = dev.pool.compact_steps()
    for n, _ in enumerate(steps):                         # interleave compaction steps with I/O
        j = rng.randrange(128)
        if n % 3 == 0:
            model[j] = pages.any_page(rng)
            dev.write(j * PAGE, model[j])
        else:
            assert dev.read(j * PAGE, PAGE) == model[j]
    finish(dev, job, batch)
    assert dev.read(0, 128 * PAGE) == b"".join(model[j] for j in range(128))
    dev.pool.check()


def test_pinned_pool_objects_do_not_move():
    """Seed: free racing migration. An object someone holds is not moved."""
    dev = ZramDevice()
    dev.store("disksize", "4M")
    rng = random.Random(21)
    for j in range(400):
        dev.write(j * PAGE, pages.half_random(rng))
    h = dev.slot_state(5)[0]
    view = dev.pool.view(h, 100)
    before = bytes(view)
    token = dev.pool.pin(h)
    for j in range(0, 400, 2):
        dev.discard(j * PAGE, PAGE) if j != 4 else None
    dev.store("compact", "1")
    assert bytes(view) == before
    dev.pool.unpin(token)


# -- recompression -------------------------------------------------------------------------------

def recomp_device(**attrs):
    dev = ZramDevice()
    dev.store("recomp_algorithm", "algo=zstd")
    for k, v in attrs.items():
        dev.store(k, v)
    dev.store("disksize", "1M")
    return dev


def test_recompress_errors():
    assert errno_of(ZramDevice().store, "recompress", "type=idle") == errno.EINVAL   # not initialised
    dev = ZramDevice()
    dev.store("disksize", "1M")
    assert errno_of(dev.store, "recompress", "type=idle") == errno.EINVAL            # no secondary
    dev = recomp_device()
    assert errno_of(dev.store, "recompress", "threshold=4000") == errno.EINVAL
    assert errno_of(dev.store, "recompress", "algo=deflate") == errno.EINVAL
    assert errno_of(dev.store, "recompress", "max_pages") == errno.EINVAL
    assert errno_of(dev.store, "recompress", "priority=3") == errno.EINVAL


def test_recompress_to_a_smaller_class():
    dev = recomp_device()
    rng = random.Random(22)
    data = [pages.compressible(rng) for _ in range(32)]
    dev.write(0, b"".join(data))
    before = mm(dev)
    dev.store("idle", "all")
    dev.store("recompress", "type=idle")
    after = mm(dev)
    assert after[1] < before[1]
    recompressed = [i for i in range(32) if dev.slot_state(i)[1] & PRIO_MASK]
    assert recompressed
    assert all(not dev.slot_state(i)[1] & IDLE for i in range(32))   # touched slots are no longer idle
    assert dev.read(0, 32 * PAGE) == b"".join(data)
    assert "r" in dev.block_state().splitlines()[recompressed[0]].split()[2]
    # again: nothing left that a higher priority could take
    dev.store("recompress", "")
    assert mm(dev)[1] == after[1]


def test_recompress_marks_incompressible_then_writeback_takes_it(backing):
    dev = ZramDevice()
    dev.store("recomp_algorithm", "algo=deflate")
    dev.store("backing_dev", str(backing))
    dev.store("disksize", "1M")
    rng = random.Random(23)
    data = [pages.incompressible(rng) for _ in range(4)] + [pages.compressible(rng) for _ in range(4)]
    dev.write(0, b"".join(data))
    dev.store("recompress", "type=huge")
    flags = [dev.slot_state(i)[1] for i in range(8)]
    assert all(f & INCOMPRESSIBLE for f in flags[:4])
    assert not any(f & INCOMPRESSIBLE for f in flags[4:])
    dev.store("writeback", "incompressible")
    assert [bool(dev.slot_state(i)[1] & WB) for i in range(8)] == [True] * 4 + [False] * 4
    assert dev.read(0, 8 * PAGE) == b"".join(data)


def test_recompress_threshold_and_max_pages():
    dev = recomp_device()
    rng = random.Random(24)
    dev.write(0, b"".join(pages.compressible(rng) for _ in range(32)))
    job = RecompressJob.prepare(dev, "max_pages=3")
    job.run()
    assert sum(1 for i in range(32) if dev.slot_state(i)[1] & PRIO_MASK) <= 3
    dev2 = recomp_device()
    dev2.write(0, b"".join(pages.compressible(random.Random(24)) for _ in range(32)))
    small = min(dev2.slot_state(i)[1] & 0x1FFF for i in range(32))
    dev2.store("recompress", f"threshold={small + 1}")
    assert not dev2.slot_state(next(i for i in range(32) if dev2.slot_state(i)[1] & 0x1FFF == small))[1] & PRIO_MASK


def test_partial_zeroing_of_a_written_back_page_releases_its_block(backing):
    """Found by the state machine: a sub-page WRITE_ZEROES rewrites the page
    in RAM; the old block must be released at once."""
    dev, data = filled(backing, 1, seed=25)
    dev.write(0, pages.incompressible(random.Random(26)))
    dev.store("writeback", "huge")
    assert bd(dev)[0] == 1
    dev.write_zeroes(1, 1)
    assert bd(dev)[0] == 0


def test_slot_states_follow_the_operations(backing):
    """Each operation moves a slot to the state slots.py says."""
    dev = device(backing, recomp_algorithm="algo=zstd")
    rng = random.Random(30)
    assert dev.state(0) is SlotState.EMPTY
    dev.write(0, b"\x07" * PAGE)
    assert dev.state(0) is SlotState.SAME and dev.slot_state(0)[0] == int.from_bytes(b"\x07" * 8, "little")
    dev.write(0, pages.half_random(rng))
    assert dev.state(0) is SlotState.COMPRESSED
    dev.write(PAGE, pages.incompressible(rng))
    assert dev.state(1) is SlotState.HUGE
    dev.store("writeback", "huge")
    assert dev.state(1) is SlotState.WRITTEN_BACK and dev.slot_state(1)[0] < 256   # a block number
    dev.discard(0, 2 * PAGE)
    assert dev.state(0) is SlotState.EMPTY and dev.state(1) is SlotState.EMPTY
    assert dev.slot_state(0) == (0, 0, 0)
