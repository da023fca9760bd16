"""Instrumentation injected into a uzramd from outside (bench/tail.py, bench/rss.py).

Python imports ``sitecustomize`` at start from any directory on PYTHONPATH;
with this directory there and ``UZRAM_PROBE`` naming an output file, the
daemon:

- times every garbage collection (``gc.callbacks``): generation, start and
  duration, kept in memory;
- on SIGUSR2 starts a measurement window: forgets the collections so far
  and applies ``UZRAM_PROBE_GC``: ``freeze`` (a full collection, then
  ``gc.freeze()``: everything alive stays out of later collections),
  ``disable`` (``gc.disable()``), or nothing;
- on SIGUSR1 writes to ``UZRAM_PROBE`` a JSON snapshot: the collections of
  the window, ``sys.getallocatedblocks()``, glibc's ``mallinfo2()``, the
  objects the collector tracks by type (the 25 most numerous, and the 25
  taking most bytes by ``sys.getsizeof``), and the pools' and slot tables'
  own counters (found among those objects, so nothing in uzram is changed),
  and, last, how long a full collection takes and what ``malloc_trim(0)``
  then gives back (RssAnon before - after): the snapshot changes the heap.

With ``UZRAM_PROBE_LAZY`` (module names, comma-separated) those modules
are imported lazily, loaded only when first used: what making an import
lazy would save. The snapshot says whether they were loaded.

The handlers run in the daemon's main thread between two bytecodes, as any
Python signal handler: a snapshot stalls the daemon while it walks the heap.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import time
import types
from types import FrameType
from typing import Any

OUT = os.environ.get("UZRAM_PROBE", "")
GC_MODE = os.environ.get("UZRAM_PROBE_GC", "")
LAZY = [n for n in os.environ.get("UZRAM_PROBE_LAZY", "").split(",") if n]

_collections: list[tuple[int, float, float]] = []   # generation, start, seconds
_started: list[float] = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    now = time.perf_counter()
    if phase == "start":
        _started[0] = now
    else:
        _collections.append((info["generation"], _started[0], now - _started[0]))


def _resident(mm: Any, addr: int = 0, length: int = 0) -> int:
    """Bytes in RAM (mincore) of an mmap object, or of ``length`` bytes at ``addr``."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if mm is not None:
        length = len(mm)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    pages = (length + 4095) // 4096
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
        return -1
    return sum(b & 1 for b in vec) * 4096


def _pools() -> dict[str, int]:
    """The counters of every ZsPool and SlotTable alive, summed."""
    out = collections.Counter[str]()
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name == "ZsPool":
            out["pools"] += 1
            out["pool_pages"] += obj.pages_allocated
            out["pool_objects"] += obj.objects
            out["pool_chunks"] += len(obj._chunks)
            out["pool_chunk_resident_bytes"] += sum(
                _resident(None, c.arena.base + c.off, len(c.mv)) for c in obj._chunks)
            out["pool_zspage_slots"] += len(obj._zcls)
            out["pool_live_zspages"] += sum(1 for c in obj._zcls if c >= 0)
            out["pool_handle_table_bytes"] += obj._loc.buffer_info()[1] * obj._loc.itemsize
            out["pool_frame_tuples"] += sum(len(v) for v in obj._frames.values())
            out["pool_warm_tuples"] += sum(len(v) for v in obj._warm.values())
        elif name == "ZramDevice":
            table = getattr(obj.disk, "table", None)
            if table is not None:
                out["slot_tables"] += 1
                out["slot_pages"] += table.nr_pages
                out["slot_table_bytes"] += sum(len(m) for m in table._maps)
                out["slot_table_resident_bytes"] += sum(_resident(m) for m in table._maps)
    return dict(out)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, int]:
    """glibc's mallinfo2(): ``arena`` bytes of heap, ``uordblks`` in use,
    ``fordblks`` free (kept, not trimmed), ``hblkhd`` in mmapped blocks."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {f[0]: int(getattr(info, f[0])) for f in _MallInfo2._fields_}


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _snapshot(signum: int, frame: FrameType | None) -> None:
    t0 = time.perf_counter()
    objs = gc.get_objects()
    by_type = collections.Counter(type(o).__name__ for o in objs)
    size_by_type = collections.Counter[str]()
    for o in objs:
        size_by_type[type(o).__name__] += sys.getsizeof(o)
    del objs
    snap: dict[str, Any] = {
        "collections": _collections[:],
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_tracked": sum(by_type.values()),
        "by_type": by_type.most_common(25),
        "bytes_by_type": size_by_type.most_common(25),
        "malloc": _mallinfo(),
        "gc_counts": gc.get_count(),
        "gc_threshold": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "pools": _pools(),
        "modules": {name: _loaded(name) for name in ("numpy", *LAZY)},
    }
    snap["snapshot_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gc.collect()
    snap["full_collection_ms"] = (time.perf_counter() - t0) * 1e3
    before = _rss_anon()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    snap["malloc_trim_freed"] = before - _rss_anon()
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        json.dump(snap, f)
    os.replace(tmp, OUT)


def _window(signum: int, frame: FrameType | None) -> None:
    if GC_MODE == "freeze":
        gc.collect()
        gc.freeze()
    elif GC_MODE == "disable":
        gc.disable()
    _collections.clear()


class _Deferred(importlib.abc.Loader):
    """A module whose real import waits for its first missing attribute
    (a module ``__getattr__``): importing it again, or reading ``__spec__``,
    does not load it (as importlib.util.LazyLoader would in Python 3.11)."""

    def __init__(self, finder: _LazyFinder) -> None:
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__

        def load(attr: str) -> Any:
            del module.__dict__["__getattr__"]
            del sys.modules[name]
            self.finder.busy.add(name)
            try:
                real = importlib.import_module(name)
            finally:
                self.finder.busy.discard(name)
            module.__dict__.update(real.__dict__)
            sys.modules[name] = module
            _used.add(name)
            return getattr(real, attr)
        module.__dict__["__getattr__"] = load


class _LazyFinder(importlib.abc.MetaPathFinder):
    """Imports the modules named in ``UZRAM_PROBE_LAZY`` lazily."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names or fullname in self.busy:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Deferred(self))


_used: set[str] = set()


def _loaded(name: str) -> str:
    """``name``'s state: not imported, lazy (imported, never used) or loaded."""
    if name not in sys.modules:
        return "not imported"
    return "loaded" if name in _used or name not in LAZY else "lazy, never used"


if OUT:
    if LAZY:
        sys.meta_path.insert(0, _LazyFinder(set(LAZY)))
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR1, _snapshot)
    signal.signal(signal.SIGUSR2, _window)
