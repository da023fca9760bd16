"""Page generators for tests: every kind of page the zram pipeline treats differently."""

from __future__ import annotations

import random

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
