"""ZramDevice: zram's per-device state machine and data path, synchronous.

Semantics follow drivers/block/zram/zram_drv.c: same-filled pages first, then
the primary compressor, huge pages stored raw, the memory limit checked after
allocation, the old contents freed only when the new ones are installed, and
every access clearing IDLE and PP_SLOT. Sub-page and unaligned I/O is done by
read-modify-write. Attributes are reached through ``show``/``store`` (see
``attrs.py``).

One owner: every method runs to completion on the caller's thread. Work
whose cost grows with the device is also offered as a job (``*_steps``, see
``jobs.py``) that an event loop drives in steps of about a millisecond; the
plain methods run those jobs to completion.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

import numpy as np

from . import attrs
from .backing import BackingStore
from .compressors import DEFAULT_ALGORITHM, Codec, CompParams, create_codec
from .jobs import Job, Offload, run
from .sizeclass import CHAIN_SIZE_DEFAULT, PAGE_SHIFT, PAGE_SIZE, build_class_table
from .slots import (
    ACCESS_CLEAR, ALLOCATED, HUGE, IDLE, INCOMPRESSIBLE, PRIO_MASK, PRIO_SHIFT,
    SAME, SIZE_MASK, WB, SlotTable,
)
from .zsmalloc import ZsPool

MAX_COMPS = 4          # ZRAM_MAX_COMPS: the primary and three recompression algorithms
_SPECIAL = SAME | WB | HUGE | PRIO_MASK  # slots not read by the primary decompressor
_SAME_CANDIDATE = 64  # every same-filled page compresses below this with any backend
ZERO_PAGE = bytes(PAGE_SIZE)
SECTOR_SHIFT = 9
STEP_SCAN = 1 << 14    # slots scanned by one step of a job (numpy, well under 1 ms)
STEP_FREE = 128        # allocated slots freed by one step of a job (~0.5 ms)


def _boottime() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME))


def _oserror(code: int, message: str) -> OSError:
    return OSError(code, message)


def _trim(chunks: list, offset: int, length: int) -> list[bytes]:
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

    def __init__(self, dev: ZramDevice, chunks: list, items: list[tuple[int, int]], offset: int, length: int) -> None:
        self.dev = dev
        self.chunks = chunks
        self.items = items      # (block, slot flags at the time of the read)
        self.offset = offset
        self.length = length

    @property
    def blocks(self) -> list[int]:
        return [b for b, _ in self.items]


class Stats:
    """zram's ``struct zram_stats`` plus the block layer's per-disk counters."""

    __slots__ = (
        "compr_data_size", "failed_reads", "failed_writes", "notify_free", "same_pages",
        "huge_pages", "huge_pages_since", "pages_stored", "miss_free",
        "bd_reads", "bd_writes",
        "read_ios", "read_sectors", "write_ios", "write_sectors",
        "discard_ios", "discard_sectors", "flush_ios",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class ZramDevice:
    """One zram device: ``ZramDevice("zram0")``, then ``store("disksize", "1G")``."""

    def __init__(self, name: str = "zram0", *, chain_size: int = CHAIN_SIZE_DEFAULT,
                 clock: Callable[[], int] | None = None) -> None:
        self.name = name
        self.chain_size = chain_size
        self.huge_class_size = build_class_table(chain_size).huge_class_size
        self.clock = clock or _boottime
        self.openers = 0          # NBD clients attached (reset refuses while > 0)
        self.claimed = False      # a reset is in progress: new opens are refused
        # Called instead of punching released backing blocks on this thread;
        # the owner then hands BackingStore.take_punches() to a worker.
        self.release_hook: Callable[[], None] | None = None
        self._configure_defaults()
        self._drop_runtime()

    # -- lifecycle ------------------------------------------------------------

    def _configure_defaults(self) -> None:
        """What ``reset`` restores: algorithms, params, limits, writeback settings."""
        self.comp_algs: list[str | None] = [DEFAULT_ALGORITHM] + [None] * (MAX_COMPS - 1)
        self.comp_params: list[CompParams] = [CompParams() for _ in range(MAX_COMPS)]
        self.limit_pages = 0
        self.wb_limit_enable = False
        self.bd_wb_limit = 0
        self.wb_batch_size = 32
        self.compressed_wb = False
        self.backing: BackingStore | None = None
        self.async_backing_reads = False  # reads of written-back slots return PendingRead

    def _drop_runtime(self) -> None:
        self.disksize = 0
        self.nr_pages = 0
        self.table: SlotTable | None = None
        self.pool: ZsPool | None = None
        self.comps: list[Codec | None] = [None] * MAX_COMPS
        self.stats = Stats()
        self.max_used_pages = 0

    @property
    def initialized(self) -> bool:
        return self.disksize > 0

    def init(self, disksize: int) -> None:
        """``disksize_store`` after parsing: allocate the table, pool and compressors."""
        if self.initialized:
            raise _oserror(errno.EBUSY, "device already initialised; reset it first")
        disksize = -(-disksize // PAGE_SIZE) * PAGE_SIZE
        comps: list[Codec | None] = [None] * MAX_COMPS
        for prio, alg in enumerate(self.comp_algs):
            if alg is not None:
                comps[prio] = create_codec(alg, self.comp_params[prio])
        self.nr_pages = disksize >> PAGE_SHIFT
        self.table = SlotTable(self.nr_pages)
        self.pool = ZsPool(self.chain_size)
        self.comps = comps
        self._compress = comps[0].compress  # type: ignore[union-attr]
        self._decompress0 = comps[0].decompress  # type: ignore[union-attr]
        self.stats = Stats()
        self.max_used_pages = 0
        self.disksize = disksize

    def reset(self) -> None:
        """``zram_reset_device``: free everything and return to defaults."""
        run(self.reset_steps())

    def reset_steps(self, claimed: bool = False) -> Job[None]:
        """Reset as a job: the device returns to defaults in the first step;
        the old pool is then released in steps. ``claimed``: the caller has
        set ``self.claimed`` itself (and made sure no punch is in flight)."""
        if self.openers or (self.claimed and not claimed):
            raise _oserror(errno.EBUSY, f"{self.name} is in use by {self.openers} client(s)")
        backing, pool = self.backing, self.pool
        if backing is not None and backing.pending_punches and self.release_hook is None:
            backing.flush_releases()
        self._drop_runtime()
        self._configure_defaults()
        if backing is not None:
            backing.close()
        if pool is not None:
            yield from pool.release_steps()

    def set_backing(self, path: str) -> None:
        """``backing_dev_store``: an existing regular file or block device."""
        if self.initialized:
            raise _oserror(errno.EBUSY, "backing_dev can only be set before disksize")
        store = BackingStore(path)
        if self.backing is not None:
            self.backing.close()
        self.backing = store

    @property
    def num_active_comps(self) -> int:
        return sum(c is not None for c in self.comps)

    # -- attribute ABI ----------------------------------------------------------

    def show(self, name: str) -> str:
        return attrs.show(self, name)

    def store(self, name: str, value: str) -> None:
        attrs.store(self, name, value)

    # -- helpers ------------------------------------------------------------------

    def _check_range(self, offset: int, length: int, write: bool) -> None:
        if offset < 0 or length < 0 or offset + length > self.disksize:
            if write:
                raise _oserror(errno.ENOSPC, f"write beyond the end of {self.name} ({self.disksize} bytes)")
            raise _oserror(errno.EINVAL, f"access beyond the end of {self.name} ({self.disksize} bytes)")

    def _slot_free(self, i: int) -> None:
        """``slot_free``: release whatever slot ``i`` holds and clear its state."""
        table = self.table
        f = table.flags[i]  # type: ignore[union-attr]
        table.ac_time[i] = 0  # type: ignore[union-attr]
        if not f & ALLOCATED:
            if f:
                table.flags[i] = 0  # type: ignore[union-attr]
            return
        st = self.stats
        if f & WB:
            self._release_block(table.handle[i])  # type: ignore[union-attr]
        elif f & SAME:
            st.same_pages -= 1
        else:
            size = f & SIZE_MASK
            self.pool.free(table.handle[i])  # type: ignore[union-attr]
            st.compr_data_size -= size
            if f & HUGE:
                st.huge_pages -= 1
        st.pages_stored -= 1
        table.flags[i] = 0  # type: ignore[union-attr]
        table.handle[i] = 0  # type: ignore[union-attr]

    def _release_block(self, block: int) -> None:
        self.backing.release(block)  # type: ignore[union-attr]

    def flush_backing(self) -> None:
        """Punch out and free the backing blocks released by the last operation
        (or have ``release_hook`` arrange it off this thread)."""
        b = self.backing
        if b is not None and b.pending_punches:
            if self.release_hook is not None:
                self.release_hook()
            else:
                b.flush_releases()

    # -- page operations ------------------------------------------------------------

    def _write_page(self, i: int, page: memoryview, now: int) -> None:
        """``zram_write_page`` + ``mark_slot_accessed`` for a full page.

        Same-filled pages are found first as the kernel does, but the shifted
        comparison only runs when the page compressed to almost nothing (every
        same-filled page does), which spares it on every other page.
        """
        st = self.stats
        if page == ZERO_PAGE:
            self._store_same(i, 0, now)
            return
        comp = self._compress(page)
        clen = len(comp)
        if clen < _SAME_CANDIDATE and page[8:] == page[:-8]:
            self._store_same(i, int.from_bytes(page[:8], "little"), now)
            return
        pool = self.pool
        if clen >= self.huge_class_size:
            h = pool.store(page)  # type: ignore[union-attr]
            new_flags = HUGE | PAGE_SIZE
            clen = PAGE_SIZE
            st.huge_pages += 1
            st.huge_pages_since += 1
        else:
            h = pool.store(comp)  # type: ignore[union-attr]
            new_flags = clen
        pages = pool.pages_allocated  # type: ignore[union-attr]
        if pages > self.max_used_pages:
            self.max_used_pages = pages
        if self.limit_pages and pages > self.limit_pages:
            pool.free(h)  # type: ignore[union-attr]
            if new_flags & HUGE:
                st.huge_pages -= 1
                st.huge_pages_since -= 1
            raise _oserror(errno.ENOMEM, f"{self.name}: mem_limit reached ({self.limit_pages << PAGE_SHIFT} bytes)")
        table = self.table
        flags = table.flags  # type: ignore[union-attr]
        handles = table.handle  # type: ignore[union-attr]
        old = flags[i]
        if old & ALLOCATED:
            if old & _SPECIAL:
                self._slot_free(i)
                st.pages_stored += 1
            else:  # the common overwrite: a plain compressed object
                pool.free(handles[i])  # type: ignore[union-attr]
                st.compr_data_size -= old & SIZE_MASK
        else:
            st.pages_stored += 1
        handles[i] = h
        flags[i] = new_flags
        table.ac_time[i] = now  # type: ignore[union-attr]
        st.compr_data_size += clen

    def _store_same(self, i: int, word: int, now: int) -> None:
        table = self.table
        if table.flags[i] & ALLOCATED:  # type: ignore[union-attr]
            self._slot_free(i)
        table.handle[i] = word  # type: ignore[union-attr]
        table.flags[i] = SAME  # type: ignore[union-attr]
        table.ac_time[i] = now  # type: ignore[union-attr]
        self.stats.same_pages += 1
        self.stats.pages_stored += 1

    def _read_page(self, i: int, now: int, defer: list | None = None) -> bytes | None:
        """``zram_read_page`` + ``mark_slot_accessed``; returns the 4 KiB page.

        A written-back slot is read from the backing store at once, or, given
        ``defer``, its block is pinned, recorded there, and None returned.
        """
        table = self.table
        flags = table.flags  # type: ignore[union-attr]
        f = flags[i]
        if not f & ALLOCATED:
            return ZERO_PAGE
        flags[i] = f & ACCESS_CLEAR
        table.ac_time[i] = now  # type: ignore[union-attr]
        if f & _SPECIAL:
            return self._read_special(i, f, defer)
        obj = self.pool.view(table.handle[i], f & SIZE_MASK)  # type: ignore[union-attr]
        try:
            page = self._decompress0(obj, PAGE_SIZE)
        except Exception as e:  # corrupt data must surface as an I/O error
            raise _oserror(errno.EIO, f"{self.name}: decompression failed: {e}") from e
        if len(page) != PAGE_SIZE:
            raise _oserror(errno.EIO, f"{self.name}: decompressed {len(page)} bytes, expected {PAGE_SIZE}")
        return page

    def _read_run(self, first: int, stop: int, now: int, defer: list | None) -> list:
        """``_read_page`` over [first, stop), inlined for multi-page requests."""
        table = self.table
        flags, handles, ac = table.flags, table.handle, table.ac_time  # type: ignore[union-attr]
        view = self.pool.view  # type: ignore[union-attr]
        decompress = self._decompress0
        out: list = []
        append = out.append
        for i in range(first, stop):
            f = flags[i]
            if not f & ALLOCATED:
                append(ZERO_PAGE)
                continue
            flags[i] = f & ACCESS_CLEAR
            ac[i] = now
            if f & _SPECIAL:
                append(self._read_special(i, f, defer))
                continue
            try:
                page = decompress(view(handles[i], f & SIZE_MASK), PAGE_SIZE)
            except Exception as e:  # corrupt data must surface as an I/O error
                raise _oserror(errno.EIO, f"{self.name}: decompression failed: {e}") from e
            if len(page) != PAGE_SIZE:
                raise _oserror(errno.EIO, f"{self.name}: decompressed {len(page)} bytes, expected {PAGE_SIZE}")
            append(page)
        return out

    def _read_special(self, i: int, f: int, defer: list | None) -> bytes | None:
        """Same-filled, written-back, huge and recompressed slots."""
        table = self.table
        if f & SAME:
            word = table.handle[i]  # type: ignore[union-attr]
            return ZERO_PAGE if word == 0 else word.to_bytes(8, "little") * (PAGE_SIZE // 8)
        if f & WB:
            block = table.handle[i]  # type: ignore[union-attr]
            if defer is not None:
                self.backing.pin(block)  # type: ignore[union-attr]
                defer.append((block, f))
                return None
            return self._read_written_back(block, f)
        size = f & SIZE_MASK
        obj = self.pool.view(table.handle[i], size)  # type: ignore[union-attr]
        if size == PAGE_SIZE:
            return bytes(obj)
        return self._decompress(f, obj)

    def _read_written_back(self, block: int, f: int) -> bytes:
        backing = self.backing
        backing.pin(block)  # type: ignore[union-attr]
        try:
            res = backing.read_blocks([block])[0]  # type: ignore[union-attr]
        finally:
            backing.unpin(block)  # type: ignore[union-attr]
        return self._decode_block(res, f)

    def _decode_block(self, res: bytes | OSError, f: int) -> bytes:
        """A backing block's page: as written, or decompressed (compressed writeback)."""
        if isinstance(res, OSError):
            raise _oserror(errno.EIO, f"{self.name}: backing_dev read failed: {res.strerror}")
        self.stats.bd_reads += 1
        size = f & SIZE_MASK
        if size and not f & HUGE:
            return self._decompress(f, memoryview(res)[:size])
        return res

    def _decompress(self, f: int, obj: memoryview) -> bytes:
        codec = self.comps[(f & PRIO_MASK) >> PRIO_SHIFT]
        try:
            page = codec.decompress(obj, PAGE_SIZE)  # type: ignore[union-attr]
        except Exception as e:  # corrupt data must surface as an I/O error
            raise _oserror(errno.EIO, f"{self.name}: decompression failed: {e}") from e
        if len(page) != PAGE_SIZE:
            raise _oserror(errno.EIO, f"{self.name}: decompressed {len(page)} bytes, expected {PAGE_SIZE}")
        return page

    # -- block I/O ----------------------------------------------------------------------

    def read_chunks(self, offset: int, length: int) -> list[bytes]:
        """Read ``length`` bytes at ``offset`` as a list of buffers (one per page
        touched, the first and last trimmed). The NBD fast path."""
        if length == PAGE_SIZE and not offset & (PAGE_SIZE - 1) and 0 <= offset < self.disksize:
            st = self.stats
            st.read_ios += 1
            st.read_sectors += PAGE_SIZE >> SECTOR_SHIFT
            defer: list | None = [] if self.async_backing_reads else None
            try:
                page = self._read_page(offset >> PAGE_SHIFT, self.clock(), defer)
            except OSError:
                st.failed_reads += 1
                raise
            if page is None:
                return PendingRead(self, [None], defer, offset, length)  # type: ignore[arg-type,return-value]
            return [page]
        self._check_range(offset, length, False)
        st = self.stats
        st.read_ios += 1
        st.read_sectors += (length + 511) >> SECTOR_SHIFT
        if not length:
            return []
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        defer = [] if self.async_backing_reads else None
        try:
            chunks = self._read_run(first, last + 1, self.clock(), defer)
        except OSError:
            st.failed_reads += 1
            if defer:
                for block, _ in defer:
                    self.backing.unpin(block)  # type: ignore[union-attr]
                self.flush_backing()
            raise
        if defer:
            return PendingRead(self, chunks, defer, offset, length)  # type: ignore[return-value]
        return _trim(chunks, offset, length)

    def finish_read(self, pending: PendingRead, results: list[bytes | OSError]) -> list[bytes]:
        """Complete a PendingRead with its blocks' contents (in ``pending.blocks`` order)."""
        backing = self.backing
        for block, _ in pending.items:
            backing.unpin(block)  # type: ignore[union-attr]
        self.flush_backing()
        chunks = pending.chunks
        k = 0
        try:
            for pos, chunk in enumerate(chunks):
                if chunk is None:
                    chunks[pos] = self._decode_block(results[k], pending.items[k][1])
                    k += 1
        except OSError:
            self.stats.failed_reads += 1
            raise
        return _trim(chunks, pending.offset, pending.length)

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.read_chunks(offset, length))

    def peek(self, offset: int, length: int) -> bytes:
        """Read for inspection: no access is recorded (IDLE, PP_SLOT, access
        times and I/O statistics stay as they were)."""
        self._check_range(offset, length, False)
        if not length:
            return b""
        first, last = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
        flags = self.table.np_flags()[first : last + 1].copy()  # type: ignore[union-attr]
        ac = self.table.np_ac_time()[first : last + 1].copy()  # type: ignore[union-attr]
        saved = [getattr(self.stats, n) for n in Stats.__slots__]
        try:
            return b"".join(_trim([self._read_page(i, 0) for i in range(first, last + 1)], offset, length))
        finally:
            self.table.np_flags()[first : last + 1] = flags  # type: ignore[union-attr]
            self.table.np_ac_time()[first : last + 1] = ac  # type: ignore[union-attr]
            for n, v in zip(Stats.__slots__, saved):
                setattr(self.stats, n, v)

    def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; any alignment (sub-page parts are
        read-modify-written). ``data`` is consumed before this returns.
        ``fua`` (NBD's force unit access) needs nothing: a stored page is stable."""
        mv = data if type(data) is memoryview else memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        length = mv.nbytes
        single = length == PAGE_SIZE and not offset & (PAGE_SIZE - 1)
        if not (single and 0 <= offset < self.disksize):
            self._check_range(offset, length, True)
        st = self.stats
        st.write_ios += 1
        st.write_sectors += (length + 511) >> SECTOR_SHIFT
        if not length:
            return
        now = self.clock()
        try:
            if single:
                self._write_page(offset >> PAGE_SHIFT, mv, now)
                return
            pos = 0
            i = offset >> PAGE_SHIFT
            head = offset & (PAGE_SIZE - 1)
            if head or length < PAGE_SIZE:
                n = min(PAGE_SIZE - head, length)
                self._patch_page(i, head, mv[:n], now)
                pos = n
                i += 1
            write_page = self._write_page
            while length - pos >= PAGE_SIZE:
                write_page(i, mv[pos : pos + PAGE_SIZE], now)
                pos += PAGE_SIZE
                i += 1
            if pos < length:
                self._patch_page(i, 0, mv[pos:], now)
        except OSError:
            st.failed_writes += 1
            raise
        finally:
            if self.backing is not None:
                self.flush_backing()

    def _patch_page(self, i: int, start: int, part: memoryview, now: int) -> None:
        page = bytearray(self._read_page(i, now))
        page[start : start + part.nbytes] = part
        self._write_page(i, memoryview(page), now)

    def _patch_steps(self, i: int, start: int, part: memoryview, now: int) -> Job[None]:
        """``_patch_page`` whose read of a written-back slot is an Offload.

        The block stays pinned during the read; the patch is applied only if
        the slot still holds that block afterwards (otherwise it is retried
        against the slot's newer contents), so it never mixes two states."""
        table = self.table
        flags, handles = table.flags, table.handle  # type: ignore[union-attr]
        backing = self.backing
        while True:
            f = flags[i]
            if backing is None or not f & WB:
                self._patch_page(i, start, part, now)
                return
            block = handles[i]
            backing.pin(block)
            try:
                res = (yield Offload(backing.read_blocks, [block]))[0]
            finally:
                backing.unpin(block)
                self.flush_backing()
            if flags[i] & WB and handles[i] == block:  # pinned: not reused meanwhile
                page = bytearray(self._decode_block(res, f))
                flags[i] &= ACCESS_CLEAR
                page[start : start + part.nbytes] = part
                self._write_page(i, memoryview(page), now)
                return

    def write_needs_backing(self, offset: int, length: int) -> bool:
        """Whether ``write`` would read-modify-write a written-back page (then
        run ``write_steps`` instead, so that read happens off the loop)."""
        if self.backing is None or not (offset | length) & (PAGE_SIZE - 1) or not length:
            return False
        if offset < 0 or offset + length > self.disksize:
            return False  # write() reports the error
        flags = self.table.flags  # type: ignore[union-attr]
        head, tail = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
        return bool(flags[head] & WB or flags[tail] & WB)

    def write_steps(self, offset: int, data: bytes) -> Job[None]:
        """``write`` as a job: sub-page parts of written-back pages read their
        block through an Offload. ``data`` must be owned by the job."""
        mv = memoryview(data).cast("B")
        length = mv.nbytes
        self._check_range(offset, length, True)
        st = self.stats
        st.write_ios += 1
        st.write_sectors += (length + 511) >> SECTOR_SHIFT
        if not length:
            return
        now = self.clock()
        try:
            pos = 0
            i = offset >> PAGE_SHIFT
            head = offset & (PAGE_SIZE - 1)
            if head or length < PAGE_SIZE:
                n = min(PAGE_SIZE - head, length)
                yield from self._patch_steps(i, head, mv[:n], now)
                pos = n
                i += 1
            while length - pos >= PAGE_SIZE:
                self._write_page(i, mv[pos : pos + PAGE_SIZE], now)
                pos += PAGE_SIZE
                i += 1
            if pos < length:
                yield from self._patch_steps(i, 0, mv[pos:], now)
        except OSError:
            st.failed_writes += 1
            raise
        finally:
            self.flush_backing()

    def _free_steps(self, first: int, count: int, fill_zero: bool = False, now: int = 0) -> Job[None]:
        """Free ``count`` whole pages from ``first``, at most STEP_FREE
        allocated (or STEP_SCAN empty) slots per step; ``fill_zero`` stores
        each freed stretch as same-filled zero pages in the same step."""
        if count <= 64:
            for i in range(first, first + count):
                self._slot_free(i)
            if fill_zero:
                self._fill_zero_pages(first, count, now)
            return
        flags = self.table.np_flags()  # type: ignore[union-attr]
        slot_free = self._slot_free
        pos, end = first, first + count
        while pos < end:
            stop = min(end, pos + STEP_SCAN)
            busy = np.flatnonzero(flags[pos:stop])
            if len(busy) > STEP_FREE:
                stop = pos + int(busy[STEP_FREE])
                busy = busy[:STEP_FREE]
            for j in busy.tolist():
                slot_free(pos + j)
            if fill_zero:
                self._fill_zero_pages(pos, stop - pos, now)
            pos = stop
            yield None

    def discard(self, offset: int, length: int) -> None:
        """``zram_bio_discard``: free whole pages; a partial head or tail page
        is left alone (its contents are then unspecified, as for TRIM)."""
        run(self.discard_steps(offset, length))

    def discard_steps(self, offset: int, length: int) -> Job[None]:
        """``discard`` as a job. Each slot is freed whole within one step, so
        concurrent requests see it before or after, never half-freed."""
        self._check_range(offset, length, True)
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
        try:
            yield from self._free_steps(first, count)
        finally:
            self.flush_backing()

    def write_zeroes(self, offset: int, length: int, unmap: bool = True) -> None:
        """Make the range read as zeros. Whole pages are freed (``unmap``) or
        stored as same-filled zero pages (still no pool memory); partial head
        and tail pages are zeroed by read-modify-write."""
        run(self.write_zeroes_steps(offset, length, unmap))

    def write_zeroes_steps(self, offset: int, length: int, unmap: bool = True) -> Job[None]:
        """``write_zeroes`` as a job (see ``discard_steps``)."""
        self._check_range(offset, length, True)
        st = self.stats
        st.write_ios += 1
        st.write_sectors += length >> SECTOR_SHIFT
        if not length:
            return
        now = self.clock()
        end = offset + length
        first = -(-offset // PAGE_SIZE)
        last = end >> PAGE_SHIFT  # exclusive
        try:
            if first > last:  # inside a single page
                yield from self._patch_steps(offset >> PAGE_SHIFT, offset & (PAGE_SIZE - 1), memoryview(bytes(length)), now)
                return
            if offset & (PAGE_SIZE - 1):
                head = offset & (PAGE_SIZE - 1)
                yield from self._patch_steps(first - 1, head, memoryview(bytes(PAGE_SIZE - head)), now)
            if end & (PAGE_SIZE - 1):
                yield from self._patch_steps(last, 0, memoryview(bytes(end & (PAGE_SIZE - 1))), now)
            if unmap:
                st.notify_free += last - first
            yield from self._free_steps(first, last - first, not unmap, now)
        except OSError:
            st.failed_writes += 1
            raise
        finally:
            self.flush_backing()

    def _fill_zero_pages(self, first: int, count: int, now: int) -> None:
        """Store ``count`` free slots from ``first`` as same-filled zero pages."""
        t = self.table
        t.np_flags()[first : first + count] = SAME  # type: ignore[union-attr]
        t.np_handle()[first : first + count] = 0  # type: ignore[union-attr]
        t.np_ac_time()[first : first + count] = now  # type: ignore[union-attr]
        self.stats.same_pages += count
        self.stats.pages_stored += count

    def flush(self) -> None:
        """Data is stable once a write returns; count the request only."""
        self.stats.flush_ios += 1

    def allocation_map(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Extents (byte length, state) covering the range, for NBD block status.

        State is NBD base:allocation bits: 0 for data, ZERO (2) for stored
        zero-filled pages, HOLE|ZERO (3) for unallocated or discarded pages.
        """
        self._check_range(offset, length, False)
        if not length:
            return []
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        flags = self.table.np_flags()[first : last + 1]  # type: ignore[union-attr]
        handle = self.table.np_handle()[first : last + 1]  # type: ignore[union-attr]
        state = np.where((flags & ALLOCATED) == 0, 3, np.where(((flags & SAME) != 0) & (handle == 0), 2, 0))
        edges = np.flatnonzero(state[1:] != state[:-1]) + 1
        bounds = [0, *edges.tolist(), len(state)]
        extents = []
        for a, b in zip(bounds, bounds[1:]):
            start = max(offset, (first + a) << PAGE_SHIFT)
            stop = min(offset + length, (first + b) << PAGE_SHIFT)
            extents.append((stop - start, int(state[a])))
        return extents

    # -- post-processing primitives (see postprocess.py) ------------------------------------

    def copy_out(self, i: int, f: int, raw: bool) -> tuple[bytes, int]:
        """Slot ``i``'s data as a page-sized buffer for writeback, and the flags
        a compressed writeback must keep to decode it later."""
        size = f & SIZE_MASK
        obj = self.pool.view(self.table.handle[i], size)  # type: ignore[union-attr]
        if size == PAGE_SIZE:
            return bytes(obj), (f & (SIZE_MASK | HUGE | PRIO_MASK)) if raw else 0
        if raw:
            return bytes(obj) + bytes(PAGE_SIZE - size), f & (SIZE_MASK | PRIO_MASK)
        return self._decompress(f, obj), 0

    def install_written_back(self, i: int, block: int, kept: int) -> None:
        """The slot's data now lives in ``block``: drop the in-RAM object."""
        self._slot_free(i)
        self.table.flags[i] = WB | kept  # type: ignore[union-attr]
        self.table.handle[i] = block  # type: ignore[union-attr]
        self.stats.pages_stored += 1

    def recompress_slot(self, i: int, prio: int, prio_max: int, threshold: int) -> bool:
        """``recompress_slot``; returns whether the attempt counts against max_pages."""
        table = self.table
        f = table.flags[i]  # type: ignore[union-attr]
        size = f & SIZE_MASK
        if not size or f & (WB | SAME) or size < threshold:
            return False
        obj = self.pool.view(table.handle[i], size)  # type: ignore[union-attr]
        page = bytes(obj) if size == PAGE_SIZE else self._decompress(f, obj)
        f &= ~IDLE
        table.flags[i] = f  # type: ignore[union-attr]
        prio = max(prio, ((f & PRIO_MASK) >> PRIO_SHIFT) + 1)
        if prio >= prio_max:
            return False
        pool = self.pool
        old_class = pool.class_of(size)  # type: ignore[union-attr]
        found = None
        while prio < prio_max:
            codec = self.comps[prio]
            if codec is not None:
                comp = codec.compress(page)
                n = len(comp)
                if n < self.huge_class_size and pool.class_of(n) < old_class and not (threshold and n >= threshold):  # type: ignore[union-attr]
                    found = comp
                    break
            prio += 1
        if found is None:
            if prio >= self.num_active_comps:
                table.flags[i] = f | INCOMPRESSIBLE  # type: ignore[union-attr]
            return True
        h = pool.store(found)  # type: ignore[union-attr]
        self._slot_free(i)
        table.handle[i] = h  # type: ignore[union-attr]
        table.flags[i] = len(found) | (prio << PRIO_SHIFT)  # type: ignore[union-attr]
        self.stats.compr_data_size += len(found)
        self.stats.pages_stored += 1
        return True

    # -- maintenance ----------------------------------------------------------------------

    def mark_idle(self, cutoff: int | None) -> None:
        """``mark_idle``: IDLE on allocated, in-RAM, not same-filled slots last
        accessed before ``cutoff`` seconds (None = all); cleared on the younger."""
        run(self.mark_idle_steps(cutoff))

    def mark_idle_steps(self, cutoff: int | None) -> Job[None]:
        """``mark_idle`` as a job, STEP_SCAN slots per step."""
        table = self.table
        flags = table.np_flags()  # type: ignore[union-attr]
        ac = table.np_ac_time()  # type: ignore[union-attr]
        for start in range(0, self.nr_pages, STEP_SCAN):
            if self.table is not table:
                return  # reset meanwhile
            f = flags[start : start + STEP_SCAN]
            eligible = ((f & SIZE_MASK) != 0) & ((f & (WB | SAME)) == 0)
            if cutoff is not None:
                old = ac[start : start + STEP_SCAN] < max(cutoff, 0)
                f[eligible & old] |= IDLE
                f[eligible & ~old] &= ~np.uint32(IDLE)
            else:
                f[eligible] |= IDLE
            yield None

    def compact(self) -> int:
        """``zs_compact`` on the pool; returns pages freed."""
        return self.pool.compact()  # type: ignore[union-attr]

    def slot_state(self, i: int) -> tuple[int, int, int]:
        """(handle, flags, ac_time) of slot ``i``, for tests and debugfs."""
        t = self.table
        return t.handle[i], t.flags[i], t.ac_time[i]  # type: ignore[union-attr]

    def debugfs(self, name: str) -> str:
        """zram's and zsmalloc's debugfs files: ``block_state`` and ``classes``."""
        if name not in ("block_state", "classes"):
            raise _oserror(errno.ENOENT, f"no debug file {name!r} (block_state, classes)")
        if not self.initialized:
            raise _oserror(errno.EINVAL, f"{self.name} is not initialised")
        return self.block_state() if name == "block_state" else self.pool.format_classes()  # type: ignore[union-attr]

    def block_state(self) -> str:
        """debugfs ``block_state``: one line per allocated slot."""
        flags = self.table.np_flags()  # type: ignore[union-attr]
        lines = []
        for i in np.flatnonzero(flags & ALLOCATED).tolist():
            f = int(flags[i])
            ac = self.table.ac_time[i]  # type: ignore[union-attr]
            marks = "".join(c if f & bit else "." for c, bit in (
                ("s", SAME), ("w", WB), ("h", HUGE), ("i", IDLE)))
            marks += "r" if f & PRIO_MASK else "."
            marks += "n" if f & INCOMPRESSIBLE else "."
            lines.append("%12d %12d.000000 %s\n" % (i, ac, marks))
        return "".join(lines)
