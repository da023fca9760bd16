"""lzo and lzo-rle: LZO1X-1 from python-lzo, listed and selectable as in the kernel."""

from __future__ import annotations

import os

import pytest

from uzram.zram import ZramDevice
from uzram.zram.compressors import AVAILABLE, KERNEL_ORDER, create_codec
from uzram.zram.sizeclass import PAGE_SIZE

from ..kernel import kernel_zram_or_skip


def test_listed_in_the_kernels_order():
    assert AVAILABLE[:2] == ("lzo-rle", "lzo")
    assert list(AVAILABLE) == [n for n in KERNEL_ORDER if n in AVAILABLE]


@pytest.mark.parametrize("name", ["lzo", "lzo-rle"])
def test_round_trip_and_device(name):
    codec = create_codec(name)
    pages = [bytes(PAGE_SIZE), os.urandom(PAGE_SIZE), (b"abc" * 2000)[:PAGE_SIZE],
             os.urandom(1000) + bytes(PAGE_SIZE - 1000)]
    for page in pages:
        comp = codec.compress(memoryview(bytearray(page)))
        assert codec.decompress(memoryview(comp), PAGE_SIZE) == page
    assert len(codec.compress(pages[2])) < 200
    dev = ZramDevice()
    dev.store("comp_algorithm", name)
    dev.store("disksize", "1M")
    assert f"[{name}]" in dev.show("comp_algorithm")
    data = b"".join(pages)
    dev.write(0, memoryview(data), False)
    assert b"".join(dev.read_chunks(0, len(data))) == data  # type: ignore[arg-type]
    assert int(dev.show("mm_stat").split()[1]) < len(data)


def test_corrupt_data_is_an_error():
    codec = create_codec("lzo")
    comp = codec.compress((b"abc" * 2000)[:PAGE_SIZE])
    with pytest.raises(Exception):
        codec.decompress(comp[:-5], PAGE_SIZE)


def test_same_names_as_the_host_kernel():
    """The host kernel's zram offers lzo and lzo-rle under the same names."""
    k = kernel_zram_or_skip()
    offered = k.show("comp_algorithm").replace("[", "").replace("]", "").split()
    for name in ("lzo", "lzo-rle"):
        if name in offered:
            dev = ZramDevice()
            dev.store("comp_algorithm", name)
            assert dev.show("comp_algorithm").split() == [
                f"[{n}]" if n == name else n for n in AVAILABLE]
