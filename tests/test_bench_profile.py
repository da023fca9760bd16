"""bench/profile.py --native: perf's per-library report turned into the
groups that say how much of the daemon's time its Python could ever win back."""

from __future__ import annotations

import pytest

from bench import profile as bench_profile

# ``perf report --sort dso --stdio`` of a daemon serving 128 KiB reads
REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 7K of event 'cpu-clock:ppp'
# Event count (approx.): 1949750000
#
# Overhead  Shared Object
# ........  .......................................
#
    35.99%  _block.cpython-311-x86_64-linux-gnu.so
    24.54%  [kernel.kallsyms]
    20.20%  libpython3.11.so.1.0
    11.54%  libc.so.6
     4.00%  zstd.cpython-311-x86_64-linux-gnu.so
     1.35%  array.cpython-311-x86_64-linux-gnu.so
     0.29%  [vdso]
     0.17%  _socket.cpython-311-x86_64-linux-gnu.so


#
# (Tip: For tracepoint events, try: perf report -s trace_fields)
#
"""


def test_native_shares_groups_every_library() -> None:
    shares = bench_profile.native_shares(REPORT)
    assert shares["compression library"] == pytest.approx(35.99 + 4.00)
    assert shares["kernel"] == pytest.approx(24.54)
    assert shares["Python interpreter"] == pytest.approx(20.20)
    assert shares["C library"] == pytest.approx(11.54 + 0.29)
    assert shares["other"] == pytest.approx(1.35 + 0.17)
    assert sum(shares.values()) == pytest.approx(98.08)   # every line counted once


def test_native_shares_ignores_comments_and_noise() -> None:
    shares = bench_profile.native_shares("# 50.00%  libc.so.6\nnot a line\n\n   7.5%  python3.11\n")
    assert shares["Python interpreter"] == pytest.approx(7.5)
    assert shares["C library"] == 0
