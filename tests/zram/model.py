"""A reference model of a zram device's contents and accounting.

It knows only bytes and which pages hold data; the expected stats follow from
zram's rules (same-filled, huge, compressed), recomputed from the contents.
"""

from __future__ import annotations

from uzram.zram.compressors import create_codec

PAGE = 4096


def is_same(page: bytes) -> bool:
    return page[8:] == page[:-8]


class DeviceModel:
    def __init__(self, nr_pages: int, algorithm: str = "lz4", huge_class_size: int = 3625) -> None:
        self.nr_pages = nr_pages
        self.data = bytearray(nr_pages * PAGE)
        self.stored = [False] * nr_pages
        self.codec = create_codec(algorithm)
        self.huge_class_size = huge_class_size

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data
        for i in range(offset // PAGE, (offset + len(data) - 1) // PAGE + 1):
            self.stored[i] = True

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def _free_pages(self, first: int, count: int) -> None:
        for i in range(first, first + count):
            self.data[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
            self.stored[i] = False

    def discard(self, offset: int, length: int) -> None:
        first = -(-offset // PAGE)
        end = offset + length
        if first * PAGE >= end:
            return
        self._free_pages(first, (end - first * PAGE) // PAGE)

    def write_zeroes(self, offset: int, length: int) -> None:
        end = offset + length
        first, last = -(-offset // PAGE), end // PAGE
        if first > last:
            self.write(offset, bytes(length))
            return
        if offset % PAGE:
            self.write(offset, bytes(first * PAGE - offset))
        if end % PAGE:
            self.write(last * PAGE, bytes(end - last * PAGE))
        self._free_pages(first, last - first)

    def page(self, i: int) -> bytes:
        return bytes(self.data[i * PAGE : (i + 1) * PAGE])

    def expected_stats(self) -> dict[str, int]:
        same = huge = compr = stored = 0
        for i in range(self.nr_pages):
            if not self.stored[i]:
                continue
            stored += 1
            page = self.page(i)
            if is_same(page):
                same += 1
                continue
            n = len(self.codec.compress(page))
            if n >= self.huge_class_size:
                huge += 1
                compr += PAGE
            else:
                compr += n
        return {"orig": stored * PAGE, "same": same, "huge": huge, "compr": compr}
