"""The attribute ABI: formats and errnos exactly as the kernel's sysfs."""

import errno

import pytest

from uzram.zram import ZramDevice
from uzram.zram import attrs


def err(dev, name, value=None):
    with pytest.raises(OSError) as e:
        if value is None:
            dev.show(name)
        else:
            dev.store(name, value)
    return e.value.errno


def test_uninitialised_formats():
    dev = ZramDevice()
    assert dev.show("disksize") == "0\n"
    assert dev.show("initstate") == "0\n"
    assert dev.show("mm_stat") == " ".join(["%8u" % 0] * 9) + "\n"
    assert dev.show("io_stat") == "       0        0 0        0\n"
    assert dev.show("debug_stat") == "version: 1\n0        0\n"
    assert dev.show("comp_algorithm") == "lzo-rle lzo [lz4] lz4hc zstd deflate \n"
    assert dev.show("recomp_algorithm") == ""
    assert len(dev.show("stat").split()) == 17


@pytest.mark.parametrize("name,value,code", [
    ("disksize", "0", errno.EINVAL),
    ("disksize", "junk", errno.EINVAL),
    ("disksize", "\n", errno.EINVAL),
    ("comp_algorithm", "lzma", errno.EINVAL),
    ("comp_algorithm", "x" * 128, errno.E2BIG),
    ("reset", "0", errno.EINVAL),
    ("reset", "x", errno.EINVAL),
    ("reset", "70000", errno.ERANGE),
    ("mem_limit", "\n", errno.EINVAL),
    ("mem_limit", "k", errno.EINVAL),
    ("mem_used_max", "1", errno.EINVAL),
    ("mem_used_max", "x", errno.EINVAL),
    ("idle", "all", errno.EINVAL),          # not initialised
    ("idle", "soon", errno.EINVAL),
    ("compact", "1", errno.EINVAL),         # not initialised
    ("recomp_algorithm", "zstd", errno.EINVAL),
    ("recomp_algorithm", "algo=zstd priority=0", errno.EINVAL),
    ("recomp_algorithm", "algo=zstd priority=4", errno.EINVAL),
    ("recomp_algorithm", "algo=", errno.EINVAL),
    ("algorithm_params", "algo=zstd level=3", errno.EINVAL),  # zstd not configured
    ("algorithm_params", "priority=4", errno.EINVAL),
    ("algorithm_params", "level=x", errno.EINVAL),
    ("algorithm_params", "dict=/nonexistent/dict", errno.EINVAL),
    ("mm_stat", "1", errno.EACCES),
    ("nonexistent", "1", errno.ENOENT),
])
def test_store_errors(name, value, code):
    assert err(ZramDevice(), name, value) == code


def test_empty_write_is_a_no_op():
    dev = ZramDevice()
    for name in ("disksize", "reset", "mem_limit", "comp_algorithm"):
        dev.store(name, "")
    assert dev.show("initstate") == "0\n"


def test_write_only_attributes_cannot_be_read():
    dev = ZramDevice()
    for name in ("reset", "mem_limit", "mem_used_max", "idle", "compact", "algorithm_params"):
        assert err(dev, name) == errno.EACCES
        assert attrs.MODES[name] == 0o200
    assert err(dev, "nope") == errno.ENOENT


def test_immutable_after_init():
    dev = ZramDevice()
    dev.store("disksize", "1M")
    assert err(dev, "disksize", "2M") == errno.EBUSY
    assert err(dev, "comp_algorithm", "zstd") == errno.EBUSY
    assert err(dev, "recomp_algorithm", "algo=zstd") == errno.EBUSY
    # unknown names are refused before the init check, as in the kernel
    assert err(dev, "comp_algorithm", "lzma") == errno.EINVAL
    # mem_limit changes live
    dev.store("mem_limit", "2M")
    assert dev.show("mm_stat").split()[3] == str(2 << 20)


def test_recomp_algorithm_listing():
    dev = ZramDevice()
    dev.store("recomp_algorithm", "algo=zstd")
    dev.store("recomp_algorithm", "algo=deflate priority=3")
    assert dev.show("recomp_algorithm") == (
        "#1: lzo-rle lzo lz4 lz4hc [zstd] deflate \n#3: lzo-rle lzo lz4 lz4hc zstd [deflate] \n")
    dev.store("algorithm_params", "algo=deflate level=9")
    assert dev.comp_params[3].level == 9


def test_every_listed_algorithm_can_be_written_back():
    """LTP zram01 writes every name comp_algorithm lists."""
    dev = ZramDevice()
    for name in dev.show("comp_algorithm").replace("[", "").replace("]", "").split():
        dev.store("comp_algorithm", name + "\n")
        assert f"[{name}]" in dev.show("comp_algorithm")


def test_memparse_suffixes_for_sizes():
    dev = ZramDevice()
    dev.store("mem_limit", "25M")
    dev.store("disksize", "0x1000000")
    assert dev.show("disksize") == str(16 << 20) + "\n"
    assert dev.show("mm_stat").split()[3] == str(25 << 20)


def test_a_store_takes_at_most_a_page_as_sysfs_does():
    """kernfs hands a store the first PAGE_SIZE bytes of a write(2) (the host
    kernel returns 4096 for a 100,000-byte write to mem_limit)."""
    from uzram.zram import ZramDevice, attrs

    long, page = ZramDevice("zram0"), ZramDevice("zram1")
    for d in (long, page):
        attrs.store(d, "disksize", "1M")
    attrs.store(long, "mem_limit", "0" * 4090 + "123456" + "7" * 100_000)   # the 7s are cut off
    attrs.store(page, "mem_limit", "0" * 4090 + "123456")
    assert long.show("mm_stat") == page.show("mm_stat")
    assert long.show("mm_stat").split()[3] != "0"
    attrs.store(page, "mem_limit", "0" * 4089 + "1234567")
    assert long.show("mm_stat") != page.show("mm_stat")
    assert attrs.as_written("é" * 3000).encode() == ("é" * 2048).encode()
