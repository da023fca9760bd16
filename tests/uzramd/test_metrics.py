"""Prometheus metrics: a real scrape over HTTP (TCP and UNIX socket) and
uzramctl --metrics, parsed with prometheus-client's text parser, after real
NBD clients did I/O."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from uzram.daemon import hardening

from ..daemon import uzramd

MiB = 1 << 20


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """{family name: {sorted label items (plus the sample name): value}}."""
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(fam.name, {})[(s.name,) + tuple(sorted(s.labels.items()))] = s.value
    return out


def sample(m: dict, family: str, name: str | None = None, **labels: str) -> float:
    return m[family][((name or family),) + tuple(sorted(labels.items()))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def get(conn: http.client.HTTPConnection, path: str = "/metrics") -> tuple[int, str, str]:
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return r.status, r.getheader("Content-Type") or "", body


def do_io(uri: str, tmp_path) -> None:
    data = tmp_path / "data.img"
    data.write_bytes(os.urandom(MiB) + bytes(MiB) + b"abcd" * (MiB // 4))
    subprocess.run(["nbdcopy", str(data), uri], check=True)                  # 3 MiB written
    subprocess.run(["nbdcopy", uri, "null:"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "discard 4M 1M", "-c", "flush", uri], check=True,
                   capture_output=True)


def test_scrape_over_tcp(tmp_path):
    port = free_port()
    with uzramd(tmp_path / "d", "--metrics", f"tcp:{port}", "--busy-poll", "200",
                devices=("zram0:disksize=16M", "zram1:comp_algorithm=zstd,disksize=8M", "zram2")) as d:
        do_io(d.uri("zram0"), tmp_path)
        status, ctype, body = get(http.client.HTTPConnection("127.0.0.1", port))
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        m = parse(body)
        mm = d.mm_stat("zram0")
        assert sample(m, "uzram_mm_stat_orig_data_size_bytes", device="zram0") == mm[0]
        assert sample(m, "uzram_mm_stat_compr_data_size_bytes", device="zram0") == mm[1]
        assert sample(m, "uzram_mm_stat_same_pages", device="zram0") == mm[5]
        assert sample(m, "uzram_disksize_bytes", device="zram1") == 8 * MiB
        assert sample(m, "uzram_initstate", device="zram2") == 0
        stat = [int(x) for x in d.show("zram0", "stat").split()]
        assert sample(m, "uzram_stat_write_sectors", device="zram0") == stat[6] >= 3 * MiB // 512
        assert sample(m, "uzram_stat_discard_sectors", device="zram0") == stat[13] == MiB // 512
        assert sample(m, "uzram_io_stat_failed_reads", "uzram_io_stat_failed_reads_total", device="zram0") == 0
        assert sample(m, "uzram_bd_stat_bd_count", device="zram0") == 0
        # NBD: two nbdcopy runs and one qemu-io, by export and operation
        assert sample(m, "uzram_nbd_export_connections", "uzram_nbd_export_connections_total",
                      export="zram0") >= 3
        assert sample(m, "uzram_nbd_export_connections_current", export="zram0") == 0
        assert sample(m, "uzram_nbd_request_bytes", "uzram_nbd_request_bytes_total",
                      export="zram0", op="write") >= 2 * MiB  # nbdcopy may zero the zero MiB
        # nbdcopy reads what block_status says is allocated
        assert sample(m, "uzram_nbd_request_bytes", "uzram_nbd_request_bytes_total",
                      export="zram0", op="read") >= 2 * MiB
        assert sample(m, "uzram_nbd_requests", "uzram_nbd_requests_total", export="zram0", op="block_status") > 0
        assert sample(m, "uzram_nbd_request_bytes", "uzram_nbd_request_bytes_total",
                      export="zram0", op="trim") == MiB
        for op in ("read", "write", "flush"):
            n = sample(m, "uzram_nbd_requests", "uzram_nbd_requests_total", export="zram0", op=op)
            assert n > 0
            h = "uzram_nbd_request_duration_seconds"
            assert sample(m, h, f"{h}_count", export="zram0", op=op) == n
            assert sample(m, h, f"{h}_bucket", export="zram0", op=op, le="+Inf") == n
            assert sample(m, h, f"{h}_sum", export="zram0", op=op) > 0
        assert sample(m, "uzram_nbd_request_errors", "uzram_nbd_request_errors_total",
                      export="zram0", op="read") == 0
        assert get(http.client.HTTPConnection("127.0.0.1", port), "/other")[0] == 404
        # busy polling: its budget in force, and what it did (nbdcopy keeps
        # 16 requests in flight: polls there are few or none)
        assert sample(m, "uzram_nbd_busy_poll_seconds") == hardening.busy_poll_seconds(200, False)
        polls = {r: sample(m, "uzram_nbd_busy_polls", "uzram_nbd_busy_polls_total", result=r)
                 for r in ("request", "miss")}
        assert all(v >= 0 for v in polls.values())


def test_scrape_over_a_unix_socket_and_uzramctl(tmp_path):
    sock = tmp_path / "metrics.sock"
    with uzramd(tmp_path / "d", "--metrics", f"unix:{sock}", devices=("zram0:disksize=16M",)) as d:
        subprocess.run(["nbdinfo", d.uri("zram0")], check=True, capture_output=True)
        status, _, body = get(UnixHTTPConnection(str(sock)))
        assert status == 200
        m = parse(body)
        assert sample(m, "uzram_nbd_export_connections", "uzram_nbd_export_connections_total",
                      export="zram0") == 1
        r = subprocess.run([sys.executable, "-m", "uzram.ctl", "--control", str(d.control_sock), "--metrics"],
                           capture_output=True, text=True, check=True)
        assert set(parse(r.stdout)) == set(m)
        bad = subprocess.run([sys.executable, "-m", "uzram.ctl", "--control", str(d.control_sock),
                              "--metrics", "zram0"], capture_output=True, text=True)
        assert bad.returncode == 2 and "does not take a <device>" in bad.stderr
    assert not sock.exists()


@pytest.mark.parametrize("addr", ["tcp:notaport", "udp:1"])
def test_bad_metrics_address(tmp_path, addr):
    r = subprocess.run([sys.executable, "-m", "uzram.daemon", "--metrics", addr,
                        "--control", str(tmp_path / "c.sock")], capture_output=True, text=True)
    assert r.returncode == 2 and ("listen address" in r.stderr or "port" in r.stderr)


def test_metered_export_keeps_the_ordering_granularity() -> None:
    """The NBD server orders overlapping requests by the export's granularity:
    wrapping the zram export must not turn its 4 KiB pages into bytes."""
    from uzram.daemon.export import ZramExport
    from uzram.daemon.metrics import ExportStats, MeteredExport
    from uzram.zram import ZramDevice

    assert MeteredExport(ZramExport(ZramDevice("zram0")), ExportStats()).ordering_granularity == 4096
