"""The read path: ``zram_read_page`` and the block reads built on it.

Every read of a slot marks it accessed (clears IDLE and PP_SLOT, sets
``ac_time``). Same-filled slots are expanded from their word, in-RAM
objects decompressed by the priority that made them, huge ones copied, and
written-back ones read from the backing store: at once, or (with
``async_backing_reads``) deferred as a :class:`PendingRead` whose blocks
stay pinned until ``finish_read``.
"""

from __future__ import annotations

import enum
import errno
from array import array
from itertools import compress
from typing import cast

from . import lanes
from .disk import SECTOR_SHIFT, ZERO_PAGE, DeviceState, Disk, oserror
from .sizeclass import PAGE_SHIFT, PAGE_SIZE
from .slots import ACCESS_CLEAR, ALLOCATED, HUGE, SAME, SIZE_MASK, SPECIAL, WB

_MARKS = ~ACCESS_CLEAR & 0xFFFFFFFF   # IDLE, PP_SLOT: what an access clears (stored only if set)

Chunks = list[bytes | None]   # one page per slot; None: a deferred backing read


class Extent(enum.Enum):
    """How a stretch of the device reads, for block status."""

    DATA = "data"                 # stored contents
    ZERO = "zero"                 # a stored page of zeros (same-filled, word 0)
    UNALLOCATED = "unallocated"   # never written or freed: reads as zeros


_EXTENTS = (Extent.DATA, Extent.ZERO, Extent.UNALLOCATED)
# Per-slot extent codes (indexes into _EXTENTS) from the flags' two low bytes:
# ALLOCATED is bits 0..14, SAME bit 13.
assert ALLOCATED == 0x7FFF and SAME == 0x2000
_ALLOC_HI = lanes.table(lambda x: (x & 0x7F) != 0)
_SAME_HI = lanes.table(lambda x: (x & 0x20) != 0)
_UNALLOCATED_CODE = lanes.table(lambda x: 0 if x else 2)


_SAME_PAGES: dict[int, bytes] = {}
_SAME_PAGES_MAX = 64   # a few distinct fill words are usual (0xFF.., a pattern)


def _same_page(word: int) -> bytes:
    """The page filled with the 8-byte ``word`` (nonzero), shared: a read of a
    same-filled page returns it without building a new one each time."""
    page = _SAME_PAGES.get(word)
    if page is None:
        if len(_SAME_PAGES) >= _SAME_PAGES_MAX:
            _SAME_PAGES.clear()
        page = _SAME_PAGES[word] = word.to_bytes(8, "little") * (PAGE_SIZE // 8)
    return page


def _set_access_times(ac: memoryview, fl: list[int], first: int, stop: int, now: int) -> None:
    """``ac_time`` of the allocated slots in [first, stop) (``fl``: the flags from ``first`` on)."""
    for i in range(first, stop):
        if fl[i - first] & ALLOCATED:
            ac[i] = now


def _trim(chunks: list[bytes], offset: int, length: int) -> list[bytes]:
    """Cut the first and last page of a read to the requested bytes."""
    head = offset & (PAGE_SIZE - 1)
    if head or length < PAGE_SIZE:
        chunks[0] = chunks[0][head : head + length]
    tail = (offset + length) & (PAGE_SIZE - 1)
    if tail and len(chunks) > 1:
        chunks[-1] = chunks[-1][:tail]
    return chunks


class PendingRead:
    """A read waiting for backing-store blocks, which stay pinned meanwhile.

    Read ``blocks`` (``BackingStore.read_blocks``, any thread), then pass the
    results to ``ZramDevice.finish_read`` on the owner thread.
    """

    __slots__ = ("dev", "chunks", "items", "offset", "length")

    def __init__(self, dev: ReadPath, chunks: Chunks, items: list[tuple[int, int]], offset: int, length: int) -> None:
        self.dev = dev
        self.chunks = chunks
        self.items = items      # (block, slot flags at the time of the read)
        self.offset = offset
        self.length = length

    @property
    def blocks(self) -> list[int]:
        return [b for b, _ in self.items]


class ReadPath(DeviceState):
    def _read_page(self, disk: Disk, i: int, now: int, defer: list[tuple[int, int]] | None = None) -> bytes | None:
        """``zram_read_page`` + ``mark_slot_accessed``; returns the 4 KiB page.

        A written-back slot is read from the backing store at once, or, given
        ``defer``, its block is pinned, recorded there, and None returned.
        """
        table = disk.table
        flags = table.flags
        f = flags[i]
        if not f & ALLOCATED:
            return ZERO_PAGE
        flags[i] = f & ACCESS_CLEAR
        table.ac_time[i] = now
        if f & SPECIAL:
            return self._read_special(disk, i, f, defer)
        return self.decompress(disk.decompress0, disk.pool.view(table.handle[i], f & SIZE_MASK))

    def _read_run(self, disk: Disk, first: int, stop: int, now: int, defer: list[tuple[int, int]] | None) -> Chunks:
        """``_read_page`` over [first, stop), inlined for multi-page requests
        (the pool's ``view`` and the decompress-and-check too, the check's
        error path taken only on failure). The slots' flags and handles are
        read in one go (reading changes neither), and the access times are
        stored once the pages are read: in one store when every slot holds
        data, and up to the failing slot if a read fails."""
        table = disk.table
        flags, ac = table.flags, table.ac_time
        loc, zspages = disk.pool.locator()
        decompress0 = disk.decompress0
        recent = disk.recent
        out: Chunks = []
        append = out.append
        fl = flags[first:stop].tolist()
        every = True   # every slot allocated
        i = first
        try:
            for i, f, h in zip(range(first, stop), fl, table.handle[first:stop].tolist()):
                if not f & ALLOCATED:
                    append(ZERO_PAGE)
                    every = False
                    continue
                if f & _MARKS:
                    flags[i] = f & ACCESS_CLEAR
                if f & SPECIAL:   # as _read_special does; same-filled and huge without the call
                    if f & SAME:
                        append(_same_page(h) if h else ZERO_PAGE)
                    elif f & WB or f & SIZE_MASK != PAGE_SIZE:
                        append(self._read_special(disk, i, f, defer))
                    else:   # huge: the page as stored, copied
                        where = loc[h]
                        zs = zspages[where >> 16]
                        assert zs is not None, "a handle into a freed zspage"
                        start = zs.base + (where & 0xFFFF) * zs.size + zs.hdr
                        obj = zs.mv[start : start + PAGE_SIZE]
                        if recent is not None:
                            recent.note(i)
                        append(bytes(obj))
                    continue
                where = loc[h]   # ZsPool.view, inlined
                zs = zspages[where >> 16]
                assert zs is not None, "a handle into a freed zspage"
                start = zs.base + (where & 0xFFFF) * zs.size + zs.hdr
                obj = zs.mv[start : start + (f & SIZE_MASK)]
                try:
                    page = decompress0(obj, PAGE_SIZE)
                except Exception:
                    page = b""   # the checked call below raises EIO
                if len(page) != PAGE_SIZE:
                    page = self.decompress(decompress0, obj)
                if recent is not None:
                    recent.note(i)
                append(page)
        except BaseException:
            _set_access_times(ac, fl, first, i + 1, now)   # the failing slot was accessed too
            raise
        if every:
            ac[first:stop] = array("I", [now]) * (stop - first)
        else:
            _set_access_times(ac, fl, first, stop, now)
        return out

    def _read_special(self, disk: Disk, i: int, f: int, defer: list[tuple[int, int]] | None) -> bytes | None:
        """Same-filled, written-back, huge and recompressed slots."""
        handle = disk.table.handle[i]
        if f & SAME:
            return _same_page(handle) if handle else ZERO_PAGE
        if f & WB:
            backing = self.settings.backing
            assert backing is not None, "a written-back slot without a backing store"
            backing.pin(handle)
            if defer is not None:
                defer.append((handle, f))
                return None
            try:
                res = backing.read_blocks([handle])[0]
            finally:
                backing.unpin(handle)
            return self._decode_block(disk, res, f)
        size = f & SIZE_MASK
        obj = disk.pool.view(handle, size)
        if size == PAGE_SIZE:
            if disk.recent is not None:
                disk.recent.note(i)
            return bytes(obj)
        return self.decompress(disk.codec_for(f), obj)

    def _decode_block(self, disk: Disk, res: bytes | OSError, f: int) -> bytes:
        """A backing block's page: as written, or decompressed (compressed writeback)."""
        if isinstance(res, OSError):
            raise oserror(errno.EIO, f"{self.name}: backing_dev read failed: {res.strerror}")
        self.stats.bd_reads += 1
        size = f & SIZE_MASK
        if size and not f & HUGE:
            return self.decompress(disk.codec_for(f), memoryview(res)[:size])
        return res

    # -- block I/O ----------------------------------------------------------------------

    def read_chunks(self, offset: int, length: int) -> list[bytes] | PendingRead:
        """Read ``length`` bytes at ``offset`` as a list of buffers (one per page
        touched, the first and last trimmed), or a PendingRead when written-back
        pages must be read off this thread. The NBD fast path: a 4 KiB aligned
        read runs ``_read_page`` inlined, its decompress-and-check too (the
        check's error path taken only on failure)."""
        disk = self.disk
        st = self.stats
        if length == PAGE_SIZE and disk is not None and not offset & (PAGE_SIZE - 1) and 0 <= offset < disk.disksize:
            st.read_ios += 1
            st.read_sectors += PAGE_SIZE >> SECTOR_SHIFT
            i = offset >> PAGE_SHIFT
            table = disk.table
            flags = table.flags
            f = flags[i]
            if not f & ALLOCATED:
                return [ZERO_PAGE]
            if f & _MARKS:
                flags[i] = f & ACCESS_CLEAR
            table.ac_time[i] = self.clock()
            if not f & SPECIAL:
                obj = disk.pool.view(table.handle[i], f & SIZE_MASK)
                try:
                    page = disk.decompress0(obj, PAGE_SIZE)
                except Exception:
                    page = b""   # the checked call below raises EIO
                if len(page) == PAGE_SIZE:
                    if disk.recent is not None:
                        disk.recent.note(i)
                    return [page]
                try:
                    return [self.decompress(disk.decompress0, obj)]
                except OSError:
                    st.failed_reads += 1
                    raise
            if f & SAME:
                word = table.handle[i]
                return [_same_page(word) if word else ZERO_PAGE]
            defer: list[tuple[int, int]] | None = [] if self.async_backing_reads else None
            try:
                special = self._read_special(disk, i, f, defer)
            except OSError:
                st.failed_reads += 1
                raise
            if special is None:
                assert defer is not None
                return PendingRead(self, [None], defer, offset, length)
            return [special]
        disk = self.check_range(offset, length, False)
        st.read_ios += 1
        st.read_sectors += (length + 511) >> SECTOR_SHIFT
        if disk is None or not length:
            return []
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        defer = [] if self.async_backing_reads else None
        try:
            chunks = self._read_run(disk, first, last + 1, self.clock(), defer)
        except OSError:
            st.failed_reads += 1
            if defer:
                self._unpin(defer)
            raise
        if defer:
            return PendingRead(self, chunks, defer, offset, length)
        return _trim(cast(list[bytes], chunks), offset, length)  # no None without defer

    def _unpin(self, items: list[tuple[int, int]]) -> None:
        backing = self.settings.backing
        assert backing is not None, "pinned blocks without a backing store"
        for block, _ in items:
            backing.unpin(block)
        self.apply_backing_releases()

    def finish_read(self, pending: PendingRead, results: list[bytes | OSError]) -> list[bytes]:
        """Complete a PendingRead with its blocks' contents (in ``pending.blocks`` order)."""
        self._unpin(pending.items)
        disk = self.disk
        assert disk is not None, "reset while a read was pending"   # reset waits for openers
        chunks = pending.chunks
        k = 0
        try:
            for pos, chunk in enumerate(chunks):
                if chunk is None:
                    chunks[pos] = self._decode_block(disk, results[k], pending.items[k][1])
                    k += 1
        except OSError:
            self.stats.failed_reads += 1
            raise
        return _trim(cast(list[bytes], chunks), pending.offset, pending.length)  # all filled now

    def read(self, offset: int, length: int) -> bytes:
        chunks = self.read_chunks(offset, length)
        if isinstance(chunks, PendingRead):
            assert self.settings.backing is not None
            chunks = self.finish_read(chunks, self.settings.backing.read_blocks(chunks.blocks))
        return b"".join(chunks)

    def peek(self, offset: int, length: int) -> bytes:
        """Read for inspection: no access is recorded (IDLE, PP_SLOT, access
        times and I/O statistics stay as they were)."""
        disk = self.check_range(offset, length, False)
        if disk is None or not length:
            return b""
        first, last = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
        table = disk.table
        flags = table.flags_col[first * 4 : (last + 1) * 4]
        ac = table.ac_col[first * 4 : (last + 1) * 4]
        saved = self.stats.snapshot()
        try:
            pages = [self._read_page(disk, i, 0) or ZERO_PAGE for i in range(first, last + 1)]
            return b"".join(_trim(pages, offset, length))
        finally:
            table.flags_col[first * 4 : (last + 1) * 4] = flags
            table.ac_col[first * 4 : (last + 1) * 4] = ac
            self.stats.restore(saved)

    def extents(self, offset: int, length: int) -> list[tuple[int, Extent]]:
        """Extents (byte length, state) covering the range, for block status."""
        disk = self.check_range(offset, length, False)
        if disk is None or not length:
            return []
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        codes = _extent_codes(disk, first, last + 1)
        n = len(codes)
        changes = lanes.vec(codes[1:]) ^ lanes.vec(codes[:-1])   # nonzero where slot k+1 differs from k
        if changes:
            starts = [0, *compress(range(1, n), lanes.unvec(changes, n - 1))]
        else:
            starts = [0]
        extents = [((b - a) << PAGE_SHIFT, _EXTENTS[codes[a]]) for a, b in zip(starts, [*starts[1:], n])]
        head = offset - (first << PAGE_SHIFT)
        tail = ((last + 1) << PAGE_SHIFT) - (offset + length)
        if head or tail:
            extents[0] = (extents[0][0] - head, extents[0][1])
            extents[-1] = (extents[-1][0] - tail, extents[-1][1])
        return extents


def _extent_codes(disk: Disk, lo: int, hi: int) -> bytes:
    """One byte per slot in [lo, hi): 2 unallocated, 1 stored zero page
    (SAME with word 0), 0 data."""
    table, n = disk.table, hi - lo
    if lanes.is_zero(table.flags_col, 4, lo, hi):
        return b"\x02" * n
    low = lanes.lane(table.flags_col, 4, 0, lo, hi)
    high = lanes.lane(table.flags_col, 4, 1, lo, hi)
    allocated = lanes.vec(low.translate(lanes.NONZERO)) | lanes.vec(high.translate(_ALLOC_HI))
    codes = lanes.unvec(allocated, n).translate(_UNALLOCATED_CODE)
    same = high.translate(_SAME_HI)
    if same.find(1) < 0:
        return codes
    s = lanes.vec(same)
    zero_word = s ^ (s & lanes.vec(lanes.nonzero_slots(table.handle_col, 8, lo, hi)))
    return lanes.unvec(lanes.vec(codes) | zero_word, n)
