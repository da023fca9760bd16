"""A seeded, swap-like page set for the benchmarks.

The mix of pages follows what swap devices hold: 14% same-filled pages
(mostly zero, some filled with one repeated word), 13% incompressible pages
(random bytes: zram stores them raw, as "huge" pages), and the rest a mix of
heap-like pages (64-bit words of a managed heap: pointers into a few arenas,
object headers, small integers, doubles, zeroed gaps) and text-like pages
(words drawn with a Zipf-like law, numbers and punctuation, some pages with a
zeroed tail). The same seed and size give the same bytes on every machine.

    python bench/corpus.py OUT.img [MiB] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

PAGE = 4096
WORDS = PAGE // 8
SAME, RANDOM, HEAP, TEXT = range(4)
KINDS = ("same-filled", "incompressible", "heap-like", "text-like")
SHARES = {SAME: 0.14, RANDOM: 0.13}   # of all pages; heap-like and text-like share the rest
HEAP_OF_REST = 0.6
BATCH = 1024                          # pages generated at once


def kinds(pages: int, rng: np.random.Generator) -> np.ndarray:
    """The kind of every page: exact shares, in a seeded random order."""
    n_same, n_random = round(pages * SHARES[SAME]), round(pages * SHARES[RANDOM])
    n_heap = round((pages - n_same - n_random) * HEAP_OF_REST)
    counts = (n_same, n_random, n_heap, pages - n_same - n_random - n_heap)
    return rng.permutation(np.repeat(np.arange(4, dtype=np.uint8), counts))


def same_filled(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four in five pages zero, the others one repeated 8-byte word."""
    fill = np.where(rng.random(n) < 0.8, 0,
                    rng.choice(np.array([0xFFFFFFFFFFFFFFFF, 0x0101010101010101, 0x20, 1], dtype=np.uint64), n))
    return np.repeat(fill.astype(np.uint64)[:, None], WORDS, axis=1).view(np.uint8)


def heap_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """Words of a managed heap, each drawn by kind, with a zeroed tail on a third of the pages."""
    shape = (n, WORDS)
    kind = rng.choice(6, size=shape, p=[0.34, 0.16, 0.10, 0.24, 0.10, 0.06])
    arenas = np.array([0x00007F3A1C000000, 0x00007F3A24000000, 0x000055D0E8A00000], dtype=np.uint64)
    types = (np.uint64(0x000055D0E7C40000) + rng.integers(0, 64, size=24, dtype=np.uint64) * np.uint64(0x1A0))
    words = np.zeros(shape, dtype=np.uint64)
    small = rng.integers(0, 4096, size=shape, dtype=np.uint64)
    refs = rng.integers(1, 4, size=shape, dtype=np.uint64)
    ptrs = arenas[rng.integers(0, len(arenas), size=shape)] + rng.integers(0, 1 << 18, size=shape, dtype=np.uint64) * np.uint64(16)
    typed = types[rng.integers(0, len(types), size=shape)]
    doubles = rng.random(shape).view(np.uint64)
    for k, src in ((1, small), (2, refs), (3, ptrs), (4, typed), (5, doubles)):
        np.copyto(words, src, where=kind == k)
    tails = np.where(rng.random(n) < 0.4, rng.integers(64, WORDS, size=n), WORDS)
    words[np.arange(WORDS)[None, :] >= tails[:, None]] = 0
    return words.view(np.uint8)


def incompressible(n: int, rng: np.random.Generator) -> np.ndarray:
    pages: np.ndarray = rng.integers(0, 256, size=(n, PAGE), dtype=np.uint8)
    return pages


def text_stream(size: int, rng: np.random.Generator) -> bytes:
    """``size`` bytes of text: prose from a Zipf-like vocabulary, and records
    (JSON objects, log lines) whose keys and templates repeat."""
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    weights = 1 / np.arange(1, len(letters) + 1)
    vocab = [bytes(rng.choice(letters, size=int(rng.integers(2, 10)), p=weights / weights.sum())) for _ in range(400)]
    p = 1 / np.arange(1, len(vocab) + 1) ** 1.3
    p /= p.sum()
    levels = (b"INFO", b"INFO", b"INFO", b"DEBUG", b"WARNING")
    out = bytearray()
    while len(out) < size:
        words = [vocab[i] for i in rng.choice(len(vocab), size=4000, p=p)]
        nums = rng.integers(0, 100000, size=400)
        for j in range(0, 4000, 40):
            kind = int(nums[j // 10]) % 3
            w = words[j:j + 40]
            n = int(nums[j // 10 + 1])
            if kind == 0:
                out += b" ".join(w[:int(nums[j // 10 + 2]) % 30 + 5]) + b".\n"
            elif kind == 1:
                out += (b'{"id": %d, "user": "%s", "name": "%s %s", "tags": ["%s", "%s"], "score": %d.%d, "active": true}\n'
                        % (n, w[0], w[1], w[2], w[3], w[4], n % 100, n % 997))
            else:
                out += (b"2026-11-%02d %02d:%02d:%02d,%03d %s [worker-%d] %s: %s %s %s id=%d\n"
                        % (n % 28 + 1, n % 24, n % 60, n % 59, n % 1000, levels[n % 5], n % 8,
                           w[0], w[1], w[2], w[3], n))
    return bytes(out[:size])


def text_like(n: int, rng: np.random.Generator, stream: bytes) -> np.ndarray:
    """Pages cut from the text stream at random places, a quarter with a zeroed tail."""
    src = np.frombuffer(stream, dtype=np.uint8)
    starts = rng.integers(0, len(src) - PAGE, size=n)
    pages: np.ndarray = src[starts[:, None] + np.arange(PAGE)[None, :]].copy()
    tails = np.where(rng.random(n) < 0.25, rng.integers(256, PAGE, size=n), PAGE)
    pages[np.arange(PAGE)[None, :] >= tails[:, None]] = 0
    return pages


def build(out: Path, mib: int, seed: int = 7) -> int:
    """Write ``mib`` MiB of pages to ``out``; returns the number of pages."""
    pages = (mib << 20) // PAGE
    rng = np.random.default_rng(seed)
    order = kinds(pages, rng)
    stream = text_stream(8 << 20, rng)
    with open(out, "wb") as dst:
        for first in range(0, pages, BATCH):
            batch = order[first:first + BATCH]
            data = np.empty((len(batch), PAGE), dtype=np.uint8)
            for kind, make in ((SAME, same_filled), (RANDOM, incompressible),
                               (HEAP, heap_like), (TEXT, lambda n, r: text_like(n, r, stream))):
                where = batch == kind
                if where.any():
                    data[where] = make(int(where.sum()), rng)
            dst.write(data.tobytes())
    return pages


def census(pages: int, seed: int = 7) -> dict[str, int]:
    """How many pages of each kind ``build`` writes for ``pages`` pages."""
    order = kinds(pages, np.random.default_rng(seed))
    return {name: int((order == k).sum()) for k, name in enumerate(KINDS)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("mib", type=int, nargs="?", default=256)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t = time.monotonic()
    pages = build(args.out, args.mib, args.seed)
    print(f"{args.out}: {pages} pages ({pages * PAGE >> 20} MiB) in {time.monotonic() - t:.1f} s; "
          + ", ".join(f"{v} {k}" for k, v in census(pages, args.seed).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
