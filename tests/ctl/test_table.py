"""Column selection and libsmartcols-style rendering, without a daemon."""

import pytest

from uzram.control import device_id
from uzram.ctl.devices import algorithm, comp_ratio, dev_path
from uzram.ctl.table import DEFAULT_COLUMNS, UnknownColumn, parse_columns, render

ROWS = [["/dev/zram0", "lz4", "64M", "4K", "74B", "12K", "", ""],
        ["/dev/zram12", "zstd", "1.5G", "0B", "0B", "0B", "", ""]]


def test_default_table_alignment():
    assert render(DEFAULT_COLUMNS, ROWS) == (
        "NAME        ALGORITHM DISKSIZE DATA COMPR TOTAL STREAMS MOUNTPOINT\n"
        "/dev/zram0  lz4            64M   4K   74B   12K         \n"
        "/dev/zram12 zstd          1.5G   0B    0B    0B         \n")


def test_noheadings_uses_absolute_width_hints():
    # without a header the minimum width is 1 and numeric columns get their
    # hint (5) as width; empty columns without header collapse to nothing
    assert render(DEFAULT_COLUMNS, ROWS, headings=False) == (
        "/dev/zram0  lz4    64M    4K   74B   12K  \n"
        "/dev/zram12 zstd  1.5G    0B    0B    0B  \n")


def test_last_column_right_aligned_is_padded_left_only():
    out = render(["NAME", "DISKSIZE"], [["/dev/zram0", "64M"], ["/dev/zram1", "1024.5M"]])
    assert out == ("NAME       DISKSIZE\n"
                   "/dev/zram0      64M\n"
                   "/dev/zram1  1024.5M\n")
    out = render(["DISKSIZE", "NAME"], [["64M", "/dev/zram0"]])
    assert out == "DISKSIZE NAME\n     64M /dev/zram0\n"


def test_terminal_enlarges_to_width_hints():
    # on a terminal libsmartcols widens columns up to their absolute hint
    out = render(["NAME", "DATA"], [["/dev/zram0", "0B"]], term_width=80)
    assert out == "NAME        DATA\n/dev/zram0    0B\n"
    assert render(["NAME", "DATA"], [["/dev/zram0", "0B"]]) == "NAME       DATA\n/dev/zram0   0B\n"


def test_raw_and_empty():
    assert render(DEFAULT_COLUMNS, ROWS[:1], raw=True) == (
        "NAME ALGORITHM DISKSIZE DATA COMPR TOTAL STREAMS MOUNTPOINT\n"
        "/dev/zram0 lz4 64M 4K 74B 12K  \n")
    assert render(["NAME", "MOUNTPOINT"], [["a b\\c", "x\ty"]], raw=True, headings=False) == (
        "a\\x20b\\x5cc x\\x09y\n")
    assert render(DEFAULT_COLUMNS, []) == ""   # no devices: not even a header


def test_parse_columns():
    assert parse_columns("name,DiskSize", DEFAULT_COLUMNS) == ["NAME", "DISKSIZE"]
    assert parse_columns("+comp-ratio,clients", ["NAME"]) == ["NAME", "COMP-RATIO", "CLIENTS"]
    for bad in ("NAME,FOO", "NAME,,DATA", "", "+", "NAME,"):
        with pytest.raises(UnknownColumn):
            parse_columns(bad, DEFAULT_COLUMNS)


def test_device_helpers():
    assert device_id("zram3") == device_id("/dev/zram3") == 3
    assert device_id("/dev/zram") is None and device_id("sda") is None and device_id("zram1x") is None
    assert dev_path("zram7") == "/dev/zram7" and dev_path("foo") == "foo"
    assert algorithm("lzo [lz4] zstd \n") == "lz4"
    assert algorithm("lzo lz4\n") == "" and algorithm("[] x") == ""
    assert comp_ratio(12288, 32768) == "0.3750"
    assert comp_ratio(0, 0) == "-nan" and comp_ratio(4096, 0) == "inf"   # glibc on x86-64
