"""util-linux size syntax. Expected values come from util-linux's own test
vectors (tests/expected/misc/strtosize) and from running its lib/strutils.c
algorithm by hand (comments show the arithmetic)."""

import pytest

from uzram.ctl.sizes import SizeError, human_size, parse_size

K, M, G, E = 1 << 10, 1 << 20, 1 << 30, 1 << 60


@pytest.mark.parametrize("n, text", [
    # util-linux tests/expected/misc/strtosize, column 3
    (0, "0B"), (1, "1B"), (123, "123B"), ((1 << 64) - 1, "16E"),
    (K, "1K"), (M, "1M"), (G, "1G"), (1 << 40, "1T"), (1 << 50, "1P"), (E, "1E"),
    (1000, "1000B"), (10**6, "976.6K"), (10**9, "953.7M"), (10**12, "931.3G"),
    (10**15, "909.5T"), (10**18, "888.2P"), (0xFF00, "63.8K"), (0x80000000, "2G"),
    # edges
    (1023, "1023B"),               # below a unit: plain bytes
    (1025, "1K"),                  # 1/1024 -> 0 of 1000 -> rounds to nothing
    (1536, "1.5K"), (3 * M // 2, "1.5M"), (4 * G, "4G"),
    (M + M // 10, "1.1M"),         # 104857/1048576 = .099999 -> 99 -> (99+50)/100 = 1
    (2044723, "1.9M"),             # 1.95M truncated: 996147*1000/2^20 = 949 -> .9
    (2044724, "2M"),               # 996148*1000/2^20 = 950 -> 100 -> carries into 2
    (M - 1, "1024K"),              # 1023 + 999/1000 rounds up to 1024 within K
    (E + E // 2, "1.5E"),          # the frac >= UINT64_MAX/1000 branch
    (16 * E - 1, "16E"),
])
def test_human_size(n, text):
    assert human_size(n) == text


@pytest.mark.parametrize("text, n", [
    ("0", 0), ("123", 123), (" 1", 1), ("+5", 5), ("18446744073709551615", (1 << 64) - 1),
    ("1K", K), ("1k", K), ("1KiB", K), ("1Kib", K), ("1KB", 1000), ("1kB", 1000),
    ("1M", M), ("1MiB", M), ("1MB", 10**6), ("2G", 2 * G), ("1GB", 10**9),
    ("1T", 1 << 40), ("1TB", 10**12), ("1P", 1 << 50), ("1E", E), ("1EB", 10**18), ("15E", 15 * E),
    ("0x0a", 10), ("0xff00", 0xFF00), ("010", 8), ("0x10K", 16 * K),
    ("1.5M", 3 * M // 2), ("0.5MiB", M // 2), ("1.25G", 5 * G // 4 - 1),   # G/(100/5) + G/(10/2), each truncated
    ("0.5KB", 500),
    ("1.05K", 1075),   # 1024 + 1024/(100/5)
    ("0.3K", 341),     # util-linux adds 1024/(10/3) = 341, not 307
    ("1.10K", 2048),   # util-linux quirk: frac 10 with frac_div 10 adds a whole unit
    ("1.00K", K), ("0Z", 0),
])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", [
    "", " ", "1 ", "-1", " -1", "x", "1x", "1Ki", "1KiBx", "1.5", "1.", "1.K5", "08",
    "1Z", "16E", "2Y", "18446744073709551616", "1 K", "K",
])
def test_parse_size_rejects(text):
    with pytest.raises(SizeError):
        parse_size(text)
