"""Page generators for tests: every kind of page the zram pipeline treats differently."""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

PAGE = 4096


def zero() -> bytes:
    return bytes(PAGE)


def same(word: int) -> bytes:
    return word.to_bytes(8, "little") * (PAGE // 8)


def incompressible(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE)


def compressible(rng: random.Random) -> bytes:
    """Text-like data that lz4 shrinks well below the huge threshold."""
    words = [b"swap", b"page", b"zram", b"kernel", b"struct", b"0x7f", b"\x00\x00\x00\x01"]
    out = bytearray()
    while len(out) < PAGE:
        out += rng.choice(words) + bytes([rng.randrange(32, 127)])
    return bytes(out[:PAGE])


def half_random(rng: random.Random) -> bytes:
    """Compresses to about half a page: a mid-size object."""
    return rng.randbytes(PAGE // 2) + bytes(PAGE // 2)


def any_page(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return zero()
    if kind == 1:
        return same(rng.getrandbits(64))
    if kind == 2:
        return incompressible(rng)
    if kind == 3:
        return compressible(rng)
    return half_random(rng)


@functools.cache
def binary_corpus() -> bytes:
    """Machine code and data of a real executable (the running Python's)."""
    for candidate in (Path(sys.executable).resolve(), Path("/bin/sh").resolve()):
        data = candidate.read_bytes()
        if len(data) > 64 * PAGE:
            return data
    return b"".join(compressible(random.Random(i)) for i in range(64))


def binary(rng: random.Random) -> bytes:
    data = binary_corpus()
    off = rng.randrange(len(data) - PAGE)
    return data[off : off + PAGE]
