"""Long device work as jobs: every operation whose cost grows with the device
yields checkpoints, and at each checkpoint every slot holds its old or its new
state. Driven here step by step, with other operations interleaved."""

import errno
import os
import random
import sys
import threading

import numpy as np
import pytest

from uzram.zram import ZramDevice, kparse
from uzram.zram.attrs import DICT_MAX, read_dict
from uzram.zram.jobs import Offload, Ticket, run
from uzram.zram.postprocess import PP_BUCKET_SIZE, RecompressJob, WritebackJob
from uzram.zram.slots import IDLE, PP_SLOT, SIZE_MASK, WB

from . import pages

PAGE = 4096
N = 4096  # pages: 16 MiB, many steps of every job


def full_device(n=N, seed=1, every=1, **attrs):
    """A device of ``n`` pages, every ``every``-th one written."""
    dev = ZramDevice()
    for k, v in attrs.items():
        dev.store(k, v)
    dev.store("disksize", str(n * PAGE))
    rng = random.Random(seed)
    data = [pages.any_page(rng) if i % 5 else pages.compressible(rng) for i in range(n // every)]
    if every == 1:
        dev.write(0, b"".join(data))
    else:
        for k, page in enumerate(data):
            dev.write(k * every * PAGE, page)
    return dev, data


def checkpoints(job, at_each=None):
    """Drive a job by hand (Offloads inline); call ``at_each`` at every checkpoint."""
    n = 0
    value = None
    while True:
        try:
            req = job.send(value)
        except StopIteration:
            return n
        value = None
        if req is None:
            n += 1
            if at_each:
                at_each()
        elif type(req) is Ticket:
            value = req.result
        else:
            value = req.fn(*req.args)


# -- TRIM and WRITE_ZEROES ----------------------------------------------------------------------

@pytest.mark.parametrize("op", ["discard", "zeroes_unmap", "zeroes_keep"])
def test_large_discard_is_stepwise_and_never_torn(op):
    dev, data = full_device()
    rng = random.Random(2)
    cleared: set[int] = set()

    def probe():
        for i in rng.sample(range(N), 64):
            page = dev.read(i * PAGE, PAGE)
            assert page in (data[i], bytes(PAGE)), i
            if page == bytes(PAGE) and data[i] != bytes(PAGE):
                cleared.add(i)
            if i in cleared:
                assert page == bytes(PAGE), f"page {i} came back after being discarded"

    job = {"discard": lambda: dev.discard_steps(0, N * PAGE),
           "zeroes_unmap": lambda: dev.write_zeroes_steps(0, N * PAGE, True),
           "zeroes_keep": lambda: dev.write_zeroes_steps(0, N * PAGE, False)}[op]()
    steps = checkpoints(job, probe)
    assert steps >= N // 256
    assert dev.read(0, N * PAGE) == bytes(N * PAGE)
    st = [int(x) for x in dev.show("mm_stat").split()]
    assert st[1] == 0  # compr_data_size
    if op == "zeroes_keep":
        assert st[0] == N * PAGE and st[5] == N  # stored as same-filled zero pages
    else:
        assert st[0] == 0


def test_writes_during_a_discard_win_or_lose_whole():
    dev, data = full_device()
    rng = random.Random(3)
    new = {}

    def write_some():
        i = rng.randrange(N)
        new[i] = pages.compressible(rng)
        dev.write(i * PAGE, new[i])

    checkpoints(dev.discard_steps(0, N * PAGE), write_some)
    for i in range(N):
        assert dev.read(i * PAGE, PAGE) in (bytes(PAGE), new.get(i, bytes(PAGE))), i
    dev.pool.check()


# -- reset, idle, selection ----------------------------------------------------------------------

def test_reset_returns_to_defaults_first_then_releases_the_pool_in_steps():
    dev, _ = full_device(comp_algorithm="zstd")
    seen = []
    steps = checkpoints(dev.reset_steps(), lambda: seen.append((dev.initialized, dev.comp_algs[0])))
    assert steps > 1
    assert set(seen) == {(False, "lz4")}
    dev.store("disksize", "1M")
    dev.write(0, pages.compressible(random.Random(1)))


def test_mark_idle_is_stepwise():
    dev = ZramDevice()
    dev.store("disksize", str(1 << 30))
    dev.write(0, pages.compressible(random.Random(1)))
    assert checkpoints(dev.mark_idle_steps(None)) > 1
    assert dev.slot_state(0)[1] & IDLE


def _np_flags(dev):
    return np.frombuffer(dev.table.flags_col, dtype=np.uint32, count=dev.table.nr_pages)


def _lexsort_order(dev, picked):
    sizes = _np_flags(dev)[picked] & SIZE_MASK
    return picked[np.lexsort((picked, -(sizes // PP_BUCKET_SIZE).astype(np.int64)))].tolist()


def test_writeback_selection_is_stepwise_and_orders_as_the_kernel(tmp_path):
    backing = tmp_path / "backing"
    with open(os.open(backing, os.O_CREAT | os.O_WRONLY, 0o600), "wb") as f:   # private, as backing_dev requires
        f.truncate(N * PAGE)
    dev, _ = full_device(n=1 << 17, every=64, backing_dev=str(backing))  # 512 MiB, many scan steps
    dev.store("idle", "all")
    job = WritebackJob.parse(dev, "idle")
    assert checkpoints(job.select_steps()) > 1
    marked = np.flatnonzero(_np_flags(dev) & PP_SLOT)
    assert list(job.slots) == _lexsort_order(dev, marked)
    job.finish()
    assert not (_np_flags(dev) & PP_SLOT).any()


def test_selection_stopped_midway_releases_its_marks(tmp_path):
    dev, _ = full_device(n=1 << 17, every=64, recomp_algorithm="algo=zstd")
    job = RecompressJob.parse(dev, "type=huge")
    steps = job.steps()
    assert next(steps) is None
    steps.close()
    assert not (_np_flags(dev) & PP_SLOT).any()


def test_compaction_is_a_job_of_the_attribute():
    dev, _ = full_device()
    dev.write_zeroes(0, N * PAGE // 2, False)
    from uzram.zram import attrs
    job, progress = attrs.store_job(dev, "compact", "1")
    before = dev.pool.total_pages
    assert checkpoints(job) >= 1
    assert progress.done == progress.total and dev.pool.total_pages <= before
    dev.pool.check()


# -- sub-page writes into written-back pages ------------------------------------------------------

def _device_with_backing(tmp_path):
    """A 1 MiB device with a private 64-page backing file, and a compressible page."""
    backing = tmp_path / "backing"
    with open(os.open(backing, os.O_CREAT | os.O_WRONLY, 0o600), "wb") as f:   # private, as backing_dev requires
        f.truncate(64 * PAGE)
    dev = ZramDevice()
    dev.store("backing_dev", str(backing))
    dev.store("disksize", "1M")
    return dev, pages.compressible(random.Random(5))


def test_subpage_write_into_written_back_page_reads_its_block_through_an_offload(tmp_path):
    dev, page = _device_with_backing(tmp_path)
    dev.write(0, page)
    dev.store("writeback", "page_index=0")
    assert dev.slot_state(0)[1] & WB
    assert dev.write_needs_backing(100, 10)
    job = dev.write_steps(100, b"x" * 10)
    req = job.send(None)
    assert isinstance(req, Offload) and req.fn == dev.backing.read_blocks
    # a whole-page write lands while the block is being read: the patch
    # applies to the newer contents, not to the stale block
    newer = pages.compressible(random.Random(6))
    dev.write(0, newer)
    with pytest.raises(StopIteration):
        job.send(req.fn(*req.args))
    assert dev.read(0, PAGE) == newer[:100] + b"x" * 10 + newer[110:]
    assert [int(x) for x in dev.show("bd_stat").split()][0] == 0


def test_subpage_write_into_written_back_page_sync(tmp_path):
    dev, page = _device_with_backing(tmp_path)
    dev.write(0, page + page)
    dev.store("writeback", "page_indexes=0-1")
    run(dev.write_steps(PAGE - 10, b"y" * 20))
    assert dev.read(0, 2 * PAGE) == page[:-10] + b"y" * 20 + page[10:]


# -- parsers and files ----------------------------------------------------------------------------

def test_memparse_on_huge_inputs_wraps_like_the_kernel():
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        for s in ["9" * 5000, "123456789" * 3000 + "k", "0x" + "f" * 3000, "0" + "7" * 3000 + "G"]:
            value, n = kparse.memparse(s)
            digits = s[:-1] if s[-1] in "kG" else s
            ref = int(digits, 0) if not digits.startswith("0") or digits.startswith("0x") else int(digits, 8)
            shift = {"k": 10, "G": 30}.get(s[-1], 0)
            assert (value, n) == ((ref << shift) % (1 << 64), len(s))
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.parametrize("s,value,err", [
    ("0" * 100_000 + "1", 1, None),
    ("1" * 100_000, None, errno.ERANGE),
    ("1" * 100_000 + "x", None, errno.ERANGE),   # overflow is reported before the junk
    ("0" * 100_000 + "x", None, errno.EINVAL),
    ("18446744073709551615", (1 << 64) - 1, None),
    ("18446744073709551616", None, errno.ERANGE),
    ("0" * 50 + "18446744073709551615\n", (1 << 64) - 1, None),
])
def test_kstrtoull_on_long_inputs(s, value, err):
    if err is None:
        assert kparse.kstrtoull(s) == value
        return
    with pytest.raises(OSError) as e:
        kparse.kstrtoull(s)
    assert e.value.errno == err


def test_dict_must_be_a_small_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def try_fifo():
        with pytest.raises(OSError) as e:
            read_dict(str(fifo))
        assert e.value.errno == errno.EINVAL
        done.set()
    t = threading.Thread(target=try_fifo, daemon=True)
    t.start()
    t.join(30)
    if not done.is_set():  # unblock the thread before failing
        with open(fifo, "wb"):
            pass
    assert done.is_set(), "reading a FIFO dictionary blocked"
    big = tmp_path / "big"
    big.write_bytes(bytes(DICT_MAX + 1))
    with pytest.raises(OSError) as e:
        read_dict(str(big))
    assert e.value.errno == errno.EINVAL
    small = tmp_path / "small"
    small.write_bytes(b"dictionary")
    assert read_dict(str(small)) == b"dictionary"
    dev = ZramDevice()
    dev.store("comp_algorithm", "zstd")
    dev.store("algorithm_params", f"algo=zstd dict={small}")
    assert dev.comp_params[0].dict_data == b"dictionary"
