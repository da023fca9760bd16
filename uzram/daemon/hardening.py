"""Keeping a swap server alive under the memory pressure it relieves.

Each measure is best effort: it needs privileges the daemon may not have, and
its absence is logged, not fatal. Locking is taken only with ``--swap``
(it keeps memory a daemon serving other clients would give back). Which
are in force is kept in :data:`STATE`: logged at start as one ``hardening``
event, and returned by the control socket's ``hardening`` command.

- ``locked``: ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`` after a
  warm-up that imports and runs the request path (:func:`preload`): every
  page resident then (the code and data the daemon uses) stays resident, and
  later pages are locked as they are touched. Plain ``MCL_CURRENT`` would
  populate every mapping whole, e.g. numpy's OpenBLAS buffers (over 100 MB
  locked for nothing). Needs CAP_IPC_LOCK, or an unlimited RLIMIT_MEMLOCK
  (raised so with CAP_SYS_RESOURCE).
- ``io_flusher``: PR_SET_IO_FLUSHER (CAP_SYS_RESOURCE): reclaim run on the
  daemon's behalf does no I/O, so it never waits on its own device. Except
  the pool's feed thread (:func:`allow_reclaim_io`): with no I/O its reclaim
  could free no anonymous page, so it grew the pool only when others left
  free pages above the watermark, which under global pressure they do not.
- ``oom_protected``: oom_score_adj -1000 (CAP_SYS_RESOURCE).
- ``realtime``: SCHED_RR at priority 1 (CAP_SYS_NICE), with ``--swap``. A
  real-time task's allocations may go a quarter below the min watermark
  (the kernel's ALLOC_HARDER for rt tasks): when the machine is out of free
  pages, the serving thread can still get the socket buffers to answer the
  swap-outs that free memory (without it, its ``sendmsg`` waited in reclaim
  that waited for those very answers). The pool's feed thread is real-time
  too: only it can grow the pool, and a stored swap-out frees more than it
  takes. The thread waits in
  ``epoll`` when idle, and the kernel caps real-time tasks at 95% of a CPU.

With ``--swap`` the reply also carries the machine's ``vm`` settings that
swap on uzram in the same machine needs (:func:`vm_settings`, read afresh
for each reply: ``systemd/uzram-swap`` raises them after uzramd started).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource

from .logs import event

log = logging.getLogger("uzram.daemon")

PR_SET_IO_FLUSHER = 57
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_TOP_PAD = -2
M_ARENA_MAX = -8
HEAP_CUSHION = 16 << 20
"""Heap faulted in (and locked) at start under --swap: Python objects made
while swap-outs are stored (zspages, handles) come from memory already there."""
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
CAP_IPC_LOCK, CAP_SYS_RESOURCE = 14, 24

VM_NEEDS = {"min_free_kbytes": 16384, "watermark_scale_factor": 500}
"""What ``systemd/uzram-swap`` raises the kernel's settings to: the replies
to swap-outs need socket buffers, and with the kernel's defaults a guest
swapping on uzram under global pressure hung (README: Swap inside a VM)."""
VM_SYSCTL = "/proc/sys/vm"

STATE: dict[str, object] = {}
"""The measures in force (filled by :func:`apply`)."""

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None


def tune_malloc() -> None:
    """Keep freed heap memory instead of trimming it after every large free:
    otherwise each large request buffer is faulted in afresh (128 KiB reads get
    3x slower), and the I/O path keeps needing new pages."""
    if _libc is not None:
        _libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
        _libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        # worker threads (backing-file I/O) share one arena instead of
        # keeping up to 8 per core of their own, each holding freed memory
        _libc.mallopt(M_ARENA_MAX, 1)


def set_io_flusher() -> bool:
    """PR_SET_IO_FLUSHER: reclaim run on our behalf must not recurse into I/O
    (Linux 5.6+, CAP_SYS_RESOURCE)."""
    if _libc is None or _libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        return False
    return True


def allow_reclaim_io() -> bool:
    """Undo PR_SET_IO_FLUSHER for the calling thread only (threads inherit
    it): the pool's feed, whose reclaim may then swap out and so win the
    pages it frees. It may wait on swap-outs; the serving thread never
    waits on it (a store that finds no frame fails with ENOMEM)."""
    return _libc is not None and _libc.prctl(PR_SET_IO_FLUSHER, 0, 0, 0, 0) == 0


def capabilities() -> int:
    """The effective capability set (CapEff of /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def lock_memory() -> str:
    """mlockall as described above; returns "" or why it is not in force.

    MCL_FUTURE is taken only when the limit cannot make later mappings fail
    (CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK)."""
    if _libc is None:
        return "no libc"
    if not capabilities() >> CAP_IPC_LOCK & 1:
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (OSError, ValueError):
            return "needs CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK (LimitMEMLOCK=infinity)"
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        e = ctypes.get_errno()
        _libc.munlockall()
        return f"mlockall: {os.strerror(e)}"
    return ""


def cushion(size: int = HEAP_CUSHION) -> bool:
    """Grow malloc's heap by ``size``, touch it, and free it without trimming:
    later allocations reuse these (locked) pages instead of faulting. Python
    allocates through malloc under --swap (``PYTHONMALLOC=malloc``, set by
    ``uzram/daemon/__main__.py``): its own small-object allocator maps a new
    1 MiB arena whenever its arenas are full and unmaps empty ones."""
    if _libc is None:
        return False
    _libc.mallopt(M_TOP_PAD, 1 << 20)
    _libc.malloc.restype = ctypes.c_void_p
    p = _libc.malloc(ctypes.c_size_t(size))
    if not p:
        return False
    ctypes.memset(p, 0, size)
    _libc.free(ctypes.c_void_p(p))
    return True


def preload() -> None:
    """Import and run once what the request path runs later (writes, reads,
    discards with every compressor on a scratch device), so that its code
    pages are resident, and then locked, before any pressure."""
    import importlib
    for name in ("uzram.zram.compressors", "uzram.zram.backing", "uzram.zram.postprocess",
                 "uzram.daemon.jobs", "uzram.daemon.export", "uzram.nbd.proto", "lz4.block",
                 "zstandard", "encodings.idna", "trio.to_thread"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from ..zram import ZramDevice
    from ..zram.compressors import KERNEL_ORDER
    page = bytes(range(256)) * 8 + bytes(2048)
    for alg in KERNEL_ORDER:
        dev = ZramDevice("warmup")
        try:
            dev.store("comp_algorithm", alg)
        except OSError:
            continue
        dev.store("disksize", "1M")
        for i in range(16):
            dev.write(i * 4096, page if i % 2 else bytes(4096), False)
        dev.write(64 << 10, page * 4, False)
        dev.read_chunks(0, 128 << 10)
        dev.discard(0, 64 << 10)
        dev.reset()
    from ..zram.backing import ALIGNED
    ALIGNED.prepare()
    try:
        warm_jobs(page)
    except (OSError, ValueError):   # best effort: the daemon serves without it
        pass


def warm_jobs(page: bytes) -> None:
    """Run the jobs once (idle marking, recompression, compaction, writeback
    to a scratch backing file in $TMPDIR and reading it back): their code (numpy's
    too) is then resident and locked, so a writeback asked for under
    pressure does not fault it in on the thread that serves NBD."""
    import tempfile

    from ..zram import ZramDevice
    from ..zram.device import PendingRead
    with tempfile.TemporaryDirectory(prefix="uzramd-warmup-") as tmp:
        path = os.path.join(tmp, "backing")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, 1 << 20)
        finally:
            os.close(fd)
        dev = ZramDevice("warmup")
        dev.store("backing_dev", path)
        try:
            dev.store("recomp_algorithm", "algo=zstd priority=1")
        except OSError:
            pass
        dev.store("disksize", "1M")
        noise = os.urandom(4096)
        for i in range(32):
            dev.write(i * 4096, (page, noise, bytes(4096))[i % 3], False)
        for attr, value in (("idle", "all"), ("recompress", "type=huge"), ("compact", "1"),
                            ("writeback", "huge"), ("writeback", "idle")):
            try:
                dev.store(attr, value)
            except OSError:
                pass
        chunks = dev.read_chunks(0, 128 << 10)
        if isinstance(chunks, PendingRead) and dev.backing is not None:
            dev.finish_read(chunks, dev.backing.read_blocks(chunks.blocks))
        dev.reset()


def set_realtime() -> str:
    """SCHED_RR priority 1 for this thread and the threads it starts later
    (unless started real-time already: systemd's CPUSchedulingPolicy);
    returns "" or why not."""
    try:
        if os.sched_getscheduler(0) in (os.SCHED_RR, os.SCHED_FIFO):
            return ""
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (OSError, AttributeError) as e:
        return f"SCHED_RR: {getattr(e, 'strerror', None) or e} (needs CAP_SYS_NICE or RLIMIT_RTPRIO)"
    return ""


def busy_poll_seconds(usec: int, swap: bool) -> float:
    """The NBD server's busy polling, in seconds: none on one usable CPU
    (the client could not run meanwhile), nor for swap on this machine
    (``--swap``: the CPU is the guest's and reclaim's) or under a real-time
    policy (a spinning SCHED_RR thread would starve the client)."""
    if swap:
        return 0.0
    try:
        if len(os.sched_getaffinity(0)) < 2 or os.sched_getscheduler(0) in (os.SCHED_RR, os.SCHED_FIFO):
            return 0.0
    except (OSError, AttributeError):
        return 0.0
    return usec / 1e6


def protect_from_oom() -> bool:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Return free heap memory to the kernel (glibc's malloc_trim)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


def apply(lock: bool = True) -> dict[str, object]:
    """Take every measure permitted; log and return which are in force."""
    nofile = raise_fd_limit()
    tune_malloc()
    flusher = set_io_flusher()
    oom = protect_from_oom()
    heap = False
    rt_why = set_realtime() if lock else "not asked for (--swap)"
    if lock:
        preload()
        why = lock_memory()
        heap = cushion() if not why else False
    else:
        why = "not asked for (--swap)"
    caps = capabilities()
    STATE.clear()
    STATE.update(swap=lock, locked=not why, heap_cushion=HEAP_CUSHION if heap else 0,
                 pymalloc=os.environ.get("PYTHONMALLOC", "pymalloc"), io_flusher=flusher, oom_protected=oom,
                 cap_ipc_lock=bool(caps >> CAP_IPC_LOCK & 1),
                 cap_sys_resource=bool(caps >> CAP_SYS_RESOURCE & 1), uid=os.geteuid(), nofile=nofile)
    STATE["realtime"] = not rt_why
    if why:
        STATE["not_locked"] = why
    if rt_why:
        STATE["not_realtime"] = rt_why
    event(log, logging.WARNING if (why or rt_why) and lock else logging.INFO, "hardening", **report())
    return STATE


def vm_settings(root: str = VM_SYSCTL) -> dict[str, object]:
    """``vm_<name>`` for each of VM_NEEDS as the kernel has it now (None if
    unreadable), and ``vm_short`` when any is below what swap needs: what is
    short, and what to do."""
    out: dict[str, object] = {}
    short = []
    for name, need in VM_NEEDS.items():
        try:
            with open(os.path.join(root, name)) as f:
                value: int | None = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            value = None
        out[f"vm_{name}"] = value
        if value is not None and value < need:
            short.append(f"vm.{name} {value} < {need}")
    if short:
        out["vm_short"] = (", ".join(short) + ": swap on uzram in this machine can hang under memory pressure; "
                           "`systemd/uzram-swap start` raises " +
                           " and ".join(f"vm.{n} to {v}" for n, v in VM_NEEDS.items()) + " (README: Swap inside a VM)")
    return out


PF_MEMALLOC_NOIO = 0x80000
"""The task flag PR_SET_IO_FLUSHER sets (field 9 of /proc/PID/task/TID/stat)."""
FEED_PREFIX = "uzram-feed"


def feeds_reclaiming(task_dir: str = "/proc/self/task") -> tuple[int, int]:
    """The pool feed threads of this process, and how many of them may swap
    out in their reclaim (no PF_MEMALLOC_NOIO): read from the kernel, not
    from what the feed asked for."""
    feeds = io = 0
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue   # the thread ended
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        if name.startswith(FEED_PREFIX):
            feeds += 1
            io += not int(stat.rsplit(")", 1)[1].split()[6]) & PF_MEMALLOC_NOIO
    return feeds, io


def report() -> dict[str, object]:
    """The ``hardening`` reply's measures: :data:`STATE`, and under ``--swap``
    the ``vm`` settings as they are now and the feed threads."""
    if not STATE.get("swap"):
        return dict(STATE)
    feeds, io = feeds_reclaiming()
    return {**STATE, **vm_settings(), "feeds": feeds, "feeds_reclaim_io": io}
