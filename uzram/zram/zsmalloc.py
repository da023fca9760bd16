"""A zsmalloc-style slab pool over a memfd (:mod:`uzram.zram.arena`).

Layout: memory comes in 4 MiB chunks of an arena (untouched pages cost
nothing, and a frame given back is punched out of the file). Each chunk
is cut into frames of one size (1..16 pages); a zspage occupies one frame, so
its objects are contiguous and may straddle page boundaries as in zsmalloc.

An address is ``chunk number << 22 | offset in the chunk``, a word an
address >> 3. Objects of non-huge classes start with an 8-byte header:
``handle << 1 | 1`` while allocated, ``(next free header's word + 1) << 1``
while on the zspage's free list. Objects never allocated since the zspage
was created lie beyond ``fresh`` and are not touched (so a new zspage
commits no memory until used). Huge classes hold one page-sized object per
zspage and no header (they are never compacted, so nothing asks for the
handle of a huge object).

Bookkeeping is columns, not one Python object per zspage: lists and arrays
indexed by zspage id (frame address, class, in-use count, free-list head,
fresh, fullness group, links of the index-linked fullness lists), a page ->
zspage id table, a dict of the pinned zspages, and free frames as arrays of
addresses. A pool
holding hundreds of MiB thus adds no objects for the garbage collector.

Handles are indices into a location table, so compaction can move objects
without their owners noticing. A location is the address of the object's
data (past its header) / 8: its high bits (``>> 16``) number a 512 KiB
window of a chunk, its low 16 bits the offset in that window in 8-byte units.

Reserve (for a swap server under global memory pressure): with a ``feed``
(:class:`uzram.zram.chunkfeed.ChunkFeed`) the pool keeps ``reserve_pages``
pages of free frames resident: spare chunks and released frames made
resident by the feed's thread, and freed frames kept instead of released.
New zspages take resident frames first; with none left the pool waits up to
``FEED_WAIT`` for the feed, then fails the store with ENOMEM (as zram's
zs_malloc fails) rather than fault in memory on the storing thread. Nothing
here maps, unmaps, locks or unlocks memory after an arena is made (see
:mod:`uzram.zram.arena` for why).

Not thread-safe: one thread owns the pool (the device's owner thread), and
nothing here locks. Views of objects (``view``) stay valid only until the
next mutation; ``pin`` keeps one in place across mutations.
"""

from __future__ import annotations

import errno
import os
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .arena import ARENA_BYTES, Arena
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
CHUNK_SHIFT = 22
OFFSET_MASK = CHUNK_BYTES - 1
assert CHUNK_BYTES == 1 << CHUNK_SHIFT
LOC_SHIFT = 3      # location = data address >> 3 (data is 8-byte aligned); a word = address >> 3
WORD_MASK = OFFSET_MASK >> LOC_SHIFT
CHUNK_WORD_SHIFT = CHUNK_SHIFT - LOC_SHIFT
WINDOW_SHIFT = 16 + LOC_SHIFT
WINDOWS_PER_CHUNK = 1 << (CHUNK_SHIFT - WINDOW_SHIFT)
_NONE = -1   # no zspage (links, hot pick)
NR_FULLNESS_GROUPS = 12
INUSE_RATIO_0 = 0
INUSE_RATIO_99 = 10
INUSE_RATIO_100 = 11
_ALLOC_GROUPS = ((1 << (INUSE_RATIO_99 + 1)) - 1) & ~1  # groups 1..10
_ISOLATED = -1


FEED_WAIT = 0.2
"""Seconds a store waits for the feed's next chunk before failing with ENOMEM."""
FEED_BATCH_PAGES = 256
"""Pages of released frames made resident again per feed job."""
FeedJob = tuple[int, "array[int]"]
"""What the feed makes resident: ``(ppz, frame addresses)``, or ``(0, [the
address of a new chunk])``."""
RECENT_PAGES = 64
"""Pages of freed frames kept resident for the next new zspages (without a
reserve): a device overwriting pages frees and makes zspages all the time,
and each ``MADV_DONTNEED`` costs a system call and a page fault per page later."""

class _Chunk:
    """4 MiB of an arena: ``mv`` (bytes) and ``q`` (8-byte words) views."""
    __slots__ = ("arena", "off", "mv", "q")

    def __init__(self, arena: Arena, off: int) -> None:
        self.arena = arena
        self.off = off
        self.mv = arena.mv[off : off + CHUNK_BYTES]
        self.q = self.mv.cast("Q")


class Window:
    """A 512 KiB window of a chunk: the object of location ``where`` (with
    ``where >> 16`` this window's number) starts at ``base + (where & 0xFFFF)
    * size + hdr`` of ``mv``. ``hdr`` is 0: locations point past headers."""
    __slots__ = ("base", "size", "hdr", "mv")

    def __init__(self, base: int, mv: memoryview) -> None:
        self.base = base
        self.size = 1 << LOC_SHIFT
        self.hdr = 0
        self.mv = mv


class SizeClass:
    __slots__ = ("spec", "pos", "size", "ppz", "opz", "huge", "hdr", "tail", "mask",
                 "obj_allocated", "obj_used", "fg_of", "up", "down", "hot")

    def __init__(self, spec: ClassSpec, pos: int) -> None:
        self.spec = spec
        self.pos = pos       # index in ZsPool.classes
        self.size = spec.size
        self.ppz = spec.pages_per_zspage
        self.opz = spec.objs_per_zspage
        self.huge = spec.huge
        self.hdr = 0 if spec.huge else ZS_HANDLE_SIZE
        # fullness group -> the last zspage id of its list (linked through the
        # pool's prev/next columns, appended at the tail)
        self.tail = [_NONE] * NR_FULLNESS_GROUPS
        self.mask = 0  # bit g set when group g is non-empty
        self.obj_allocated = 0
        self.obj_used = 0
        self.fg_of = [self.fullness(n) for n in range(self.opz + 1)]
        # in-use count -> whether reaching it by a store (up) or a free (down)
        # changes the group
        self.up = [False] + [self.fg_of[n] != self.fg_of[n - 1] for n in range(1, self.opz + 1)]
        self.down = [self.fg_of[n] != self.fg_of[n + 1] for n in range(self.opz)] + [False]
        # the zspage the next store picks, while known: the last one of the
        # fullest non-empty group below 100% (zsmalloc's pick). _regroup
        # keeps it exact; a move of the target itself down forgets it.
        self.hot = _NONE

    def fullness(self, inuse: int) -> int:
        if inuse == 0:
            return INUSE_RATIO_0
        if inuse == self.opz:
            return INUSE_RATIO_100
        return 100 * inuse // self.opz // 10 + 1

    def can_compact(self) -> int:
        """``zs_can_compact``: pages compaction could free in this class."""
        return (self.obj_allocated - self.obj_used) // self.opz * self.ppz


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

    def __init__(self, chain_size: int = CHAIN_SIZE_DEFAULT, name: str = "uzram-pool") -> None:
        table = build_class_table(chain_size)
        self.chain_size = chain_size
        self.huge_class_size = table.huge_class_size
        self.classes = [SizeClass(spec, pos) for pos, spec in enumerate(table.specs)]
        by_index = {c.spec.index: c for c in self.classes}
        # request size (0..PAGE_SIZE) -> class, one list lookup on the hot path
        self._by_size: list[SizeClass] = [by_index[table.for_request(max(s, 1))] for s in range(ZS_MAX_ALLOC_SIZE + 1)]
        self._index_map = table.index_map
        # handle -> location; free handles chain through it. 32-bit entries
        # until the pool's addresses outgrow them (32 GiB), see _register
        self._loc = array("I", [0])
        self._hfree = 0
        self._new_columns()
        self._frames: dict[int, array[int]] = {}   # addresses of frames not resident, by pages
        self._warm: dict[int, array[int]] = {}     # resident, kept as reserve
        self._recent: dict[int, array[int]] = {}   # resident, freed lately (no feed)
        self._recent_pages = 0
        self._spare = array("q")                   # addresses of whole chunks kept resident
        self._chunks: list[_Chunk] = []            # by chunk number
        self._windows: list[Window] = []           # by location >> 16
        self.reserve_pages = 0
        self.reserve_free = 0      # pages in warm frames and spare chunks
        self.reserve_misses = 0    # stores refused (ENOMEM): no resident frame in time
        self.feed: ChunkFeed[FeedJob] | None = None
        self._pending = 0          # pages asked of the feed, not received yet
        self._pending_chunks = 0   # of which new chunks
        self._arenas: list[Arena] = []
        self.name = name
        self.pages_allocated = 0
        self.pages_compacted = 0
        self.objects = 0
        self.shared: dict[int, int] = {}   # handle -> references beyond the first (``share``)
        self.shared_refs = 0               # the sum of ``shared``'s values
        self.shares = 0                    # ``share`` calls since the pool was made

    def _new_columns(self) -> None:
        """The zspage table: one column per field, indexed by zspage id.
        The columns read or written on every store and free (class, in-use
        count, fresh) are lists of small ints (the interpreter's shared
        ones): a list subscript costs about half an array's. The others are
        arrays."""
        self._zcls: list[int] = []    # class position, -1 while the id is free
        self._zpage = array("I")      # frame address >> 12
        self._zinuse: list[int] = []
        # (word + 1) of the first free object's header, 0 = none; 32 bits
        # until the pool's addresses outgrow them, as the handle table
        self._zfree = array("I")
        self._zfresh: list[int] = []  # objects at or above this index were never allocated
        self._zfg = array("b")        # fullness group, _ISOLATED while on no list
        self._pins: dict[int, int] = {}   # zspage id -> pins, while pinned
        self._zprev = array("i")     # neighbours in the fullness group's list
        self._znext = array("i")
        self._deferred: dict[int, list[int]] = {}   # zspage id -> locations freed, waiting for the last unpin
        self._free_zids: list[int] = []
        self._page_zid = array("i")  # page (address >> 12) -> id of the zspage whose frame holds it

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
        """Whether the reserve wants more resident frames."""
        return self.reserve_free < self.reserve_pages

    def _register(self) -> int:
        """Number a new chunk: its arena range, windows and page table
        entries. Returns its address (not resident yet, nor in the file)."""
        addr = len(self._chunks) << CHUNK_SHIFT
        if (addr + CHUNK_BYTES - 1) >> LOC_SHIFT > 0xFFFFFFFF and self._loc.itemsize < 8:
            self._loc = array("Q", self._loc)
            self._zfree = array("Q", self._zfree)
        while addr // ARENA_BYTES >= len(self._arenas):
            self._arenas.append(Arena(self.name))
        chunk = _Chunk(self._arenas[addr // ARENA_BYTES], addr % ARENA_BYTES)
        self._chunks.append(chunk)
        for w in range(WINDOWS_PER_CHUNK):
            self._windows.append(Window(w << WINDOW_SHIFT, chunk.mv))
        self._page_zid.extend(array("i", [_NONE]) * CHUNK_PAGES)
        return addr

    def _fill(self, job: FeedJob) -> None:
        """Make a job's frames resident (the feed's thread: touches no
        bookkeeping, only memory), contiguous frames in one call."""
        ppz, addrs = job
        length = ppz * PAGE_SIZE if ppz else CHUNK_BYTES
        runs: list[list[int]] = []
        for addr in sorted(addrs):
            if runs and runs[-1][1] == addr and addr % ARENA_BYTES:
                runs[-1][1] = addr + length
            else:
                runs.append([addr, addr + length])
        for start, end in runs:
            self._arenas[start // ARENA_BYTES].fill(start % ARENA_BYTES, end - start)

    def set_feed(self, feed: ChunkFeed[FeedJob] | None, reserve_pages: int) -> None:
        """Keep ``reserve_pages`` resident, refilled by ``feed`` (None: stop).
        The feed is made by the caller around :meth:`feed_fill`."""
        if self.feed is not None:
            self.feed.close()
            self._take_delivered(self.feed)   # delivered: resident, keep them
        self.feed = feed
        if feed is not None:   # the reserve decides what stays resident from now on
            recent, self._recent, self._recent_pages = self._recent, {}, 0
            for ppz, frames in recent.items():
                for addr in frames:
                    self._release_frame(addr, ppz)
        self.reserve_pages = reserve_pages
        self._pending = 0
        self._pending_chunks = 0
        self._ask_feed()

    def set_reserve(self, reserve_pages: int) -> None:
        """Resize the reserve of a pool with a feed. Frames resident beyond a
        lowered size stay until stores take them (none is given back)."""
        self.reserve_pages = reserve_pages
        self._ask_feed()

    @property
    def feed_fill(self) -> Callable[[FeedJob], None]:
        """What a feed for this pool runs on its thread."""
        return self._fill

    def refill(self) -> None:
        """Take what the feed delivered and ask for what the reserve lacks
        (the owner thread, now and then: stores do it only when they take
        frames)."""
        self._ask_feed()

    def _take_delivered(self, feed: ChunkFeed[FeedJob]) -> None:
        while (job := feed.poll()) is not None:
            self._ready_job(job)

    def _ask_feed(self) -> None:
        """Take what the feed delivered; ask for what the reserve lacks:
        released frames made resident again first (the address space does
        not grow), then new chunks; and always one spare chunk, so that a
        class whose frame size the warm frames lack can still grow."""
        feed = self.feed
        if feed is None:
            return
        self._take_delivered(feed)
        need = self.reserve_pages - self.reserve_free - self._pending
        for ppz in list(self._frames):
            cold = self._frames[ppz]
            while need > 0 and cold:
                n = min(len(cold), max(1, min(need, FEED_BATCH_PAGES) // ppz))
                addrs = cold[-n:]
                del cold[-n:]
                feed.request((ppz, addrs))
                self._pending += n * ppz
                need -= n * ppz
        while need > 0 or not (self._spare or self._pending_chunks):
            feed.request((0, array("q", [self._register()])))
            self._pending += CHUNK_PAGES
            self._pending_chunks += 1
            need -= CHUNK_PAGES

    def _carve(self, addr: int, ppz: int) -> array[int]:
        """The frames of the chunk at ``addr``, the first one last (popped first)."""
        step = ppz * PAGE_SIZE
        return array("q", range(addr + (CHUNK_PAGES // ppz - 1) * step, addr - 1, -step))

    def _take_frame(self, ppz: int) -> int:
        """The address of a frame of ``ppz`` pages: resident ones first (the
        reserve), then released ones, then a new chunk; with a feed, only
        resident ones, waiting up to FEED_WAIT for the feed, else ENOMEM."""
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
            released = self._frames.get(ppz)
            if released:
                return released.pop()      # faulted in again when used
            addr = self._register()
            chunk = self._chunks[addr >> CHUNK_SHIFT]
            chunk.arena.grow(chunk.off + CHUNK_BYTES)
            frames = self._frames[ppz] = self._carve(addr, ppz)
            return frames.pop()
        # faulting memory in here could wait on the very swap-out this
        # store is part of: wait a little for the feed, else ENOMEM
        self._ask_feed()
        deadline = 0.0
        while not self._spare and not self._warm.get(ppz):
            now = time.monotonic()
            deadline = deadline or now + FEED_WAIT
            job = feed.take(deadline - now) if now < deadline else None
            if job is None:
                self.reserve_misses += 1
                self._ask_feed()
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM) + " (pool reserve exhausted)")
            self._ready_job(job)
        warm = self._warm.get(ppz)
        if warm:
            self.reserve_free -= ppz
            frame = warm.pop()
        else:
            frames = self._carve(self._spare.pop(), ppz)
            self.reserve_free -= CHUNK_PAGES - (len(frames) - 1) * ppz
            frame = frames.pop()
            self._warm.setdefault(ppz, array("q")).extend(frames)
        self._ask_feed()
        return frame

    def _ready_job(self, job: FeedJob) -> None:
        """Account one job taken from the feed by hand (``take``)."""
        ppz, addrs = job
        if ppz:
            self._warm.setdefault(ppz, array("q")).extend(addrs)
            pages = ppz * len(addrs)
        else:
            self._spare.extend(addrs)
            self._pending_chunks -= len(addrs)
            pages = CHUNK_PAGES * len(addrs)
        self.reserve_free += pages
        self._pending -= pages

    def _release_frame(self, addr: int, ppz: int) -> None:
        """Keep a freed frame resident while the reserve wants it, else give
        its pages back."""
        if self.reserve_free + ppz <= self.reserve_pages:
            self._warm.setdefault(ppz, array("q")).append(addr)
            self.reserve_free += ppz
            return
        if self.feed is None and self._recent_pages + ppz <= RECENT_PAGES:
            self._recent.setdefault(ppz, array("q")).append(addr)
            self._recent_pages += ppz
            return
        chunk = self._chunks[addr >> CHUNK_SHIFT]
        chunk.arena.punch(chunk.off + (addr & OFFSET_MASK), ppz * PAGE_SIZE)
        self._frames.setdefault(ppz, array("q")).append(addr)

    # -- zspages -------------------------------------------------------------

    def _new_zspage(self, cls: SizeClass) -> int:
        ppz = cls.ppz
        addr = self._take_frame(ppz)
        if self._free_zids:   # the in-use count is 0, the group _ISOLATED
            zid = self._free_zids.pop()
            self._zcls[zid] = cls.pos
            self._zpage[zid] = addr >> 12
            self._zfree[zid] = self._zfresh[zid] = 0
        else:
            zid = len(self._zcls)
            self._zcls.append(cls.pos)
            self._zpage.append(addr >> 12)
            self._zinuse.append(0)
            self._zfree.append(0)
            self._zfresh.append(0)
            self._zprev.append(_NONE)
            self._znext.append(_NONE)
            self._zfg.append(_ISOLATED)
        page_zid, page = self._page_zid, addr >> 12
        if ppz == 1:
            page_zid[page] = zid
        else:
            for p in range(page, page + ppz):
                page_zid[p] = zid
        cls.obj_allocated += cls.opz
        self.pages_allocated += ppz
        self._link(zid, cls, INUSE_RATIO_0)
        return zid

    def _free_zspage(self, zid: int) -> None:
        cls = self.classes[self._zcls[zid]]
        self._unlink(zid, cls)
        cls.obj_allocated -= cls.opz
        self.pages_allocated -= cls.ppz
        self._release_frame(self._zpage[zid] << 12, cls.ppz)
        self._zcls[zid] = -1
        self._free_zids.append(zid)

    def _unlink(self, zid: int, cls: SizeClass) -> None:
        """Take zspage ``zid`` off its group's list."""
        fg = self._zfg[zid]
        if fg == _ISOLATED:
            return
        if cls.hot == zid:
            cls.hot = _NONE
        prev, nxt = self._zprev, self._znext
        p, n = prev[zid], nxt[zid]
        if p != _NONE:
            nxt[p] = n
        if n != _NONE:
            prev[n] = p
        else:
            cls.tail[fg] = p
            if p == _NONE:
                cls.mask &= ~(1 << fg)
        self._zfg[zid] = _ISOLATED

    def _link(self, zid: int, cls: SizeClass, fg: int) -> None:
        """Append zspage ``zid`` (on no list) to group ``fg``'s list."""
        tail = cls.tail
        last = tail[fg]
        self._zprev[zid] = last
        self._znext[zid] = _NONE
        if last == _NONE:
            cls.mask |= 1 << fg
        else:
            self._znext[last] = zid
        tail[fg] = zid
        self._zfg[zid] = fg

    def _regroup(self, zid: int, cls: SizeClass) -> None:
        """Move zspage ``zid`` to the group its in-use count calls for (the
        end of its list), keeping the class's pick exact."""
        zfg = self._zfg
        fg = cls.fg_of[self._zinuse[zid]]
        old = zfg[zid]
        if fg == old:
            return
        prev, nxt, tail = self._zprev, self._znext, cls.tail
        if old != _ISOLATED:   # _unlink, inlined: this runs on most stores into small zspages
            if cls.hot == zid:
                cls.hot = _NONE
            p, n = prev[zid], nxt[zid]
            if p != _NONE:
                nxt[p] = n
            if n != _NONE:
                prev[n] = p
            else:
                tail[old] = p
                if p == _NONE:
                    cls.mask &= ~(1 << old)
        last = tail[fg]   # _link, inlined
        prev[zid] = last
        nxt[zid] = _NONE
        if last == _NONE:
            cls.mask |= 1 << fg
        else:
            nxt[last] = zid
        tail[fg] = zid
        zfg[zid] = fg
        hot = cls.hot
        if hot != _NONE and zfg[hot] <= fg < INUSE_RATIO_100:
            cls.hot = zid   # now the last of the fullest allocatable group

    def _move(self, zid: int, cls: SizeClass, old: int, fg: int) -> None:
        """``_regroup`` for the store path: the class's pick ``zid`` moves up
        from group ``old`` to ``fg`` (the caller sets the pick again)."""
        prev, nxt, tail = self._zprev, self._znext, cls.tail
        p, n = prev[zid], nxt[zid]
        if p != _NONE:
            nxt[p] = n
        if n != _NONE:
            prev[n] = p
        else:
            tail[old] = p
            if p == _NONE:
                cls.mask &= ~(1 << old)
        last = tail[fg]
        prev[zid] = last
        nxt[zid] = _NONE
        if last == _NONE:
            cls.mask |= 1 << fg
        else:
            nxt[last] = zid
        tail[fg] = zid
        self._zfg[zid] = fg

    def group(self, cls: SizeClass, fg: int) -> Iterator[int]:
        """The ids of the zspages in ``cls``'s fullness group ``fg``, last
        added first (zsmalloc's order of picking)."""
        zid, prev = cls.tail[fg], self._zprev
        while zid != _NONE:
            yield zid
            zid = prev[zid]

    def inuse(self, zid: int) -> int:
        """Objects allocated in zspage ``zid``."""
        return self._zinuse[zid]

    def zspage_of(self, h: int) -> int:
        """The id of the zspage holding the object of handle ``h``."""
        return self._page_zid[self._loc[h] >> (12 - LOC_SHIFT)]

    # -- allocation ------------------------------------------------------------

    def _take_slot(self, zid: int, cls: SizeClass, h: int) -> int:
        """Take a free object in zspage ``zid`` (non-huge class) for handle
        ``h``; returns the word of its header."""
        fh = self._zfree[zid]
        if fh:
            word = fh - 1
            q = self._chunks[word >> CHUNK_WORD_SHIFT].q
            self._zfree[zid] = q[word & WORD_MASK] >> 1
        else:
            idx = self._zfresh[zid]
            self._zfresh[zid] = idx + 1
            word = ((self._zpage[zid] << 12) + idx * cls.size) >> LOC_SHIFT
            q = self._chunks[word >> CHUNK_WORD_SHIFT].q
        q[word & WORD_MASK] = h << 1 | 1
        self._zinuse[zid] += 1
        cls.obj_used += 1
        return word

    def _put_slot(self, zid: int, cls: SizeClass, where: int) -> None:
        """Free the object at location ``where`` in zspage ``zid``."""
        if cls.hdr:
            word = where - 1
            self._chunks[word >> CHUNK_WORD_SHIFT].q[word & WORD_MASK] = self._zfree[zid] << 1
            self._zfree[zid] = where
        self._zinuse[zid] -= 1
        cls.obj_used -= 1

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
        zid = cls.hot
        if zid < 0:
            m = cls.mask & _ALLOC_GROUPS
            zid = cls.tail[m.bit_length() - 1] if m else self._new_zspage(cls)
            cls.hot = zid
        loc = self._loc
        h = self._hfree
        if h:
            self._hfree = loc[h]
        else:
            loc.append(0)
            h = len(loc) - 1
        if cls.hdr:
            zfree = self._zfree
            fh = zfree[zid]
            if fh:
                word = fh - 1
                chunk = self._chunks[word >> CHUNK_WORD_SHIFT]
                q = chunk.q
                i = word & WORD_MASK
                zfree[zid] = q[i] >> 1
            else:
                zfresh = self._zfresh
                idx = zfresh[zid]
                zfresh[zid] = idx + 1
                word = ((self._zpage[zid] << 12) + idx * cls.size) >> LOC_SHIFT
                chunk = self._chunks[word >> CHUNK_WORD_SHIFT]
                q = chunk.q
                i = word & WORD_MASK
            q[i] = h << 1 | 1
            loc[h] = word + 1   # past the header
            start = (i + 1) << LOC_SHIFT
        else:
            addr = self._zpage[zid] << 12
            chunk = self._chunks[addr >> CHUNK_SHIFT]
            start = addr & OFFSET_MASK
            loc[h] = addr >> LOC_SHIFT
        if data is not None:
            chunk.mv[start : start + size] = data
        zinuse = self._zinuse
        inuse = zinuse[zid] + 1
        zinuse[zid] = inuse
        cls.obj_used += 1
        self.objects += 1
        if cls.up[inuse]:
            fg_of = cls.fg_of
            self._move(zid, cls, fg_of[inuse - 1], fg_of[inuse])
            # moved up, to the end of the fullest group: still the pick unless full
            cls.hot = zid if inuse != cls.opz else _NONE
        return h

    def share(self, h: int) -> None:
        """One more reference to the object of ``h``: as many ``free`` calls
        as references release it. A shared object must not be written."""
        self.shared[h] = self.shared.get(h, 0) + 1
        self.shared_refs += 1
        self.shares += 1

    def free(self, h: int) -> None:
        """``zs_free`` of one reference: the object goes with the last one,
        after which the handle is invalid."""
        shared = self.shared
        if shared and h in shared:
            n = shared[h] - 1
            if n:
                shared[h] = n
            else:
                del shared[h]
            self.shared_refs -= 1
            return
        loc = self._loc
        where = loc[h]
        zid = self._page_zid[where >> (12 - LOC_SHIFT)]
        loc[h] = self._hfree
        self._hfree = h
        self.objects -= 1
        cls = self.classes[self._zcls[zid]]
        if zid in self._pins:
            self._deferred.setdefault(zid, []).append(where)
            return
        if cls.hdr:
            zfree = self._zfree
            word = where - 1
            self._chunks[word >> CHUNK_WORD_SHIFT].q[word & WORD_MASK] = zfree[zid] << 1
            zfree[zid] = where
        zinuse = self._zinuse
        inuse = zinuse[zid] - 1
        zinuse[zid] = inuse
        cls.obj_used -= 1
        if inuse == 0:
            self._free_zspage(zid)
        elif cls.down[inuse]:
            self._regroup(zid, cls)

    # -- object access -----------------------------------------------------------

    def view(self, h: int, length: int) -> memoryview:
        """The first ``length`` bytes of the object. Valid only until the next
        pool mutation: copy or consume it before anything else runs."""
        where = self._loc[h]
        off = (where << LOC_SHIFT) & OFFSET_MASK
        return self._chunks[where >> (CHUNK_SHIFT - LOC_SHIFT)].mv[off : off + length]

    def locator(self) -> tuple[array[int], list[Window]]:
        """The handle table and the windows, for a reader that looks up many
        objects at once (``view`` inlined): the object of handle ``h`` lies
        in window ``windows[loc[h] >> 16]``, at ``w.base + (loc[h] & 0xFFFF)
        * w.size + w.hdr`` of ``w.mv``. Valid until the next mutation."""
        return self._loc, self._windows

    def pin(self, h: int) -> int:
        """Keep the object in place (compaction skips its zspage, and frees in
        that zspage wait) until ``unpin`` of the returned token."""
        zid = self.zspage_of(h)
        assert self._zcls[zid] >= 0
        self._pins[zid] = self._pins.get(zid, 0) + 1
        return zid

    def unpin(self, token: int) -> None:
        zid = token
        pins = self._pins.pop(zid) - 1
        if pins:
            self._pins[zid] = pins
            return
        if self._zcls[zid] < 0:
            return
        cls = self.classes[self._zcls[zid]]
        deferred = self._deferred.pop(zid, None)
        if deferred:
            for where in deferred:
                self._put_slot(zid, cls, where)
        if self._zinuse[zid] == 0:
            self._free_zspage(zid)
        else:
            self._regroup(zid, cls)

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

    def _pick(self, cls: SizeClass, order: range, exclude: int) -> int:
        pins = self._pins
        for fg in order:
            if cls.mask >> fg & 1:
                for zid in self.group(cls, fg):
                    if zid != exclude and zid not in pins:
                        return zid
        return _NONE

    def _compact_step(self, cls: SizeClass) -> int | None:
        """Move objects from the emptiest zspage into the fullest one."""
        dst = self._pick(cls, range(INUSE_RATIO_99, INUSE_RATIO_0, -1), _NONE)
        if dst == _NONE:
            return None
        src = self._pick(cls, range(1, INUSE_RATIO_99 + 1), dst)
        if src == _NONE:
            return None
        size, loc, zinuse = cls.size, self._loc, self._zinuse
        base = self._zpage[src] << 12
        chunk = self._chunks[base >> CHUNK_SHIFT]
        q, mv = chunk.q, chunk.mv
        for idx in range(self._zfresh[src]):
            if zinuse[dst] == cls.opz:
                break
            start = (base & OFFSET_MASK) + idx * size
            header = q[start >> 3]
            if not header & 1:
                continue
            h = header >> 1
            word = self._take_slot(dst, cls, h)
            new_start = (word & WORD_MASK) << LOC_SHIFT
            self._chunks[word >> CHUNK_WORD_SHIFT].mv[new_start + 8 : new_start + size] = mv[start + 8 : start + size]
            loc[h] = word + 1
            self._put_slot(src, cls, ((base + idx * size) >> LOC_SHIFT) + 1)
        self._regroup(dst, cls)
        if zinuse[src] == 0:
            self._free_zspage(src)
            return cls.ppz
        self._regroup(src, cls)
        return 0

    # -- teardown ---------------------------------------------------------------------

    def release_steps(self, per_step: int = 2048) -> Iterator[None]:
        """Drop every object, zspage and chunk (a few chunks at a time:
        giving back a resident one takes about a millisecond per 16 MiB). The
        pool is empty and unusable afterwards (reset drops it)."""
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        for cls in self.classes:
            cls.hot = _NONE
            cls.tail = [_NONE] * NR_FULLNESS_GROUPS
            cls.mask = 0
        self._new_columns()
        self._frames, self._warm, self._recent, self._recent_pages = {}, {}, {}, 0
        self._windows = []
        yield None
        chunks, self._chunks = self._chunks, []
        while chunks:
            for chunk in chunks[-4:]:
                chunk.arena.punch(chunk.off, CHUNK_BYTES)
            del chunks[-4:]
            yield None
        self._arenas = []    # each closes its file when its last view goes
        self._loc = array("I", [0])
        self.pages_allocated = self.objects = 0
        self.shared.clear()
        self.shared_refs = 0

    # -- introspection -------------------------------------------------------------

    def class_stats(self) -> list[ClassStat]:
        rows = []
        for cls in self.classes:
            groups = tuple(sum(1 for _ in self.group(cls, g)) for g in range(1, NR_FULLNESS_GROUPS))
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
        """Verify internal consistency (for tests): counts, groups and their
        links, the page table, headers, free lists, handles."""
        live = 0
        pages = 0
        seen: set[int] = set()
        for cls in self.classes:
            used = allocated = 0
            for g in range(NR_FULLNESS_GROUPS):
                members = list(self.group(cls, g))
                assert bool(members) == bool(cls.mask >> g & 1), "group mask out of sync"
                assert not members or self._zprev[members[-1]] == _NONE, "group list does not end"
                for zid in members:
                    nxt = self._znext[zid]
                    assert nxt == _NONE or self._zprev[nxt] == zid, "group links out of sync"
                    assert zid not in seen, "a zspage on two lists"
                    seen.add(zid)
                    inuse = self._zinuse[zid]
                    assert self._zcls[zid] == cls.pos, "zspage in another class's list"
                    assert self._zfg[zid] == g and cls.fullness(inuse) == g, "zspage in the wrong group"
                    addr = self._zpage[zid] << 12
                    assert addr % PAGE_SIZE == 0 and (addr & OFFSET_MASK) + cls.ppz * PAGE_SIZE <= CHUNK_BYTES
                    page = addr >> 12
                    assert set(self._page_zid[page : page + cls.ppz]) == {zid}, "page table out of sync"
                    used += inuse
                    allocated += cls.opz
                    pages += cls.ppz
                    if cls.hdr:
                        self._check_objects(zid, cls)
                    else:
                        assert self._zfree[zid] == self._zfresh[zid] == 0 and inuse <= 1
            assert used == cls.obj_used and allocated == cls.obj_allocated
            if cls.hot != _NONE:
                m = cls.mask & _ALLOC_GROUPS
                assert m and cls.hot == cls.tail[m.bit_length() - 1], "stale hot zspage"
            live += used
        assert seen == {z for z, c in enumerate(self._zcls) if c >= 0}, "a live zspage on no list"
        assert set(self._free_zids) == {z for z, c in enumerate(self._zcls) if c < 0}, "free ids out of sync"
        assert pages == self.pages_allocated
        assert set(self._deferred) <= seen and all(self._pins.get(z, 0) > 0 for z in self._deferred)
        assert all(self._zcls[z] >= 0 and n > 0 for z, n in self._pins.items()), "pins on a freed zspage"
        assert live - sum(len(d) for d in self._deferred.values()) == self.objects

    def _check_objects(self, zid: int, cls: SizeClass) -> None:
        """Headers, the free list and the handles of a non-huge zspage."""
        addr, fresh = self._zpage[zid] << 12, self._zfresh[zid]
        q = self._chunks[addr >> CHUNK_SHIFT].q
        deferred = set(self._deferred.get(zid, ()))
        tagged = 0
        for idx in range(fresh):
            obj = addr + idx * cls.size
            header = q[(obj & OFFSET_MASK) >> 3]
            if header & 1:
                tagged += 1
                if (obj >> LOC_SHIFT) + 1 not in deferred:
                    assert self._loc[header >> 1] == (obj >> LOC_SHIFT) + 1, "handle points elsewhere"
        assert tagged == self._zinuse[zid], "header tags disagree with the in-use count"
        free: set[int] = set()
        fh = self._zfree[zid]
        while fh:
            idx, rest = divmod(((fh - 1) << LOC_SHIFT) - addr, cls.size)
            assert rest == 0 and 0 <= idx < fresh and idx not in free, "free list off objects or looping"
            free.add(idx)
            header = q[((fh - 1) & WORD_MASK)]
            assert not header & 1, "an allocated object on the free list"
            fh = header >> 1
        assert len(free) == fresh - tagged, "free list misses objects"
