import errno

import pytest

from uzram.zram import kparse


@pytest.mark.parametrize("text,value,used", [
    ("1G", 1 << 30, 2), ("512M", 512 << 20, 4), ("0x1000", 4096, 6), ("010", 8, 3),
    ("4k\n", 4096, 2), ("12abc", 12, 2), ("", 0, 0), ("-1", 0, 0), ("0x", 0, 1), ("7e", 7 << 60, 2),
])
def test_memparse(text, value, used):
    assert kparse.memparse(text) == (value, used)


@pytest.mark.parametrize("text,base,value", [
    ("42", 10, 42), ("42\n", 10, 42), ("+7", 10, 7), ("0x10", 0, 16), ("010", 0, 8), ("0", 0, 0),
    ("ff", 16, 255), ("0xff", 16, 255),
])
def test_kstrtoull_ok(text, base, value):
    assert kparse.kstrtoull(text, base) == value


@pytest.mark.parametrize("text,code", [
    ("", errno.EINVAL), ("\n", errno.EINVAL), ("4x", errno.EINVAL), ("4\n\n", errno.EINVAL),
    ("-1", errno.EINVAL), (" 4", errno.EINVAL), ("18446744073709551616", errno.ERANGE),
])
def test_kstrtoull_errors(text, code):
    with pytest.raises(OSError) as e:
        kparse.kstrtoull(text)
    assert e.value.errno == code


def test_narrow_and_signed():
    assert kparse.kstrtou16("65535") == 65535
    with pytest.raises(OSError) as e:
        kparse.kstrtou16("65536")
    assert e.value.errno == errno.ERANGE
    assert kparse.kstrtoint("-5") == -5
    assert kparse.kstrtoint("2147483647") == 2**31 - 1
    for bad in ("2147483648", "-2147483649"):
        with pytest.raises(OSError) as e:
            kparse.kstrtoint(bad)
        assert e.value.errno == errno.ERANGE


@pytest.mark.parametrize("text,value", [
    ("1", True), ("y", True), ("Yes", True), ("on", True), ("t", True),
    ("0", False), ("n", False), ("off", False), ("F", False),
])
def test_kstrtobool(text, value):
    assert kparse.kstrtobool(text) is value


@pytest.mark.parametrize("text", ["", "o", "x", "2", "ox"])
def test_kstrtobool_rejects(text):
    with pytest.raises(OSError) as e:
        kparse.kstrtobool(text)
    assert e.value.errno == errno.EINVAL


def test_next_args():
    got = list(kparse.next_args('  algo=zstd level=3\n dict="/tmp/a b" bare page_index= =x'))
    assert got == [("algo", "zstd"), ("level", "3"), ("dict", "/tmp/a b"), ("bare", None),
                   ("page_index", ""), ("=x", None)]
    assert list(kparse.next_args("")) == []
    assert list(kparse.next_args(" \n")) == []


def test_sysfs_streq():
    assert kparse.sysfs_streq("all\n", "all")
    assert not kparse.sysfs_streq("all\n\n", "all")
    assert not kparse.sysfs_streq("al", "all")


def test_schema_parsing():
    schema = {"level": kparse.kstrtoint, "algo": kparse.text}
    assert kparse.parse_args("algo=lz4 other=x level=3 level=-1\n", schema) == {"algo": "lz4", "level": -1}
    with pytest.raises(OSError) as e:
        kparse.parse_args("algo=lz4 level", schema)        # a key without a value
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        kparse.parse_args("level=99999999999", schema)     # the value's own errno
    assert e.value.errno == errno.ERANGE
    # lazily: a caller that stops early never parses what follows
    it = kparse.iter_args("huge level=bad", schema, bare=True)
    assert next(it) == ("huge", None)
