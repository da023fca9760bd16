"""CPython's full garbage collections, run where they cost no client anything.

A full collection walks every object the collector tracks (with a full
pool, tens of thousands of zspages, handles and their containers) and takes
tens of milliseconds, inside whichever request or job step happened to
allocate the object that triggered it: a stall for every client.  uzramd
therefore turns the automatic full collections off (the young generations
are still collected automatically; they cost microseconds) and runs the
full one itself: once the daemon has been quiet for a whole interval (no
request answered, no bytes held for requests, no device job running), and
at the latest every ``MAX_INTERVAL`` seconds whatever the load, so cyclic
garbage cannot pile up without bound.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import trio

NEVER = 1 << 30
QUIET_INTERVAL = 1.0      # seconds without activity that count as quiet
MIN_INTERVAL = 30.0       # at most one full collection this often when quiet
MAX_INTERVAL = 600.0      # at least one this often, quiet or not


def take_over() -> None:
    """Stop the interpreter from starting full collections on its own."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


async def collect_when_quiet(activity: Callable[[], int]) -> None:
    """Run full collections at quiet moments; ``activity`` returns a number
    that changes whenever the daemon does something for a client."""
    last_full = time.monotonic()
    seen = activity()
    while True:
        await trio.sleep(QUIET_INTERVAL)
        now_seen = activity()
        quiet, seen = now_seen == seen, now_seen
        since = time.monotonic() - last_full
        if (quiet and since >= MIN_INTERVAL) or since >= MAX_INTERVAL:
            gc.collect()
            last_full = time.monotonic()
