"""Busy polling between requests (uzram/nbd/busypoll.py): when it polls, and
when it must not.  The client is libnbd in a process of its own: a client in
the test's own event loop could not send while the server spins."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from uzram.nbd import busypoll
from uzram.nbd.server import ServerConfig

from .memexport import MemExport
from .rawclient import RawClient
from .support import NBDEnv, libnbd, start_env


@pytest.fixture(autouse=True)
def open_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A gate without schedstat, always open: a loaded test machine's run
    delay would otherwise close it (the gate has tests of its own below)."""
    monkeypatch.setattr(busypoll, "gate", lambda: busypoll.Gate("/nonexistent"))
    yield


def qd1(n: int, gap: float = 2e-4) -> str:
    """A script: ``n`` 4 KiB reads one at a time, ``gap`` seconds apart (by
    default long enough that the next request is not there yet when the
    reader looks right after its reply, short enough to be polled for)."""
    return f"""
import time
h = nbd.NBD()
h.connect_uri(URI)
for i in range({n}):
    h.pread(4096, (i % 64) * 4096)
    time.sleep({gap})
h.shutdown()
"""


PATIENT_BUDGET, PATIENT_ARM = 50e-3, 200e-3
"""A budget far longer than a loaded machine keeps a runnable client off a
CPU (a 2 ms budget caught only 38 of 300 requests on a busy CI machine):
the tests that count hits check that a one-at-a-time client is polled for,
not how often a scheduler lets it back within 2 ms."""


async def serve(nursery: trio.Nursery, tmp: str, export: MemExport | None = None,
                busy_poll: float = 2e-3, arm: float = 10e-3) -> NBDEnv:
    export = export or MemExport(1 << 20, "", "")
    return await start_env(nursery, tmp, [export],
                           ServerConfig(busy_poll=busy_poll, busy_poll_arm=arm))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the client must run while the server spins")
async def test_a_client_one_request_at_a_time_is_polled(nursery: trio.Nursery, short_tmp: str) -> None:
    env = await serve(nursery, short_tmp, busy_poll=PATIENT_BUDGET, arm=PATIENT_ARM)
    await libnbd(qd1(300), env.uri)
    await env.stop()
    # polling reached most requests (not all: the first, and any the
    # client was descheduled for longer than the budget, are slept for)
    assert env.server.polled >= 100, (env.server.polled, env.server.poll_misses)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the client must run while the server spins")
async def test_the_counts_include_open_connections(nursery: trio.Nursery, short_tmp: str, tmp_path: Path) -> None:
    """What metrics report while a client is still connected (the server's
    own counters grow only when a connection ends)."""
    env = await serve(nursery, short_tmp, busy_poll=PATIENT_BUDGET, arm=PATIENT_ARM)
    done, release = tmp_path / "done", tmp_path / "release"
    script = qd1(300)
    async with trio.open_nursery() as inner:
        inner.start_soon(libnbd, script[: script.rindex("h.shutdown()")] + f"""
open({str(done)!r}, "w").close()
import os
while not os.path.exists({str(release)!r}):
    time.sleep(0.01)
h.shutdown()
""", env.uri)
        try:
            with trio.fail_after(60):
                while not done.exists():
                    await trio.sleep(0.01)
            hits, misses = env.server.busy_polls()
        finally:
            release.touch()     # the client ends even when a check fails
        assert env.server.polled == env.server.poll_misses == 0   # nothing ended yet
        assert hits >= 100, (hits, misses)
    await env.stop()
    assert env.server.busy_polls() == (env.server.polled, env.server.poll_misses) == (hits, misses)


async def test_off_never_polls(nursery: trio.Nursery, short_tmp: str) -> None:
    env = await serve(nursery, short_tmp, busy_poll=0.0)
    await libnbd(qd1(200), env.uri)
    await env.stop()
    assert env.server.polled == env.server.poll_misses == 0


async def test_not_while_another_connection_is_served(nursery: trio.Nursery, short_tmp: str) -> None:
    env = await serve(nursery, short_tmp)
    other = RawClient(await env.connect())
    await other.go()
    await libnbd(qd1(200), env.uri)
    assert await other.pread(0, 4096) == bytes(4096)
    other.sock.close()
    await env.stop()
    assert env.server.polled == env.server.poll_misses == 0


async def test_not_for_a_client_with_several_requests_in_flight(nursery: trio.Nursery, short_tmp: str) -> None:
    """Its requests pile up while the reader sleeps: batches stay large."""
    env = await serve(nursery, short_tmp)
    await libnbd("""
import time
h = nbd.NBD()
h.connect_uri(URI)
buf = [nbd.Buffer(4096) for _ in range(8)]
for r in range(100):
    for i in range(8):
        h.aio_pread(buf[i], (r * 8 + i) % 256 * 4096, completion=lambda *a: 1)   # 1: retire
    while h.aio_in_flight():
        h.poll(-1)
    time.sleep(2e-4)
h.shutdown()
""", env.uri)
    await env.stop()
    # 800 requests in bursts of 8 (0 polls here; a poll per burst, about
    # 100, when arming ignores how many requests a receive brought)
    assert env.server.polled + env.server.poll_misses <= 30, (env.server.polled, env.server.poll_misses)


async def test_a_slow_client_disarms_it(nursery: trio.Nursery, short_tmp: str) -> None:
    env = await serve(nursery, short_tmp, busy_poll=1e-3, arm=2e-3)
    await libnbd(qd1(40, gap=0.01), env.uri)
    await env.stop()
    # the gaps (10 ms) are longer than the arming threshold: at most a
    # poll right after the handshake, never one per request
    assert env.server.polled + env.server.poll_misses <= 2, (env.server.polled, env.server.poll_misses)


async def test_a_client_just_slower_than_the_budget_rests_it(nursery: trio.Nursery, short_tmp: str) -> None:
    env = await serve(nursery, short_tmp, busy_poll=1e-3, arm=20e-3)
    await libnbd(qd1(100, gap=0.004), env.uri)
    await env.stop()
    # polls miss (4 ms gaps, 1 ms budget): 3 in a row, then 64 waits
    # without; a spin per request would be about 100.  (A server that got
    # the CPU late may catch a request: seen once on a loaded machine.)
    polls = (env.server.polled, env.server.poll_misses)
    assert env.server.polled <= 2 and sum(polls) <= 16, polls


async def test_not_while_the_cpus_are_contended(nursery: trio.Nursery, short_tmp: str,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "schedstat"
    schedstat(f, 0)
    closed = busypoll.Gate(str(f))
    closed.open = False
    closed._next = 1 << 62          # as after a reading of much run delay
    monkeypatch.setattr(busypoll, "gate", lambda: closed)
    env = await serve(nursery, short_tmp)
    await libnbd(qd1(100), env.uri)
    await env.stop()
    assert env.server.polled == env.server.poll_misses == 0


async def test_not_while_a_request_is_awaited(nursery: trio.Nursery, short_tmp: str) -> None:
    """An awaited read completes through the event loop: spinning would
    hold up its own reply, so every poll would miss."""
    export = MemExport(1 << 20, "", "")
    export.async_ops = {"read"}
    env = await serve(nursery, short_tmp, export)
    await libnbd(qd1(100), env.uri)
    await env.stop()
    assert env.server.poll_misses == 0


def schedstat(path: Path, delay_ns: int) -> None:
    path.write_text(f"123456 {delay_ns} 42\n")


def test_gate_closes_on_run_delay_and_reopens_with_hysteresis(tmp_path: Path) -> None:
    f = tmp_path / "schedstat"
    schedstat(f, 0)
    g = busypoll.Gate(str(f))
    step = busypoll.CHECK_NS
    t = step
    assert g.allows(t)                     # first reading: no interval yet
    schedstat(f, int(step * 0.01))         # 1 % of the interval runnable, waiting
    t += step
    assert g.allows(t)
    assert g.allows(t + step // 2)         # between checks: not read again
    schedstat(f, int(step * 0.01) + int(step * 0.05))   # 5 %: contended
    t += step
    assert not g.allows(t)
    schedstat(f, int(step * 0.06) + int(step * 0.01))   # 1 %: not yet below resume
    t += step
    assert not g.allows(t)
    schedstat(f, int(step * 0.07) + int(step * 0.001))  # 0.1 %: quiet again
    t += step
    assert g.allows(t)


def test_gate_without_schedstat_is_open_and_never_is_closed(tmp_path: Path) -> None:
    assert busypoll.Gate(str(tmp_path / "missing")).allows(busypoll.CHECK_NS)
    assert not busypoll.NEVER.allows(busypoll.CHECK_NS)
    assert not busypoll.NEVER.allows(10 * busypoll.CHECK_NS)
