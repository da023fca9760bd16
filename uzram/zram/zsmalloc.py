"""A zsmalloc-style slab pool over private anonymous memory.

Layout: memory comes in 4 MiB ``mmap`` chunks (MAP_PRIVATE|MAP_ANONYMOUS, so
untouched pages cost nothing and ``MADV_DONTNEED`` really frees). Each chunk
is cut into frames of one size (1..16 pages); a zspage occupies one frame, so
its objects are contiguous and may straddle page boundaries as in zsmalloc.

Objects of non-huge classes start with an 8-byte header: ``handle << 1 | 1``
while allocated, ``(next free index + 1) << 1`` while on the zspage's free
list. Objects never allocated since the zspage was created lie beyond
``fresh`` and are not touched (so a new zspage commits no memory until used).
Huge classes hold one page-sized object per page and keep its handle in the
zspage instead.

Handles are indices into a location table (``zspage id << 16 | object
index``), so compaction can move objects without their owners noticing.

Reserve (for a swap server under global memory pressure): with a ``feed``
(:class:`uzram.zram.chunkfeed.ChunkFeed`) the pool keeps ``reserve_pages``
pages of free frames resident: whole spare chunks prefaulted by the feed's
thread, and freed frames kept instead of released. New zspages take resident
frames first; with none left the pool waits up to ``FEED_WAIT`` for the
feed, then fails the store with ENOMEM (as zram's zs_malloc fails) rather
than fault in memory on the storing thread. When the daemon's memory is
locked (``locked``), a frame is munlocked before ``MADV_DONTNEED`` (which
refuses locked pages) and locked again (on fault) when reused.

Not thread-safe: one thread owns the pool (the device's owner thread), and
nothing here locks. Views of objects (``view``) stay valid only until the
next mutation; ``pin`` keeps one in place across mutations.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from .chunkfeed import ChunkFeed
from .sizeclass import (
    CHAIN_SIZE_DEFAULT,
    class_index,
    PAGE_SIZE,
    ZS_HANDLE_SIZE,
    ZS_MAX_ALLOC_SIZE,
    ClassSpec,
    build_class_table,
)

CHUNK_PAGES = 1024
CHUNK_BYTES = CHUNK_PAGES * PAGE_SIZE
NR_FULLNESS_GROUPS = 12
INUSE_RATIO_0 = 0
INUSE_RATIO_99 = 10
INUSE_RATIO_100 = 11
_ALLOC_GROUPS = ((1 << (INUSE_RATIO_99 + 1)) - 1) & ~1  # groups 1..10
_ISOLATED = -1
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


_MADV_POPULATE_WRITE = 23
_MLOCK_ONFAULT = 1
FEED_WAIT = 0.2
"""Seconds a store waits for the feed's next chunk before failing with ENOMEM."""
RECENT_PAGES = 64
"""Pages of freed frames kept resident for the next new zspages (without a
reserve): a device overwriting pages frees and makes zspages all the time,
and each ``MADV_DONTNEED`` costs a system call and a page fault per page later."""

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None


class _Chunk:
    __slots__ = ("mm", "mv", "q", "_addr")

    def __init__(self, populate: bool = False) -> None:
        self.mm = mmap.mmap(-1, CHUNK_BYTES, flags=_MAP_FLAGS)
        self._addr = 0
        if populate:
            populate_mapping(self.mm, self.addr())
        self.mv = memoryview(self.mm)
        self.q = self.mv.cast("Q")

    def addr(self) -> int:
        if not self._addr:
            self._addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        return self._addr

    def unlock(self, base: int, length: int) -> None:
        if _libc is not None:
            _libc.munlock(ctypes.c_void_p(self.addr() + base), ctypes.c_size_t(length))

    def relock(self, base: int, length: int) -> None:
        if _libc is not None:
            _libc.mlock2(ctypes.c_void_p(self.addr() + base), ctypes.c_size_t(length), _MLOCK_ONFAULT)


def populate_mapping(mm: mmap.mmap, addr: int = 0, fresh: bool = True) -> None:
    """Fault a mapping in, with the GIL released: a thread faulting in
    memory under pressure must not stop the others. Not MAP_POPULATE, which
    mlockall(MCL_ONFAULT) turns off, nor mmap.madvise, which holds the GIL.
    Before Linux 5.14 (no MADV_POPULATE_WRITE) only a ``fresh`` (all zero)
    mapping is faulted in, by zeroing it."""
    if _libc is None:
        return
    if not addr:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    if _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(len(mm)), _MADV_POPULATE_WRITE) != 0 and fresh:
        ctypes.memset(addr, 0, len(mm))   # memset releases the GIL too


def prefaulted_chunk() -> _Chunk:
    """A chunk whose pages are all resident (and locked, under mlockall):
    made outside the pool's thread, for :meth:`ZsPool.add_spare`."""
    return _Chunk(populate=True)


class SizeClass:
    __slots__ = ("spec", "size", "ppz", "opz", "huge", "groups", "mask", "obj_allocated", "obj_used", "fg_of", "hot")

    def __init__(self, spec: ClassSpec) -> None:
        self.spec = spec
        self.size = spec.size
        self.ppz = spec.pages_per_zspage
        self.opz = spec.objs_per_zspage
        self.huge = spec.huge
        # fullness group -> zspages in it (dicts keep insertion order)
        self.groups: list[dict[ZsPage, None]] = [{} for _ in range(NR_FULLNESS_GROUPS)]
        self.mask = 0  # bit g set when groups[g] is non-empty
        self.obj_allocated = 0
        self.obj_used = 0
        self.fg_of = [self.fullness(n) for n in range(self.opz + 1)]
        # the zspage the next store picks, while known: the last one of the
        # fullest non-empty group below 100% (zsmalloc's pick). _regroup
        # keeps it exact; a move of the target itself down forgets it.
        self.hot: ZsPage | None = None

    def fullness(self, inuse: int) -> int:
        if inuse == 0:
            return INUSE_RATIO_0
        if inuse == self.opz:
            return INUSE_RATIO_100
        return 100 * inuse // self.opz // 10 + 1

    def can_compact(self) -> int:
        """``zs_can_compact``: pages compaction could free in this class."""
        return (self.obj_allocated - self.obj_used) // self.opz * self.ppz


class ZsPage:
    __slots__ = (
        "zid", "cls", "chunk", "mv", "q", "base", "size", "hdr",
        "inuse", "free_head", "fresh", "fg", "pins", "deferred", "huge_handle",
    )

    def __init__(self, zid: int, cls: SizeClass, chunk: _Chunk, base: int) -> None:
        self.zid = zid
        self.cls = cls
        self.chunk = chunk
        self.mv = chunk.mv
        self.q = chunk.q
        self.base = base
        self.size = cls.size
        self.hdr = 0 if cls.huge else ZS_HANDLE_SIZE
        self.inuse = 0
        self.free_head = 0   # (index + 1) of the first free object, 0 = none
        self.fresh = 0       # objects at or above this index were never allocated
        self.fg = INUSE_RATIO_0
        self.pins = 0
        self.deferred: list[int] | None = None  # frees waiting for the last unpin
        self.huge_handle = 0


@dataclass(frozen=True)
class ClassStat:
    """One row of zsmalloc's debugfs ``classes`` table."""
    index: int
    size: int
    groups: tuple[int, ...]   # zspages per fullness group 10%..99%, 100%
    obj_allocated: int
    obj_used: int
    pages_used: int
    pages_per_zspage: int
    freeable: int


class ZsPool:
    """zs_malloc / zs_free / object access / zs_compact, with zsmalloc's policies."""

    def __init__(self, chain_size: int = CHAIN_SIZE_DEFAULT) -> None:
        table = build_class_table(chain_size)
        self.chain_size = chain_size
        self.huge_class_size = table.huge_class_size
        self.classes = [SizeClass(spec) for spec in table.specs]
        by_index = {c.spec.index: c for c in self.classes}
        # request size (0..PAGE_SIZE) -> class, one list lookup on the hot path
        self._by_size: list[SizeClass] = [by_index[table.for_request(max(s, 1))] for s in range(ZS_MAX_ALLOC_SIZE + 1)]
        self._index_map = table.index_map
        self._loc = array("Q", [0])       # handle -> location; free handles chain through it
        self._hfree = 0
        self._zspages: list[ZsPage | None] = []
        self._free_zids: list[int] = []
        self._frames: dict[int, list[tuple[_Chunk, int]]] = {}   # not resident
        self._warm: dict[int, list[tuple[_Chunk, int]]] = {}     # resident, kept as reserve
        self._recent: dict[int, list[tuple[_Chunk, int]]] = {}   # resident, freed lately (no feed)
        self._recent_pages = 0
        self._spare: list[_Chunk] = []
        self._chunks: list[_Chunk] = []
        self.reserve_pages = 0
        self.reserve_free = 0      # pages in warm frames and spare chunks
        self.reserve_misses = 0    # stores refused (ENOMEM): no resident frame in time
        self.feed: ChunkFeed[_Chunk] | None = None
        self._requested = 0        # chunks asked of the feed, not received yet
        self.locked = False
        self.pages_allocated = 0
        self.pages_compacted = 0
        self.objects = 0

    # -- accounting -------------------------------------------------------

    def class_of(self, size: int) -> int:
        """``zs_lookup_class_index``: the class index serving ``size`` (no handle added)."""
        return self._index_map[class_index(size)]

    @property
    def total_pages(self) -> int:
        """``zs_get_total_pages``: pages owned by zspages."""
        return self.pages_allocated

    # -- reserve -------------------------------------------------------------

    def reserve_short(self) -> bool:
        """Whether the reserve wants another spare chunk."""
        return self.reserve_free < self.reserve_pages

    def add_spare(self, chunk: _Chunk) -> None:
        self._spare.append(chunk)
        self._chunks.append(chunk)
        self.reserve_free += CHUNK_PAGES

    def set_feed(self, feed: ChunkFeed[_Chunk] | None, reserve_pages: int) -> None:
        """Keep ``reserve_pages`` resident, refilled by ``feed`` (None: stop)."""
        if self.feed is not None:
            self.feed.close()
        self.feed = feed
        if feed is not None:   # the reserve decides what stays resident from now on
            recent, self._recent, self._recent_pages = self._recent, {}, 0
            for ppz, frames in recent.items():
                for chunk, base in frames:
                    self._release_frame(chunk, base, ppz)
        self.reserve_pages = reserve_pages
        self._requested = 0
        self._ask_feed()

    def _ask_feed(self) -> None:
        feed = self.feed
        if feed is None:
            return
        while (chunk := feed.poll()) is not None:
            self._requested -= 1
            self.add_spare(chunk)
        missing = -(-(self.reserve_pages - self.reserve_free) // CHUNK_PAGES) - self._requested
        if missing > 0:
            self._requested += missing
            feed.request(missing)

    def _carve(self, chunk: _Chunk, ppz: int) -> list[tuple[_Chunk, int]]:
        step = ppz * PAGE_SIZE
        return [(chunk, base) for base in range((CHUNK_PAGES // ppz - 1) * step, -1, -step)]

    def _take_frame(self, ppz: int) -> tuple[_Chunk, int]:
        """A frame of ``ppz`` pages: resident ones first (the reserve), then
        released ones, then a new chunk; under pressure, ENOMEM instead."""
        warm = self._warm.get(ppz)
        if warm:
            self.reserve_free -= ppz
            if self.feed is not None and self.reserve_free < self.reserve_pages:
                self._ask_feed()
            return warm.pop()
        feed = self.feed
        if feed is None:
            recent = self._recent.get(ppz)
            if recent:
                self._recent_pages -= ppz
                return recent.pop()
        if feed is not None:
            self._ask_feed()
            if not self._spare:
                # faulting memory in here could wait on the very swap-out this
                # store is part of: wait a little for the feed, else ENOMEM
                chunk = feed.take(FEED_WAIT)
                if chunk is None:
                    self.reserve_misses += 1
                    raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM) + " (pool reserve exhausted)")
                self._requested -= 1
                self.add_spare(chunk)
        if self._spare:
            chunk = self._spare.pop()
            frames = self._carve(chunk, ppz)
            self.reserve_free -= CHUNK_PAGES - (len(frames) - 1) * ppz
            frame = frames.pop()
            self._warm.setdefault(ppz, []).extend(frames)
            if feed is not None:
                self._ask_feed()
            return frame
        released = self._frames.get(ppz)
        if released:
            chunk, base = released.pop()
            if self.locked:
                chunk.relock(base, ppz * PAGE_SIZE)
            return chunk, base
        chunk = _Chunk()
        self._chunks.append(chunk)
        frames = self._frames[ppz] = self._carve(chunk, ppz)
        return frames.pop()

    def _release_frame(self, chunk: _Chunk, base: int, ppz: int) -> None:
        """Keep a freed frame resident while the reserve wants it, else give
        its pages back."""
        if self.reserve_free + ppz <= self.reserve_pages:
            self._warm.setdefault(ppz, []).append((chunk, base))
            self.reserve_free += ppz
            return
        if self.feed is None and self._recent_pages + ppz <= RECENT_PAGES:
            self._recent.setdefault(ppz, []).append((chunk, base))
            self._recent_pages += ppz
            return
        length = ppz * PAGE_SIZE
        if self.locked:
            chunk.unlock(base, length)
        chunk.mm.madvise(mmap.MADV_DONTNEED, base, length)
        self._frames.setdefault(ppz, []).append((chunk, base))

    # -- zspages -------------------------------------------------------------

    def _new_zspage(self, cls: SizeClass) -> ZsPage:
        chunk, base = self._take_frame(cls.ppz)
        if self._free_zids:
            zid = self._free_zids.pop()
        else:
            zid = len(self._zspages)
            self._zspages.append(None)
        zs = ZsPage(zid, cls, chunk, base)
        self._zspages[zid] = zs
        cls.obj_allocated += cls.opz
        self.pages_allocated += cls.ppz
        cls.groups[INUSE_RATIO_0][zs] = None
        cls.mask |= 1
        return zs

    def _free_zspage(self, zs: ZsPage) -> None:
        cls = zs.cls
        self._unlink(zs)
        cls.obj_allocated -= cls.opz
        self.pages_allocated -= cls.ppz
        self._release_frame(zs.chunk, zs.base, cls.ppz)
        self._zspages[zs.zid] = None
        self._free_zids.append(zs.zid)

    def _unlink(self, zs: ZsPage) -> None:
        if zs.fg == _ISOLATED:
            return
        cls = zs.cls
        if cls.hot is zs:
            cls.hot = None
        group = cls.groups[zs.fg]
        del group[zs]
        if not group:
            cls.mask &= ~(1 << zs.fg)
        zs.fg = _ISOLATED

    def _regroup(self, zs: ZsPage) -> None:
        cls = zs.cls
        fg = cls.fg_of[zs.inuse]
        if fg == zs.fg:
            return
        self._unlink(zs)
        cls.groups[fg][zs] = None
        cls.mask |= 1 << fg
        zs.fg = fg
        hot = cls.hot
        if hot is not None and hot.fg <= fg < INUSE_RATIO_100:
            cls.hot = zs   # now the last of the fullest allocatable group

    # -- allocation ------------------------------------------------------------

    def _take_slot(self, zs: ZsPage, h: int) -> int:
        """Take a free object in ``zs`` for handle ``h``; returns its index."""
        if zs.hdr == 0:
            zs.huge_handle = h
            idx = 0
        elif zs.free_head:
            idx = zs.free_head - 1
            word = (zs.base + idx * zs.size) >> 3
            zs.free_head = zs.q[word] >> 1
            zs.q[word] = h << 1 | 1
        else:
            idx = zs.fresh
            zs.fresh = idx + 1
            zs.q[(zs.base + idx * zs.size) >> 3] = h << 1 | 1
        zs.inuse += 1
        zs.cls.obj_used += 1
        return idx

    def _put_slot(self, zs: ZsPage, idx: int) -> None:
        if zs.hdr == 0:
            zs.huge_handle = 0
        else:
            zs.q[(zs.base + idx * zs.size) >> 3] = zs.free_head << 1
            zs.free_head = idx + 1
        zs.inuse -= 1
        zs.cls.obj_used -= 1

    def malloc(self, size: int) -> int:
        """``zs_malloc``: a handle to an object of ``size`` bytes (1..4096)."""
        if not 0 < size <= ZS_MAX_ALLOC_SIZE:
            raise ValueError(f"object size {size} outside 1..{ZS_MAX_ALLOC_SIZE}")
        return self.store(None, size)

    def store(self, data: bytes | memoryview | None, size: int = 0) -> int:
        """Allocate an object and copy ``data`` (of ``size`` bytes, or its
        length) into it; returns the handle. The write-path fast lane."""
        if data is not None:
            size = len(data)
        cls = self._by_size[size]
        zs = cls.hot
        if zs is None:
            m = cls.mask & _ALLOC_GROUPS
            if m:
                zs = next(reversed(cls.groups[m.bit_length() - 1]))
            else:
                zs = self._new_zspage(cls)
            cls.hot = zs
        loc = self._loc
        h = self._hfree
        if h:
            self._hfree = loc[h]
        else:
            loc.append(0)
            h = len(loc) - 1
        if zs.hdr:
            fh = zs.free_head
            if fh:
                idx = fh - 1
                start = zs.base + idx * zs.size
                zs.free_head = zs.q[start >> 3] >> 1
            else:
                idx = zs.fresh
                zs.fresh = idx + 1
                start = zs.base + idx * zs.size
            zs.q[start >> 3] = h << 1 | 1
            start += 8
        else:
            idx = 0
            zs.huge_handle = h
            start = zs.base
        if data is not None:
            zs.mv[start : start + size] = data
        loc[h] = zs.zid << 16 | idx
        inuse = zs.inuse + 1
        zs.inuse = inuse
        cls.obj_used += 1
        self.objects += 1
        if cls.fg_of[inuse] != zs.fg:
            self._regroup(zs)
            # moved up, to the end of the fullest group: still the pick unless full
            cls.hot = zs if zs.fg != INUSE_RATIO_100 else None
        return h

    def free(self, h: int) -> None:
        """``zs_free``. The handle is invalid afterwards."""
        loc = self._loc
        where = loc[h]
        zs = self._zspages[where >> 16]
        assert zs is not None, "a handle into a freed zspage"
        loc[h] = self._hfree
        self._hfree = h
        self.objects -= 1
        if zs.pins:
            if zs.deferred is None:
                zs.deferred = []
            zs.deferred.append(where & 0xFFFF)
            return
        cls = zs.cls
        if zs.hdr:
            idx = where & 0xFFFF
            zs.q[(zs.base + idx * zs.size) >> 3] = zs.free_head << 1
            zs.free_head = idx + 1
        else:
            zs.huge_handle = 0
        inuse = zs.inuse - 1
        zs.inuse = inuse
        cls.obj_used -= 1
        if inuse == 0:
            self._free_zspage(zs)
            return
        if cls.fg_of[inuse] != zs.fg:
            self._regroup(zs)

    # -- object access -----------------------------------------------------------

    def view(self, h: int, length: int) -> memoryview:
        """The first ``length`` bytes of the object. Valid only until the next
        pool mutation: copy or consume it before anything else runs."""
        loc = self._loc[h]
        zs = self._zspages[loc >> 16]
        assert zs is not None, "a handle into a freed zspage"
        off = zs.base + (loc & 0xFFFF) * zs.size + zs.hdr
        return zs.mv[off : off + length]

    def locator(self) -> tuple[array[int], list[ZsPage | None]]:
        """The handle table and the zspages, for a reader that looks up many
        objects at once (``view`` inlined): handle ``h`` lies in zspage
        ``zspages[loc[h] >> 16]``, object ``loc[h] & 0xFFFF``, at
        ``zs.base + index * zs.size + zs.hdr``. Valid until the next mutation."""
        return self._loc, self._zspages

    def pin(self, h: int) -> ZsPage:
        """Keep the object in place (compaction skips its zspage, and frees in
        that zspage wait) until ``unpin`` of the returned token."""
        zs = self._zspages[self._loc[h] >> 16]
        assert zs is not None
        zs.pins += 1
        return zs

    def unpin(self, token: ZsPage) -> None:
        token.pins -= 1
        if token.pins or self._zspages[token.zid] is not token:
            return
        if token.deferred:
            for idx in token.deferred:
                self._put_slot(token, idx)
            token.deferred = None
        if token.inuse == 0:
            self._free_zspage(token)
        else:
            self._regroup(token)

    # -- compaction --------------------------------------------------------------

    def compact(self) -> int:
        """``zs_compact``: returns the number of pages freed."""
        return sum(self.compact_steps())

    def compact_steps(self) -> Iterator[int]:
        """Compaction one source zspage at a time, largest classes first.

        Yields the pages freed by each step. Between steps the pool is
        consistent and any other operation may run (the daemon interleaves
        I/O here); each step re-selects its zspages.
        """
        for cls in reversed(self.classes):
            if cls.huge:
                continue
            while cls.can_compact() > 0:
                freed = self._compact_step(cls)
                if freed is None:
                    break
                self.pages_compacted += freed
                yield freed

    def _pick(self, cls: SizeClass, order: range, exclude: ZsPage | None) -> ZsPage | None:
        for fg in order:
            if cls.mask >> fg & 1:
                for zs in reversed(cls.groups[fg]):
                    if zs is not exclude and not zs.pins:
                        return zs
        return None

    def _compact_step(self, cls: SizeClass) -> int | None:
        """Move objects from the emptiest zspage into the fullest one."""
        dst = self._pick(cls, range(INUSE_RATIO_99, INUSE_RATIO_0, -1), None)
        if dst is None:
            return None
        src = self._pick(cls, range(1, INUSE_RATIO_99 + 1), dst)
        if src is None:
            return None
        size, q, loc = cls.size, src.q, self._loc
        for idx in range(src.fresh):
            if dst.inuse == cls.opz:
                break
            start = src.base + idx * size
            header = q[start >> 3]
            if not header & 1:
                continue
            h = header >> 1
            new_idx = self._take_slot(dst, h)
            new_start = dst.base + new_idx * size
            dst.mv[new_start + 8 : new_start + size] = src.mv[start + 8 : start + size]
            loc[h] = dst.zid << 16 | new_idx
            self._put_slot(src, idx)
        self._regroup(dst)
        if src.inuse == 0:
            self._free_zspage(src)
            return cls.ppz
        self._regroup(src)
        return 0

    # -- teardown ---------------------------------------------------------------------

    def release_steps(self, per_step: int = 2048) -> Iterator[None]:
        """Drop every object, zspage and chunk, ``per_step`` Python objects at
        a time (a full pool holds millions; freeing them at once takes
        seconds). The pool is empty and unusable afterwards (reset drops it)."""
        zspages, self._zspages = self._zspages, []
        for cls in self.classes:
            cls.hot = None
            for g in cls.groups:
                g.clear()        # the list above still holds each zspage
                yield None
        while zspages:
            del zspages[-per_step:]
            yield None
        frames, self._frames = self._frames, {}
        self._recent, self._recent_pages = {}, 0
        for lst in frames.values():
            while lst:
                del lst[-per_step:]
                yield None
        chunks, self._chunks = self._chunks, []
        while chunks:
            del chunks[-4:]      # munmap: about a millisecond per 16 MiB resident
            yield None
        self._loc = array("Q", [0])
        self._free_zids = []
        self.pages_allocated = self.objects = 0

    # -- introspection -------------------------------------------------------------

    def class_stats(self) -> list[ClassStat]:
        rows = []
        for cls in self.classes:
            groups = tuple(len(cls.groups[g]) for g in range(1, NR_FULLNESS_GROUPS))
            rows.append(ClassStat(
                cls.spec.index, cls.size, groups, cls.obj_allocated, cls.obj_used,
                cls.obj_allocated // cls.opz * cls.ppz, cls.ppz, cls.can_compact(),
            ))
        return rows

    def format_classes(self) -> str:
        """The debugfs ``zsmalloc/<pool>/classes`` table."""
        heads = ["10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%"]
        out = [" %5s %5s " % ("class", "size") + "".join("%9s " % h for h in heads)
               + "%13s %10s %10s %16s %16s\n" % ("obj_allocated", "obj_used", "pages_used",
                                                  "pages_per_zspage", "freeable")]
        totals = [0] * len(heads)
        t_alloc = t_used = t_pages = t_free = 0
        for r in self.class_stats():
            out.append(" %5u %5u " % (r.index, r.size) + "".join("%9u " % g for g in r.groups)
                       + "%13u %10u %10u %16d %16u\n" % (r.obj_allocated, r.obj_used, r.pages_used,
                                                        r.pages_per_zspage, r.freeable))
            totals = [a + b for a, b in zip(totals, r.groups)]
            t_alloc += r.obj_allocated
            t_used += r.obj_used
            t_pages += r.pages_used
            t_free += r.freeable
        out.append("\n")
        out.append(" %5s %5s " % ("Total", "") + "".join("%9u " % g for g in totals)
                   + "%13u %10u %10u %16s %16u\n" % (t_alloc, t_used, t_pages, "", t_free))
        return "".join(out)

    def check(self) -> None:
        """Verify internal consistency (for tests): counts, groups, headers, handles."""
        live = 0
        pages = 0
        for cls in self.classes:
            used = allocated = 0
            for g, group in enumerate(cls.groups):
                assert bool(group) == bool(cls.mask >> g & 1), "group mask out of sync"
                for zs in group:
                    assert zs.fg == g and cls.fullness(zs.inuse) == g, "zspage in the wrong group"
                    assert self._zspages[zs.zid] is zs
                    used += zs.inuse
                    allocated += cls.opz
                    pages += cls.ppz
                    if zs.hdr:
                        deferred = set(zs.deferred or ())
                        tagged = 0
                        for idx in range(zs.fresh):
                            header = zs.q[(zs.base + idx * zs.size) >> 3]
                            if header & 1:
                                tagged += 1
                                if idx not in deferred:
                                    assert self._loc[header >> 1] == zs.zid << 16 | idx, "handle points elsewhere"
                        assert tagged == zs.inuse, "header tags disagree with the in-use count"
            assert used == cls.obj_used and allocated == cls.obj_allocated
            if cls.hot is not None:
                m = cls.mask & _ALLOC_GROUPS
                assert m and cls.hot is next(reversed(cls.groups[m.bit_length() - 1])), "stale hot zspage"
            live += used
        assert pages == self.pages_allocated
        assert live - sum(len(z.deferred or ()) for z in self._zspages if z) == self.objects
