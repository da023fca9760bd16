"""The write and free paths: ``zram_write_page``, read-modify-write of
partial pages, discard and write-zeroes.

A new object is stored (and the memory limit checked) before the slot's old
contents are freed, so a failed write leaves the old contents. A new object
that takes the pool class of the old one (a primary-compressed or huge
object in RAM) is written over it instead, when no memory limit is set: no
allocation, so nothing can fail; the class holds as many objects as after
the store and the free, which would only have moved the object into the
class's fullest zspage (the rewrite neither makes nor cures fragmentation;
compaction does the latter). Work that
grows with the request, and partial writes into written-back pages (whose
block must be read off the owner thread), are also jobs (``*_steps``).
"""

from __future__ import annotations

import errno


from .disk import SECTOR_SHIFT, ZERO_PAGE, Disk, oserror
from . import lanes
from .jobs import Job, Offload, run
from .readpath import ReadPath
from .sizeclass import PAGE_SHIFT, PAGE_SIZE
from .slots import ACCESS_CLEAR, ALLOCATED, HUGE, PRIO_MASK, SAME, SIZE_MASK, SPECIAL, WB

_SAME_CANDIDATE = 64  # every same-filled page compresses below this with any backend
STEP_SCAN = 1 << 14    # slots scanned by one step of a job (a few byte scans, well under 1 ms)
STEP_FREE = 128        # allocated slots freed by one step of a job (~0.5 ms)
_NOT_IN_PLACE = SAME | WB | PRIO_MASK   # an overwrite of these frees the old contents first

Buffer = bytes | bytearray | memoryview


class WritePath(ReadPath):
    def _write_page(self, disk: Disk, i: int, page: memoryview, now: int) -> None:
        """``zram_write_page`` + ``mark_slot_accessed`` for a full page:
        ``_write_run``'s loop body for one page, with the same outcome (a
        test holds the two together), without the loop's set-up (3-8% of a
        4 KiB write's CPU time)."""
        if ZERO_PAGE.startswith(page):
            self._store_same(disk, i, 0, now)
            return
        comp: bytes | memoryview = disk.compress(page)
        clen = len(comp)
        if clen < _SAME_CANDIDATE:
            whole = page.tobytes()
            if whole.startswith(page[8:]):   # page[:-8] == page[8:]
                self._store_same(disk, i, int.from_bytes(whole[:8], "little"), now)
                return
        table = disk.table
        flags = table.flags
        old = flags[i]
        st = self.stats
        if clen >= self.huge_class_size:
            comp = page
            clen = PAGE_SIZE
            new_flags = HUGE | PAGE_SIZE
            st.huge_pages += 1
            st.huge_pages_since += 1
        else:
            new_flags = clen
        pool = disk.pool
        limit = self.settings.limit_pages
        recent = disk.recent
        h = recent.find(i, comp, clen, new_flags, table, pool) if recent is not None else 0
        if not h:
            if (not limit and old & SIZE_MASK and not old & _NOT_IN_PLACE
                    and self.class_of_size[old & SIZE_MASK] == self.class_of_size[clen]
                    and not (pool.shared and table.handle[i] in pool.shared)):
                pool.view(table.handle[i], clen)[:] = comp   # in place: see _write_run
                if old & HUGE:
                    st.huge_pages -= 1
                st.compr_data_size += clen - (old & SIZE_MASK)
                flags[i] = new_flags
                table.ac_time[i] = now
                return
            h = pool.store(comp)
            pages = pool.pages_allocated
            if pages > st.max_used_pages:
                st.max_used_pages = pages
            if limit and pages > limit:
                pool.free(h)
                if new_flags & HUGE:
                    st.huge_pages -= 1
                    st.huge_pages_since -= 1
                raise oserror(errno.ENOMEM, f"{self.name}: mem_limit reached ({limit << PAGE_SHIFT} bytes)")
        if old & ALLOCATED:
            if old & SPECIAL:
                self.slot_free(disk, i)
                st.pages_stored += 1
            else:
                pool.free(table.handle[i])
                st.compr_data_size -= old & SIZE_MASK
        else:
            st.pages_stored += 1
        table.handle[i] = h
        flags[i] = new_flags
        table.ac_time[i] = now
        st.compr_data_size += clen

    def _write_run(self, disk: Disk, first: int, data: memoryview, count: int, now: int) -> None:
        """``_write_page`` for ``count`` whole pages of ``data`` from slot
        ``first``, page after page (a failure leaves the pages before it
        written), with the lookups hoisted out of the loop.

        Same-filled pages are found as the kernel finds them, but cheaply:
        a zero page by one ``memcmp`` (``bytes.startswith`` takes the view
        as it is; a memoryview ``==`` compares item by item, ~10 µs a page),
        and the shifted comparison for other words only when the page
        compressed to almost nothing (every same-filled page does).
        """
        st = self.stats
        table = disk.table
        flags, handles, ac_time = table.flags, table.handle, table.ac_time
        pool = disk.pool
        store, pool_free, view = pool.store, pool.free, pool.view
        shared = pool.shared   # objects of more than one slot (the pool's one dict): never written in place
        recent = disk.recent
        compress = disk.compress
        is_zero = ZERO_PAGE.startswith
        huge_class_size = self.huge_class_size
        limit = self.settings.limit_pages
        # the in-place overwrite is for devices without a memory limit: at
        # the limit, the kernel's store-then-free may fail where it would not
        class_of_size = self.class_of_size if not limit else b""
        pos = 0
        for i in range(first, first + count):
            page = data[pos : pos + PAGE_SIZE] if count > 1 else data
            pos += PAGE_SIZE
            if is_zero(page):
                self._store_same(disk, i, 0, now)
                continue
            comp: bytes | memoryview = compress(page)
            clen = len(comp)
            if clen < _SAME_CANDIDATE:
                whole = page.tobytes()
                if whole.startswith(page[8:]):   # page[:-8] == page[8:]
                    self._store_same(disk, i, int.from_bytes(whole[:8], "little"), now)
                    continue
            old = flags[i]
            if clen >= huge_class_size:
                comp = page
                clen = PAGE_SIZE
                new_flags = HUGE | PAGE_SIZE
                st.huge_pages += 1
                st.huge_pages_since += 1
            else:
                new_flags = clen
            h = recent.find(i, comp, clen, new_flags, table, pool) if recent is not None else 0
            # (h: a page read lately, written again, shares that object)
            if not h and class_of_size and old & SIZE_MASK and not old & _NOT_IN_PLACE and \
                    class_of_size[old & SIZE_MASK] == class_of_size[clen] and \
                    not (shared and handles[i] in shared):
                # The old object (in RAM, made by the primary, not shared) is
                # in the class the new one would take: the new one replaces it
                # in place. No allocation, so nothing can fail, and the class
                # holds as many objects as a store and a free would leave
                # (which would have put the object in the class's fullest
                # zspage instead).
                view(handles[i], clen)[:] = comp
                if old & HUGE:
                    st.huge_pages -= 1
                st.compr_data_size += clen - (old & SIZE_MASK)
                flags[i] = new_flags
                ac_time[i] = now
                continue
            if not h:
                h = store(comp)
                pages = pool.pages_allocated
                if pages > st.max_used_pages:
                    st.max_used_pages = pages
                if limit and pages > limit:
                    pool_free(h)
                    if new_flags & HUGE:
                        st.huge_pages -= 1
                        st.huge_pages_since -= 1
                    raise oserror(errno.ENOMEM, f"{self.name}: mem_limit reached ({limit << PAGE_SHIFT} bytes)")
            if old & ALLOCATED:
                if old & SPECIAL:
                    self.slot_free(disk, i)
                    st.pages_stored += 1
                else:  # the common overwrite: a plain compressed object
                    pool_free(handles[i])
                    st.compr_data_size -= old & SIZE_MASK
            else:
                st.pages_stored += 1
            handles[i] = h
            flags[i] = new_flags
            ac_time[i] = now
            st.compr_data_size += clen

    def _store_same(self, disk: Disk, i: int, word: int, now: int) -> None:
        table = disk.table
        if table.flags[i] & ALLOCATED:
            self.slot_free(disk, i)
        table.handle[i] = word
        table.flags[i] = SAME
        table.ac_time[i] = now
        self.stats.same_pages += 1
        self.stats.pages_stored += 1

    def _count_write(self, length: int) -> None:
        """io_stat's and stat's view of a write request (a failing one included)."""
        st = self.stats
        st.write_ios += 1
        st.write_sectors += (length + 511) >> SECTOR_SHIFT

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; any alignment (sub-page parts are
        read-modify-written). ``data`` is consumed before this returns.
        ``fua`` (NBD's force unit access) needs nothing: a stored page is stable."""
        mv = data if type(data) is memoryview else memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        length = mv.nbytes
        single = length == PAGE_SIZE and not offset & (PAGE_SIZE - 1)
        disk = self.disk
        if not (single and disk is not None and 0 <= offset < disk.disksize):
            disk = self.check_range(offset, length, True)
        st = self.stats
        st.write_ios += 1   # _count_write
        st.write_sectors += (length + 511) >> SECTOR_SHIFT
        if disk is None or not length:
            return
        now = self.clock()
        if not single:
            run(self._write_parts(disk, offset, mv, now))
            return
        try:
            self._write_page(disk, offset >> PAGE_SHIFT, mv, now)
        except OSError:
            self.stats.failed_writes += 1
            raise
        finally:
            if self.settings.backing is not None:
                self.apply_backing_releases()

    def _patch_page(self, disk: Disk, i: int, start: int, part: memoryview, now: int) -> None:
        old = self._read_page(disk, i, now)
        assert old is not None, "a read without defer returns the page"
        page = bytearray(old)
        page[start : start + part.nbytes] = part
        self._write_page(disk, i, memoryview(page), now)

    def _patch_steps(self, disk: Disk, i: int, start: int, part: memoryview, now: int) -> Job[None]:
        """``_patch_page`` whose read of a written-back slot is an Offload.

        The block stays pinned during the read; the patch is applied only if
        the slot still holds that block afterwards (otherwise it is retried
        against the slot's newer contents), so it never mixes two states."""
        flags, handles = disk.table.flags, disk.table.handle
        backing = self.settings.backing
        while True:
            f = flags[i]
            if backing is None or not f & WB:
                self._patch_page(disk, i, start, part, now)
                return
            block = handles[i]
            backing.pin(block)
            try:
                res = (yield Offload(backing.read_blocks, [block]))[0]
            finally:
                backing.unpin(block)
                self.apply_backing_releases()
            if flags[i] & WB and handles[i] == block:  # pinned: not reused meanwhile
                page = bytearray(self._decode_block(disk, res, f))
                flags[i] &= ACCESS_CLEAR
                page[start : start + part.nbytes] = part
                self._write_page(disk, i, memoryview(page), now)
                return

    def write_needs_backing(self, offset: int, length: int) -> bool:
        """Whether ``write`` would read-modify-write a written-back page (then
        run ``write_steps`` instead, so that read happens off the loop)."""
        disk = self.disk
        if self.settings.backing is None or disk is None or not (offset | length) & (PAGE_SIZE - 1) or not length:
            return False
        if offset < 0 or offset + length > disk.disksize:
            return False  # write() reports the error
        flags = disk.table.flags
        head, tail = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
        return bool(flags[head] & WB or flags[tail] & WB)

    def write_steps(self, offset: int, data: bytes) -> Job[None]:
        """``write`` as a job: sub-page parts of written-back pages read their
        block through an Offload. ``data`` must be owned by the job."""
        mv = memoryview(data).cast("B")
        length = mv.nbytes
        disk = self.check_range(offset, length, True)
        self._count_write(length)
        if disk is None or not length:
            return
        yield from self._write_parts(disk, offset, mv, self.clock())

    def _write_parts(self, disk: Disk, offset: int, mv: memoryview, now: int) -> Job[None]:
        """The pages of a write: a sub-page head, whole pages, a sub-page tail
        (the sub-page parts read-modify-write, through an Offload where the
        page is written back)."""
        length = mv.nbytes
        try:
            pos = 0
            i = offset >> PAGE_SHIFT
            head = offset & (PAGE_SIZE - 1)
            if head or length < PAGE_SIZE:
                n = min(PAGE_SIZE - head, length)
                yield from self._patch_steps(disk, i, head, mv[:n], now)
                pos = n
                i += 1
            whole = (length - pos) >> PAGE_SHIFT
            if whole:
                self._write_run(disk, i, mv[pos : pos + (whole << PAGE_SHIFT)], whole, now)
                pos += whole << PAGE_SHIFT
                i += whole
            if pos < length:
                yield from self._patch_steps(disk, i, 0, mv[pos:], now)
        except OSError:
            self.stats.failed_writes += 1
            raise
        finally:
            self.apply_backing_releases()

    # -- freeing -----------------------------------------------------------------------

    def _free_steps(self, disk: Disk, first: int, count: int, fill_zero: bool = False, now: int = 0) -> Job[None]:
        """Free ``count`` whole pages from ``first``, at most STEP_FREE
        allocated (or STEP_SCAN empty) slots per step; ``fill_zero`` stores
        each freed stretch as same-filled zero pages in the same step."""
        if count <= 64:
            for i in range(first, first + count):
                self.slot_free(disk, i)
            if fill_zero:
                self._fill_zero_pages(disk, first, count, now)
            return
        col = disk.table.flags_col
        slot_free = self.slot_free
        pos, end = first, first + count
        while pos < end:
            stop = min(end, pos + STEP_SCAN)
            busy = lanes.nonzero_indexes(col, 4, pos, stop, STEP_FREE + 1)
            if len(busy) > STEP_FREE:
                stop = busy.pop()
            for i in busy:
                slot_free(disk, i)
            if fill_zero:
                self._fill_zero_pages(disk, pos, stop - pos, now)
            pos = stop
            yield None

    def _fill_zero_pages(self, disk: Disk, first: int, count: int, now: int) -> None:
        """Store ``count`` free slots from ``first`` as same-filled zero pages."""
        t = disk.table
        t.flags_col[first * 4 : (first + count) * 4] = SAME.to_bytes(4, "little") * count
        t.handle_col[first * 8 : (first + count) * 8] = bytes(count * 8)
        t.ac_col[first * 4 : (first + count) * 4] = now.to_bytes(4, "little") * count
        self.stats.same_pages += count
        self.stats.pages_stored += count

    def discard(self, offset: int, length: int) -> None:
        """``zram_bio_discard``: free whole pages; a partial head or tail page
        is left alone (its contents are then unspecified, as for TRIM)."""
        run(self.discard_steps(offset, length))

    def discard_steps(self, offset: int, length: int) -> Job[None]:
        """``discard`` as a job. Each slot is freed whole within one step, so
        concurrent requests see it before or after, never half-freed."""
        disk = self.check_range(offset, length, True)
        st = self.stats
        st.discard_ios += 1
        st.discard_sectors += length >> SECTOR_SHIFT
        first = offset >> PAGE_SHIFT
        head = offset & (PAGE_SIZE - 1)
        if head:
            if length <= PAGE_SIZE - head:
                return
            length -= PAGE_SIZE - head
            first += 1
        count = length >> PAGE_SHIFT
        st.notify_free += count
        if disk is None:
            return
        try:
            yield from self._free_steps(disk, first, count)
        finally:
            self.apply_backing_releases()

    def write_zeroes(self, offset: int, length: int, unmap: bool = True) -> None:
        """Make the range read as zeros. Whole pages are freed (``unmap``) or
        stored as same-filled zero pages (still no pool memory); partial head
        and tail pages are zeroed by read-modify-write."""
        run(self.write_zeroes_steps(offset, length, unmap))

    def write_zeroes_steps(self, offset: int, length: int, unmap: bool = True) -> Job[None]:
        """``write_zeroes`` as a job (see ``discard_steps``)."""
        disk = self.check_range(offset, length, True)
        st = self.stats
        st.write_ios += 1
        st.write_sectors += length >> SECTOR_SHIFT
        if disk is None or not length:
            return
        now = self.clock()
        end = offset + length
        first = -(-offset // PAGE_SIZE)
        last = end >> PAGE_SHIFT  # exclusive
        try:
            if first > last:  # inside a single page
                zeros = memoryview(bytes(length))
                yield from self._patch_steps(disk, offset >> PAGE_SHIFT, offset & (PAGE_SIZE - 1), zeros, now)
                return
            if offset & (PAGE_SIZE - 1):
                head = offset & (PAGE_SIZE - 1)
                yield from self._patch_steps(disk, first - 1, head, memoryview(bytes(PAGE_SIZE - head)), now)
            if end & (PAGE_SIZE - 1):
                yield from self._patch_steps(disk, last, 0, memoryview(bytes(end & (PAGE_SIZE - 1))), now)
            if unmap:
                st.notify_free += last - first
            yield from self._free_steps(disk, first, last - first, not unmap, now)
        except OSError:
            self.stats.failed_writes += 1
            raise
        finally:
            self.apply_backing_releases()

    def flush(self) -> None:
        """Data is stable once a write returns; count the request only."""
        self.stats.flush_ios += 1
