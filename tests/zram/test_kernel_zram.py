"""Side by side with the host kernel's zram0: formats, errnos and accounting."""

import errno
import random

import pytest

from uzram.zram import ZramDevice

from ..kernel import kernel_zram_or_skip
from . import pages

PAGE = 4096


@pytest.fixture
def kzram():
    k = kernel_zram_or_skip()
    try:
        yield k
    finally:
        k.store("reset", "1")


def outcome(obj, name, value):
    try:
        obj.store(name, value)
    except OSError as e:
        return e.errno
    return 0


def test_uninitialised_formats_match(kzram):
    dev = ZramDevice()
    for name in ("disksize", "initstate", "mm_stat", "io_stat", "debug_stat"):
        assert dev.show(name) == kzram.show(name), name
    # same shape: names separated by spaces, selected one in brackets, trailing space
    k = kzram.show("comp_algorithm")
    assert k.endswith(" \n") and dev.show("comp_algorithm").endswith(" \n")
    assert k.count("[") == 1


SEQUENCE = [
    # (attribute, value) in order; errors must match the kernel's, one by one
    ("reset", "0"), ("reset", "x"), ("reset", "70000"), ("idle", "all"), ("compact", "1"),
    ("mem_used_max", "1"), ("mem_limit", ""), ("mem_limit", "\n"), ("disksize", "\n"), ("disksize", "0"), ("disksize", "garbage"),
    ("comp_algorithm", "no-such-alg"), ("comp_algorithm", "lz4\n"), ("mem_limit", "25M"),
    ("disksize", "16M"), ("disksize", "32M"), ("comp_algorithm", "lz4"),
    ("comp_algorithm", "no-such-alg"), ("idle", "bogus"), ("idle", "all"), ("compact", "x"),
    ("mem_used_max", "0"), ("mem_limit", "1M"), ("reset", "1"), ("reset", "1"),
]


def test_attribute_errnos_match(kzram):
    dev = ZramDevice()
    for name, value in SEQUENCE:
        if not kzram.has(name):
            continue
        assert outcome(dev, name, value) == outcome(kzram, name, value), (name, value)
    # E2BIG for over-long names on both
    assert outcome(dev, "comp_algorithm", "x" * 200) == outcome(kzram, "comp_algorithm", "x" * 200) == errno.E2BIG


def test_same_data_same_accounting(kzram):
    """Same pages, same lz4: identical counts, and sizes within lz4 version noise."""
    rng = random.Random(7)
    data = []
    for i in range(3000):
        k = i % 6
        data.append([pages.zero, lambda: pages.same(0x6161616161616161),
                     lambda: pages.incompressible(rng), lambda: pages.compressible(rng),
                     lambda: pages.half_random(rng), lambda: pages.same(rng.getrandbits(64))][k]())
    blob = b"".join(data)
    kzram.store("comp_algorithm", "lz4")
    kzram.store("disksize", "64M")
    kzram.write_direct(0, blob)
    dev = ZramDevice()
    dev.store("comp_algorithm", "lz4")
    dev.store("disksize", "64M")
    dev.write(0, blob)
    k = [int(x) for x in kzram.show("mm_stat").split()]
    u = [int(x) for x in dev.show("mm_stat").split()]
    assert u[0] == k[0]                    # orig_data_size
    assert u[5] == k[5]                    # same_pages
    assert u[7] == k[7] and u[8] == k[8]   # huge pages
    assert abs(u[1] - k[1]) <= 0.03 * k[1]  # compr_data_size
    assert abs(u[2] - k[2]) <= 0.03 * k[2]  # mem_used_total: same zsmalloc policy
