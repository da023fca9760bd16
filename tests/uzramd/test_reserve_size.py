"""The pool reserve's automatic size: larger while the machine's vm settings
are below what swap needs, back to the usual size once they are raised
(``systemd/uzram-swap`` raises them after uzramd has started).

The keeper runs in process on a real device and pool; only the reading of
``/proc/sys/vm`` is replaced, since changing this machine's settings would
change how the whole machine reclaims. ``test_swap_mode.py`` checks the
reading itself against this machine's files."""

from __future__ import annotations

import pytest
import trio

from uzram.daemon import reserve
from uzram.daemon.registry import DeviceRegistry

MiB = 1 << 20
RAM_384M = 384 * MiB


@pytest.mark.parametrize(("disksize", "ram", "short", "want"), [
    (512 * MiB, RAM_384M, False, 12 * MiB),    # 1/32 of RAM, rounded up to 4 MiB chunks
    (512 * MiB, RAM_384M, True, 32 * MiB),     # the floor while the settings are short
    (64 * MiB, RAM_384M, False, 8 * MiB),      # 1/8 of the disk, the usual floor
    (64 * MiB, RAM_384M, True, 32 * MiB),
    (8 << 30, 16 << 30, False, 256 * MiB),     # the cap
    (8 << 30, 16 << 30, True, 256 * MiB),
    (4 << 30, 4 << 30, True, 128 * MiB),       # above the floor: unchanged
])
def test_automatic_size(disksize: int, ram: int, short: bool, want: int) -> None:
    assert reserve.reserve_for(disksize, reserve.AUTO, ram, vm_short=short) == want


def test_a_set_size_ignores_the_vm_settings() -> None:
    assert reserve.reserve_for(512 * MiB, 16 * MiB, RAM_384M, vm_short=True) == 16 * MiB


async def test_the_keeper_lowers_the_reserve_once_the_settings_are_raised(monkeypatch) -> None:
    short = [True]
    monkeypatch.setattr(reserve, "vm_short", lambda: short[0])
    monkeypatch.setattr(reserve, "VM_CHECK_EVERY", 0.05)
    monkeypatch.setattr(reserve, "mem_total", lambda: RAM_384M)
    registry = DeviceRegistry()
    dev = registry.add(0)
    dev.store("disksize", "512M")
    pool = dev.pool
    assert pool is not None

    async def until(cond, what: str) -> None:
        with trio.move_on_after(20):
            while not cond():
                await trio.sleep(0.01)
            return
        raise AssertionError(f"no {what} in 20 s: reserve {pool.reserve_pages} pages, {pool.reserve_free} free")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reserve._keep, registry, reserve.AUTO, False, None, 0.01, lambda d: None, set())
            await until(lambda: pool.reserve_pages == 32 * MiB >> 12, "the larger reserve")
            await until(lambda: pool.reserve_free == pool.reserve_pages, "the reserve filled")
            await trio.sleep(0.2)
            assert pool.reserve_pages == 32 * MiB >> 12   # still short: kept
            short[0] = False
            await until(lambda: pool.reserve_pages == 12 * MiB >> 12, "the usual reserve")
            # nothing given back: the frames beyond it are taken by stores first
            assert pool.reserve_free == 32 * MiB >> 12
            nursery.cancel_scope.cancel()
    finally:
        pool.set_feed(None, 0)
        dev.reset()
