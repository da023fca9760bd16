"""The ordering rules (uzram.nbd.ordering) against a model: running requests
as the rules release them gives the outcome of running them one by one in
arrival order, whatever the order in which awaited mutations complete."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uzram.nbd import constants as C
from uzram.nbd.ordering import Ordering

AREA = 64
CMDS = [C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES, C.CMD_FLUSH, C.CMD_CACHE]


@st.composite
def scripts(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, int, bool]], list[int]]:
    granularity = draw(st.sampled_from([1, 4, 16]))
    reqs = []
    for _ in range(draw(st.integers(1, 25))):
        cmd = draw(st.sampled_from(CMDS))
        off = draw(st.integers(0, AREA - 1))
        ln = draw(st.integers(1, AREA - off))
        reqs.append((cmd, off, ln, draw(st.booleans())))   # awaited or immediate
    completions = draw(st.lists(st.integers(0, 1000), min_size=len(reqs), max_size=len(reqs)))
    return granularity, reqs, completions


def sequential(reqs: list[tuple[int, int, int, bool]]) -> tuple[bytearray, dict[int, bytes]]:
    data = bytearray(AREA)
    reads = {}
    for i, (cmd, off, ln, _) in enumerate(reqs):
        if cmd == C.CMD_WRITE:
            data[off : off + ln] = bytes([i + 1]) * ln
        elif cmd in (C.CMD_TRIM, C.CMD_WRITE_ZEROES):
            data[off : off + ln] = bytes(ln)
        elif cmd == C.CMD_READ:
            reads[i] = bytes(data[off : off + ln])
    return data, reads


@settings(max_examples=400, deadline=None)
@given(scripts())
def test_outcome_equals_arrival_order(script: tuple[int, list[tuple[int, int, int, bool]], list[int]]) -> None:
    """A mutation's effect lands at its completion, a read sees the data when
    it runs; completions happen in a random order between arrivals."""
    granularity, reqs, keys = script
    order = Ordering(granularity)
    data = bytearray(AREA)
    reads: dict[int, bytes] = {}
    outstanding: dict[int, int] = {}          # token -> request index

    def apply(i: int) -> None:
        cmd, off, ln, _ = reqs[i]
        if cmd == C.CMD_WRITE:
            data[off : off + ln] = bytes([i + 1]) * ln
        elif cmd in (C.CMD_TRIM, C.CMD_WRITE_ZEROES):
            data[off : off + ln] = bytes(ln)

    def run(i: int) -> None:
        cmd, off, ln, awaited = reqs[i]
        req = (cmd, 0, i, off, ln, 0)
        if cmd == C.CMD_READ:
            reads[i] = bytes(data[off : off + ln])   # the export chooses its data now
        if awaited and cmd != C.CMD_READ:
            outstanding[i] = i
            order.hold(i, req)
        else:
            apply(i)

    def complete(token: int) -> None:
        apply(outstanding.pop(token))
        order.release(token)
        for req, _ in order.ready():
            run(req[2])

    for i, (cmd, off, ln, _) in enumerate(reqs):
        # some outstanding mutations complete before the next request arrives
        while outstanding and keys[i] % 3 == 0:
            complete(sorted(outstanding)[keys[i] % len(outstanding)])
            keys[i] //= 3
        req = (cmd, 0, i, off, ln, 0)
        if (order.barriers or order.deferred) and order.must_wait(req):
            order.defer(req, None)
        else:
            run(i)
    while outstanding:
        complete(min(outstanding))
    assert not order.deferred and not order.barriers
    want_data, want_reads = sequential(reqs)
    assert data == want_data
    assert reads == want_reads


def test_granularity_widens_ranges() -> None:
    order = Ordering(4096)
    order.hold(1, (C.CMD_WRITE, 0, 1, 10, 1, 0))
    assert order.must_wait((C.CMD_READ, 0, 2, 4000, 10, 0))
    assert not order.must_wait((C.CMD_READ, 0, 3, 4096, 10, 0))
    assert not Ordering(1).must_wait((C.CMD_READ, 0, 2, 4000, 10, 0))
    with pytest.raises(ValueError):
        Ordering(3)


def test_a_write_waits_behind_a_deferred_read_of_its_range() -> None:
    order = Ordering(1)
    order.hold(1, (C.CMD_WRITE, 0, 1, 0, 8, 0))           # outstanding write of [0, 8)
    read = (C.CMD_READ, 0, 2, 4, 8, 0)                    # overlaps it: deferred
    assert order.must_wait(read)
    order.defer(read, None)
    assert order.must_wait((C.CMD_WRITE, 0, 3, 10, 2, 0))  # after the read, on its range
    assert not order.must_wait((C.CMD_READ, 0, 4, 10, 2, 0))  # reads do not conflict
    order.release(1)
    assert [r[2] for r, _ in order.ready()] == [2]
