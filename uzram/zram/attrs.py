"""The zram sysfs attribute ABI: every attribute by name, as the kernel parses
and prints it. The control socket, the FUSE tree and the tests all go through
``show`` and ``store`` here.

Errors are ``OSError`` with the kernel's errno. Reading a write-only or writing
a read-only attribute is EACCES (kernfs refuses the open); an unknown name is
ENOENT.

Stores whose cost grows with the device (writeback, recompress, compact,
idle, reset) or that read a file (algorithm_params dict=) are jobs (see
``jobs.py``): ``store_job`` returns the job for a driver, ``store`` runs it
to completion.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from collections.abc import Callable
from typing import Any, TypeVar

from . import kparse
from .compressors import AVAILABLE, MAX_ALGO_NAME, CompParams, format_available
from .core import ZramCore
from .jobs import Job, Offload, run
from .postprocess import RecompressJob, WritebackJob
from .sizeclass import PAGE_SHIFT, PAGE_SIZE

Show = Callable[[ZramCore], str]
Store = Callable[[ZramCore, str], None]
JobStore = Callable[[ZramCore, str], "tuple[Job[None], Any]"]
F = TypeVar("F", bound=Callable[..., Any])

_SHOW: dict[str, Show] = {}
_STORE: dict[str, Store] = {}
_JOB: dict[str, JobStore] = {}
MODES: dict[str, int] = {}   # attribute -> sysfs permission bits
SERIALISED = frozenset({"writeback", "recompress", "compact"})  # one at a time per device
DICT_MAX = 1 << 20   # largest algorithm_params dictionary accepted


class Progress:
    """How far a job is: ``done`` of ``total`` (``what`` names it)."""

    def __init__(self, what: str, total: int = 0) -> None:
        self.what, self.done, self.total = what, 0, total


def _attr(name: str, mode: int) -> Callable[[F], F]:
    """Register a ``*_show``, ``*_store`` or ``*_store_job`` function."""
    def register(fn: F) -> F:
        MODES[name] = mode
        kind = fn.__name__.rsplit("_", 1)[-1]
        if kind == "show":
            _SHOW[name] = fn
        elif kind == "job":
            job: JobStore = fn
            _JOB[name] = job
            _STORE[name] = lambda dev, value: run(job(dev, value)[0])
        else:
            _STORE[name] = fn
        return fn
    return register


def names() -> list[str]:
    return sorted(MODES)


def show(dev: ZramCore, name: str) -> str:
    fn = _SHOW.get(name)
    if fn is None:
        raise OSError(errno.EACCES if name in MODES else errno.ENOENT, f"{name}: cannot be read")
    return fn(dev)


def as_written(value: str) -> str:
    """What one write(2) to a sysfs attribute hands to its store: at most a
    page (kernfs takes the first PAGE_SIZE bytes and reports them written)."""
    if len(value) <= PAGE_SIZE // 4:
        return value
    raw = value.encode()
    return value if len(raw) <= PAGE_SIZE else raw[:PAGE_SIZE].decode(errors="ignore")


def store(dev: ZramCore, name: str, value: str) -> None:
    """Store ``value``; like a zero-length write(2) to sysfs, "" does nothing."""
    fn = _STORE.get(name)
    if fn is None:
        raise OSError(errno.EACCES if name in MODES else errno.ENOENT, f"{name}: cannot be written")
    if value:
        fn(dev, as_written(value))


def _nothing() -> Job[None]:
    return
    yield


def store_job(dev: ZramCore, name: str, value: str) -> tuple[Job[None], Any]:
    """The store as a job for a driver, and an object with ``done``/``total``
    /``what`` telling its progress (or None). Quick stores and errors in the
    name happen at once, here; the job's own errors come from the driver."""
    fn = _JOB.get(name)
    if fn is None or not value:
        store(dev, name, value)
        return _nothing(), None
    return fn(dev, as_written(value))


def _einval(what: str) -> OSError:
    return OSError(errno.EINVAL, what)


# -- lifecycle -------------------------------------------------------------------

@_attr("disksize", 0o644)
def disksize_show(dev: ZramCore) -> str:
    return f"{dev.disksize}\n"


@_attr("disksize", 0o644)
def disksize_store(dev: ZramCore, value: str) -> None:
    size, _ = kparse.memparse(value)
    if not size:
        raise _einval(f"bad disksize {value.strip()!r}")
    dev.init(size)


@_attr("initstate", 0o444)
def initstate_show(dev: ZramCore) -> str:
    return f"{int(dev.initialized)}\n"


@_attr("reset", 0o200)
def reset_store_job(dev: ZramCore, value: str, claimed: bool = False) -> tuple[Job[None], Any]:
    if not kparse.kstrtou16(value):
        raise _einval("reset needs a non-zero value")
    return dev.reset_steps(claimed), None


@_attr("size", 0o444)
def size_show(dev: ZramCore) -> str:
    """The block layer's capacity in 512-byte sectors."""
    return f"{dev.disksize >> 9}\n"


# -- compression ---------------------------------------------------------------------

def _set_algorithm(dev: ZramCore, prio: int, value: str) -> None:
    """``__comp_algorithm_store``: E2BIG, EINVAL (unknown), then EBUSY (initialised)."""
    if len(value) >= MAX_ALGO_NAME:
        raise OSError(errno.E2BIG, "algorithm name too long")
    name = value[:-1] if value.endswith("\n") else value
    if name not in AVAILABLE:
        raise _einval(f"unknown algorithm {name!r}; available: {' '.join(AVAILABLE)}")
    dev.set_algorithm(prio, name)


@_attr("comp_algorithm", 0o644)
def comp_algorithm_show(dev: ZramCore) -> str:
    return format_available(dev.comp_algs[0])


@_attr("comp_algorithm", 0o644)
def comp_algorithm_store(dev: ZramCore, value: str) -> None:
    _set_algorithm(dev, 0, value)


@_attr("recomp_algorithm", 0o644)
def recomp_algorithm_show(dev: ZramCore) -> str:
    return "".join(f"#{p}: " + format_available(alg)
                   for p, alg in enumerate(dev.comp_algs) if p and alg is not None)


_RECOMP_ALGORITHM_ARGS: dict[str, kparse.Convert] = {"algo": kparse.text, "priority": kparse.kstrtoint}


@_attr("recomp_algorithm", 0o644)
def recomp_algorithm_store(dev: ZramCore, value: str) -> None:
    args = kparse.parse_args(value, _RECOMP_ALGORITHM_ARGS)
    prio: int = args.get("priority", 1)
    alg: str | None = args.get("algo")
    if alg is None:
        raise _einval("recomp_algorithm needs algo=NAME")
    if not 1 <= prio < len(dev.comp_algs):
        raise _einval(f"priority must be 1..{len(dev.comp_algs) - 1}")
    _set_algorithm(dev, prio, alg)


def read_dict(path: str) -> bytes:
    """A dictionary file: regular files only (a FIFO or device could block
    or never end), at most DICT_MAX bytes. Blocking: run it off the loop."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise _einval(f"cannot read dictionary {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise _einval(f"dictionary {path} is not a regular file")
        if st.st_size > DICT_MAX:
            raise _einval(f"dictionary {path} is larger than {DICT_MAX} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(DICT_MAX + 1)
        if len(data) > DICT_MAX:
            raise _einval(f"dictionary {path} is larger than {DICT_MAX} bytes")
        return data
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise
        raise _einval(f"cannot read dictionary {path}: {e.strerror}") from e
    finally:
        os.close(fd)


_ALGORITHM_PARAMS_ARGS: dict[str, kparse.Convert] = {
    "priority": kparse.kstrtoint,
    "level": kparse.kstrtoint,
    "algo": kparse.text,
    "dict": kparse.text,
    "deflate.winbits": kparse.kstrtoint,
}


@_attr("algorithm_params", 0o200)
def algorithm_params_store_job(dev: ZramCore, value: str) -> tuple[Job[None], Any]:
    args = kparse.parse_args(value, _ALGORITHM_PARAMS_ARGS)
    prio: int = args.get("priority", 0)
    level: int | None = args.get("level")
    algo: str | None = args.get("algo")
    dict_path: str | None = args.get("dict")
    winbits: int | None = args.get("deflate.winbits")
    if algo is not None:
        prio = next((p for p, a in enumerate(dev.comp_algs) if a == algo), -1)
    if not 0 <= prio < len(dev.comp_algs):
        raise _einval("no such algorithm or priority configured")

    def job() -> Job[None]:
        dict_data = None
        if dict_path is not None:
            dict_data = yield Offload(read_dict, dict_path)
        dev.set_comp_params(prio, CompParams(level=level, dict_data=dict_data, deflate_winbits=winbits))
    return job(), None


# -- memory ---------------------------------------------------------------------------

@_attr("mem_limit", 0o200)
def mem_limit_store(dev: ZramCore, value: str) -> None:
    limit, consumed = kparse.memparse(value)
    if not consumed:
        raise _einval(f"bad mem_limit {value.strip()!r}")
    dev.set_mem_limit(limit)


@_attr("mem_used_max", 0o200)
def mem_used_max_store(dev: ZramCore, value: str) -> None:
    try:
        val = kparse.kstrtoull(value)
    except OSError:
        val = 1
    if val != 0:
        raise _einval("only 0 resets mem_used_max")
    dev.reset_mem_used_max()


@_attr("idle", 0o200)
def idle_store_job(dev: ZramCore, value: str) -> tuple[Job[None], Any]:
    cutoff = None
    if not kparse.sysfs_streq(value, "all"):
        try:
            age = kparse.kstrtoull(value, 0)
        except OSError:
            raise _einval("idle takes 'all' or an age in seconds") from None
        cutoff = dev.clock() - age
    dev.require_disk()
    return dev.mark_idle_steps(cutoff), None


@_attr("compact", 0o200)
def compact_store_job(dev: ZramCore, value: str) -> tuple[Job[None], Any]:
    pool = dev.require_disk().pool
    progress = Progress("compact", sum(c.can_compact() for c in pool.classes))

    def job() -> Job[None]:
        for freed in pool.compact_steps():
            progress.done = min(progress.total, progress.done + freed)
            yield None
        progress.done = progress.total
    return job(), progress


# -- statistics ---------------------------------------------------------------------------

@_attr("mm_stat", 0o444)
def mm_stat_show(dev: ZramCore) -> str:
    st = dev.stats
    pool = dev.pool
    mem_used = pool.total_pages if pool else 0
    compacted = pool.pages_compacted if pool else 0
    return "%8u %8u %8u %8u %8u %8u %8u %8u %8u\n" % (
        st.pages_stored << PAGE_SHIFT, st.compr_data_size, mem_used << PAGE_SHIFT,
        dev.settings.limit_pages << PAGE_SHIFT, st.max_used_pages << PAGE_SHIFT,
        st.same_pages, compacted, st.huge_pages, st.huge_pages_since)


@_attr("io_stat", 0o444)
def io_stat_show(dev: ZramCore) -> str:
    st = dev.stats
    return "%8u %8u 0 %8u\n" % (st.failed_reads, st.failed_writes, st.notify_free)


@_attr("debug_stat", 0o444)
def debug_stat_show(dev: ZramCore) -> str:
    return "version: 1\n0 %8u\n" % dev.stats.miss_free


@_attr("stat", 0o444)
def stat_show(dev: ZramCore) -> str:
    """The block layer's 17-field ``stat`` (I/O counts and sectors; no timings)."""
    st = dev.stats
    return ("%8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u %8u\n" % (
        st.read_ios, 0, st.read_sectors, 0, st.write_ios, 0, st.write_sectors, 0,
        0, 0, 0, st.discard_ios, 0, st.discard_sectors, 0, st.flush_ios, 0))


# -- writeback and recompression --------------------------------------------------------------

@_attr("backing_dev", 0o644)
def backing_dev_show(dev: ZramCore) -> str:
    return f"{dev.backing.path}\n" if dev.backing else "none\n"


@_attr("backing_dev", 0o644)
def backing_dev_store(dev: ZramCore, value: str) -> None:
    path = value[:-1] if value.endswith("\n") else value
    dev.set_backing(path)


@_attr("writeback", 0o200)
def writeback_store_job(dev: ZramCore, value: str) -> tuple[Job[None], Any]:
    job = WritebackJob.parse(dev, value)
    return job.steps(), job


@_attr("writeback_limit", 0o644)
def writeback_limit_show(dev: ZramCore) -> str:
    return f"{dev.settings.bd_wb_limit}\n"


@_attr("writeback_limit", 0o644)
def writeback_limit_store(dev: ZramCore, value: str) -> None:
    dev.set_writeback_limit(kparse.kstrtoull(value))


@_attr("writeback_limit_enable", 0o644)
def writeback_limit_enable_show(dev: ZramCore) -> str:
    return f"{int(dev.settings.wb_limit_enable)}\n"


@_attr("writeback_limit_enable", 0o644)
def writeback_limit_enable_store(dev: ZramCore, value: str) -> None:
    dev.set_writeback_limit_enable(kparse.kstrtoull(value) != 0)


@_attr("writeback_batch_size", 0o644)
def writeback_batch_size_show(dev: ZramCore) -> str:
    return f"{dev.settings.wb_batch_size}\n"


@_attr("writeback_batch_size", 0o644)
def writeback_batch_size_store(dev: ZramCore, value: str) -> None:
    size = kparse.kstrtouint(value)
    if not size:
        raise _einval("writeback_batch_size must be at least 1")
    dev.set_writeback_batch_size(size)


@_attr("compressed_writeback", 0o644)
def compressed_writeback_show(dev: ZramCore) -> str:
    return f"{int(dev.settings.compressed_wb)}\n"


@_attr("compressed_writeback", 0o644)
def compressed_writeback_store(dev: ZramCore, value: str) -> None:
    dev.set_compressed_writeback(kparse.kstrtobool(value))


@_attr("bd_stat", 0o444)
def bd_stat_show(dev: ZramCore) -> str:
    st = dev.stats
    used = dev.backing.used if dev.backing else 0
    return "%8u %8u %8u\n" % (used, st.bd_reads, st.bd_writes)


@_attr("recompress", 0o200)
def recompress_store_job(dev: ZramCore, value: str) -> tuple[Job[None], Any]:
    job = RecompressJob.parse(dev, value)
    return job.steps(), job
