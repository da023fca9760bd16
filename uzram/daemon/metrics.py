"""Prometheus metrics: every device's sysfs statistics, and NBD connection and
request counters with latency histograms, in the Prometheus text format.

Request metrics come from ``MeteredRegistry``, which wraps each export the
NBD server looks up in a ``MeteredExport``: per request one monotonic clock
read before and after, and a few list increments. The text is served over
HTTP by ``serve`` (``uzramd --metrics ADDR``) and returned by the control
socket's ``metrics`` command (``uzramctl --metrics``).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, cast

import trio

from ..nbd.export import BlockExport, Buffer, ExportRegistry
from .logs import event

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("uzram.metrics")

OPS = ("read", "write", "trim", "write_zeroes", "flush", "cache", "block_status")
# latency bucket bounds in seconds (and in ns for the hot path)
BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1.0, 5.0)
_BOUNDS_NS = tuple(int(b * 1e9) for b in BUCKETS)
_now = perf_counter_ns
_bucket = bisect_left


class OpStats:
    """Counters of one operation on one export."""

    __slots__ = ("errors", "bytes", "sum_ns", "buckets")

    def __init__(self) -> None:
        self.errors = 0
        self.bytes = 0
        self.sum_ns = 0
        self.buckets = [0] * (len(BUCKETS) + 1)   # the last one is +Inf only

    @property
    def count(self) -> int:
        """Requests completed: every one lands in exactly one bucket."""
        return sum(self.buckets)

    def observe(self, ns: int, nbytes: int) -> None:
        self.bytes += nbytes
        self.sum_ns += ns
        self.buckets[_bucket(_BOUNDS_NS, ns)] += 1


class ExportStats:
    def __init__(self) -> None:
        self.connections = 0
        self.connections_total = 0
        self.ops = {op: OpStats() for op in OPS}


class MeteredExport:
    """A ``BlockExport`` that counts and times the requests of another."""

    read_only: bool
    ordering_granularity: int

    def __init__(self, inner: BlockExport, stats: ExportStats) -> None:
        self.inner = inner
        self.stats = stats
        self.read_only = inner.read_only
        self.ordering_granularity = getattr(inner, "ordering_granularity", 1)
        ops = stats.ops
        self._read, self._write = ops["read"], ops["write"]
        self._trim, self._zeroes = ops["trim"], ops["write_zeroes"]
        self._flush, self._cache, self._status = ops["flush"], ops["cache"], ops["block_status"]
        self._inner_read, self._inner_write = inner.read, inner.write

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def description(self) -> str:
        return self.inner.description

    def size(self) -> int:
        return self.inner.size()

    def attach(self) -> None:
        self.inner.attach()
        self.stats.connections += 1
        self.stats.connections_total += 1

    def detach(self) -> None:
        self.stats.connections -= 1
        self.inner.detach()

    # The data calls are written out (no shared helper, no *args): this is
    # the request path, where each Python call costs.
    def read(self, offset: int, length: int) -> list[Buffer] | Awaitable[list[Buffer]]:
        t0 = _now()
        try:
            r = self._inner_read(offset, length)
        except BaseException:
            self._read.errors += 1
            raise
        if type(r) is list:
            ns = _now() - t0
            st = self._read
            st.bytes += length
            st.sum_ns += ns
            st.buckets[_bucket(_BOUNDS_NS, ns)] += 1
            return r
        # type() is the cheapest test on the request path but does not narrow for mypy
        return self._finish(self._read, length, t0, cast("Awaitable[Any]", r))

    def write(self, offset: int, data: memoryview, fua: bool) -> None | Awaitable[None]:
        t0 = _now()
        try:
            r = self._inner_write(offset, data, fua)
        except BaseException:
            self._write.errors += 1
            raise
        if r is None:
            ns = _now() - t0
            st = self._write
            st.bytes += len(data)
            st.sum_ns += ns
            st.buckets[_bucket(_BOUNDS_NS, ns)] += 1
            return None
        return self._finish(self._write, len(data), t0, r)

    def _call(self, st: OpStats, nbytes: int, call: Callable[..., None | Awaitable[None]],
              *args: Any) -> None | Awaitable[None]:
        t0 = _now()
        try:
            r = call(*args)
        except BaseException:
            st.errors += 1
            raise
        if r is None:
            st.observe(_now() - t0, nbytes)
            return r
        return self._finish(st, nbytes, t0, r)

    async def _finish(self, st: OpStats, nbytes: int, t0: int, pending: Awaitable[Any]) -> Any:
        try:
            r = await pending
        except BaseException:
            st.errors += 1
            raise
        st.observe(_now() - t0, nbytes)
        return r

    def trim(self, offset: int, length: int) -> None | Awaitable[None]:
        return self._call(self._trim, length, self.inner.trim, offset, length)

    def write_zeroes(self, offset: int, length: int, may_trim: bool) -> None | Awaitable[None]:
        return self._call(self._zeroes, length, self.inner.write_zeroes, offset, length, may_trim)

    def flush(self) -> None | Awaitable[None]:
        return self._call(self._flush, 0, self.inner.flush)

    def cache(self, offset: int, length: int) -> None | Awaitable[None]:
        return self._call(self._cache, length, self.inner.cache, offset, length)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        st = self._status
        t0 = _now()
        try:
            r = self.inner.block_status(offset, length)
        except BaseException:
            st.errors += 1
            raise
        st.observe(_now() - t0, 0)
        return r


class MeteredRegistry:
    """An ``ExportRegistry`` whose exports are metered; statistics are kept
    by export name, so they survive a device being removed and added again."""

    def __init__(self, inner: ExportRegistry) -> None:
        self.inner = inner
        self.stats: dict[str, ExportStats] = {}
        self._wrapped: dict[int, tuple[BlockExport, MeteredExport]] = {}

    def lookup(self, name: str) -> MeteredExport | None:
        export = self.inner.lookup(name)
        if export is None:
            return None
        hit = self._wrapped.get(id(export))
        if hit is not None and hit[0] is export:
            return hit[1]
        stats = self.stats.setdefault(export.name, ExportStats())
        metered = MeteredExport(export, stats)
        self._wrapped[id(export)] = (export, metered)
        return metered

    def list(self) -> list[tuple[str, str]]:
        return self.inner.list()


# -- the text format -------------------------------------------------------------------

# (attribute, field names, kind: "gauge" | "counter", unit suffix)
_SYSFS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("mm_stat", ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max"),
     "gauge", "_bytes"),
    ("mm_stat", ("same_pages", "pages_compacted", "huge_pages", "huge_pages_since"), "gauge", ""),
    ("io_stat", ("failed_reads", "failed_writes", "invalid_io", "notify_free"), "counter", "_total"),
    ("bd_stat", ("bd_count", "bd_reads", "bd_writes"), "gauge", ""),
    ("stat", ("read_ios", "read_merges", "read_sectors", "read_ticks", "write_ios", "write_merges",
              "write_sectors", "write_ticks", "in_flight", "io_ticks", "time_in_queue", "discard_ios",
              "discard_merges", "discard_sectors", "discard_ticks", "flush_ios", "flush_ticks"),
     "gauge", ""),
)
_POSITIONS = {"mm_stat": {n: i for i, n in enumerate(
    ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
     "pages_compacted", "huge_pages", "huge_pages_since"))}}

_HELP = {
    "mm_stat": "zram mm_stat field", "io_stat": "zram io_stat field",
    "bd_stat": "zram bd_stat field (4 KiB pages on the backing device)",
    "stat": "block device stat field (/sys/block/zramN/stat)",
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        text = repr(float(value)) if isinstance(value, float) else str(value)
        self.lines.append(f"{name}{{{lab}}} {text}" if lab else f"{name} {text}")


def render(daemon: Daemon) -> str:
    """Every metric, in the Prometheus text exposition format (version 0.0.4)."""
    out = _Text()
    devices = daemon.registry.devices()
    shown: dict[tuple[str, str], list[int]] = {}
    for dev in devices:
        for attr in ("mm_stat", "io_stat", "bd_stat", "stat"):
            try:
                shown[dev.name, attr] = [int(x) for x in dev.show(attr).split()]
            except (OSError, ValueError):
                shown[dev.name, attr] = []
    out.family("uzram_disksize_bytes", "gauge", "zram disksize")
    for dev in devices:
        out.sample("uzram_disksize_bytes", {"device": dev.name}, int(dev.show("disksize")))
    out.family("uzram_initstate", "gauge", "1 when the device is initialised (disksize set)")
    for dev in devices:
        out.sample("uzram_initstate", {"device": dev.name}, int(dev.show("initstate")))
    order = {attr: names for attr, names, _, _ in _SYSFS if attr != "mm_stat"}
    order["mm_stat"] = tuple(_POSITIONS["mm_stat"])
    for attr, names, kind, suffix in _SYSFS:
        for field in names:
            name = f"uzram_{attr}_{field}{suffix}"
            out.family(name, kind, f"{_HELP[attr]} {field}")
            pos = order[attr].index(field)
            for dev in devices:
                values = shown[dev.name, attr]
                if pos < len(values):
                    out.sample(name, {"device": dev.name}, values[pos])
    _nbd(out, daemon)
    return "\n".join(out.lines) + "\n"


def _nbd(out: _Text, daemon: Daemon) -> None:
    out.family("uzram_nbd_connections_current", "gauge", "NBD connections open on the whole server")
    out.sample("uzram_nbd_connections_current", {}, daemon.nbd.connection_count)
    out.family("uzram_nbd_busy_poll_seconds", "gauge",
               "how long a client at queue depth 1 is polled for its next request (0: never)")
    out.sample("uzram_nbd_busy_poll_seconds", {}, daemon.nbd.config.busy_poll)
    out.family("uzram_nbd_busy_polls_total", "counter",
               "busy polls by outcome: a request received, or none in time (the reader then slept)")
    hits, misses = daemon.nbd.busy_polls()
    out.sample("uzram_nbd_busy_polls_total", {"result": "request"}, hits)
    out.sample("uzram_nbd_busy_polls_total", {"result": "miss"}, misses)
    reg = daemon.nbd.registry
    stats: dict[str, ExportStats] = reg.stats if isinstance(reg, MeteredRegistry) else {}
    items = sorted(stats.items())
    out.family("uzram_nbd_export_connections_current", "gauge", "NBD connections attached to an export")
    for name, st in items:
        out.sample("uzram_nbd_export_connections_current", {"export": name}, st.connections)
    out.family("uzram_nbd_export_connections_total", "counter", "NBD connections that attached to an export")
    for name, st in items:
        out.sample("uzram_nbd_export_connections_total", {"export": name}, st.connections_total)
    counters: tuple[tuple[str, str, Callable[[OpStats], int]], ...] = (
        ("uzram_nbd_requests_total", "NBD requests completed", lambda o: o.count),
        ("uzram_nbd_request_errors_total", "NBD requests that failed", lambda o: o.errors),
        ("uzram_nbd_request_bytes_total", "bytes of completed NBD requests", lambda o: o.bytes))
    for metric, help_text, get in counters:
        out.family(metric, "counter", help_text)
        for name, st in items:
            for op in OPS:
                out.sample(metric, {"export": name, "op": op}, get(st.ops[op]))
    hist = "uzram_nbd_request_duration_seconds"
    out.family(hist, "histogram", "NBD request latency in the export (to completion, without the socket)")
    for name, st in items:
        for op in OPS:
            o = st.ops[op]
            cumulative = 0
            for bound, n in zip(BUCKETS, o.buckets):
                cumulative += n
                out.sample(f"{hist}_bucket", {"export": name, "op": op, "le": repr(bound)}, cumulative)
            out.sample(f"{hist}_bucket", {"export": name, "op": op, "le": "+Inf"}, o.count)
            out.sample(f"{hist}_sum", {"export": name, "op": op}, o.sum_ns / 1e9)
            out.sample(f"{hist}_count", {"export": name, "op": op}, o.count)


# -- HTTP ------------------------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def serve(listen_sock: trio.socket.SocketType, daemon: Daemon, *,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A minimal HTTP/1.x server: GET /metrics (or /) answers the text; one
    request per connection."""
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            sock, _ = await listen_sock.accept()
            nursery.start_soon(_http_client, trio.SocketStream(sock), daemon)


async def _http_client(stream: trio.SocketStream, daemon: Daemon) -> None:
    buf = b""
    try:
        async with stream:
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in buf and b"\n\n" not in buf and len(buf) < 16384:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    buf += data
            parts = buf.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                status, body = "405 Method Not Allowed", b"use GET /metrics\n"
            elif parts[1].split(b"?")[0] not in (b"/metrics", b"/"):
                status, body = "404 Not Found", b"metrics are at /metrics\n"
            else:
                status, body = "200 OK", render(daemon).encode()
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            await stream.send_all(head + (b"" if parts[:1] == [b"HEAD"] else body))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        event(log, logging.DEBUG, "metrics client failed", error=str(e))
