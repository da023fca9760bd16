"""Writeback, recompression and compaction in the running daemon: the work
happens while NBD clients are served, against real backing files (a slow or
failing FUSE file, a really full tmpfs), and against a reference model."""

import errno
import os
import random
import socket
import shutil
import subprocess
import threading
import time

import pytest

from uzram.control import encode, read_reply

from ..daemon import uzramd
from ..faultyfs import faulty_file
from ..nbdclient import NBDClient
from ..zram import pages

PAGE = 4096
MiB = 1 << 20


def sparse_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    os.chmod(path, 0o600)  # a backing file must be private
    return path


def store_with_progress(d, device, attr, value):
    """A control store with progress lines; returns (final reply, progress list)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.control_sock))
        s.sendall(encode({"cmd": "store", "device": device, "attr": attr, "value": value, "progress": True}))
        seen = []
        reply = read_reply(s.makefile("rb"),
                           lambda done, total, what: seen.append({"done": done, "total": total, "what": what}))
        return reply, seen


def fill(client, n, seed=1, first=0):
    rng = random.Random(seed)
    data = [pages.any_page(rng) if i % 4 else pages.incompressible(rng) for i in range(n)]
    for i in range(0, n, 32):
        client.pwrite((first + i) * PAGE, b"".join(data[i : i + 32]))
    return data


def bd(d, dev="zram0"):
    return [int(x) for x in d.show(dev, "bd_stat").split()]


def test_writeback_with_progress_and_reads_from_backing(tmp_path):
    backing = sparse_file(tmp_path / "backing.img", 64 * MiB)
    with uzramd(tmp_path / "d", devices=(f"zram0:backing_dev={backing},disksize=32M",)) as d:
        with NBDClient(d.nbd_sock, "zram0") as c:
            data = fill(c, 2048)
            d.store("zram0", "idle", "all")
            reply, progress = store_with_progress(d, "zram0", "writeback", "idle")
            assert reply["ok"], reply
            assert progress and progress[-1]["done"] == progress[-1]["total"] > 0
            assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
            written = bd(d)[2]
            assert written > 1000 and d.mm_stat()[2] < 4 * MiB
            got = b"".join(c.pread(i * PAGE, 64 * PAGE) for i in range(0, 2048, 64))
            assert got == b"".join(data)
            assert bd(d)[1] == written          # every written-back page came from the file
            # uzramctl drives the same attribute
            res = subprocess.run([os.sys.executable, "-m", "uzram.ctl", "--control", str(d.control_sock),
                                  "--writeback", "huge", "zram0"], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr


def test_nbd_keeps_serving_while_a_slow_writeback_runs(tmp_path):
    with faulty_file(tmp_path, 64 * MiB) as ff:
        with uzramd(tmp_path / "d", devices=(f"zram0:backing_dev={ff.path},writeback_batch_size=8,disksize=16M",)) as d:
            with NBDClient(d.nbd_sock, "zram0") as c:
                data = fill(c, 512)
                ff.control("delay 0.3")               # each backing write takes 300 ms
                done = threading.Event()
                result = {}

                def writeback():
                    result["reply"] = d.request(cmd="store", device="zram0", attr="writeback", value="page_indexes=0-511")
                    done.set()
                t = threading.Thread(target=writeback)
                t.start()
                served_during = 0
                latencies = []
                while not done.is_set():
                    t0 = time.monotonic()
                    i = random.randrange(512)
                    assert c.pread(i * PAGE, PAGE) == data[i]
                    latencies.append(time.monotonic() - t0)
                    if not done.is_set():
                        served_during += 1
                t.join()
                assert result["reply"]["ok"], result
                assert served_during > 20
                # reads during the writeback cancelled some slots (kernel PP semantics): data is intact either way
                assert b"".join(c.pread(i * PAGE, PAGE) for i in range(512)) == b"".join(data)
                print(f"served {served_during} reads during writeback, median latency "
                      f"{sorted(latencies)[len(latencies) // 2] * 1e3:.2f} ms")


def test_writeback_outlives_its_control_client(tmp_path):
    """Device work runs in the daemon's own nursery: the client that asked
    for a writeback (with progress) hangs up at once, and the writeback
    still writes every page, as a write(2) to sysfs would."""
    with faulty_file(tmp_path, 64 * MiB) as ff:
        with uzramd(tmp_path / "d", devices=(f"zram0:backing_dev={ff.path},writeback_batch_size=8,disksize=16M",)) as d:
            with NBDClient(d.nbd_sock, "zram0") as c:
                data = fill(c, 256)
            huge = d.mm_stat()[7]
            ff.control("delay 0.2")
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(d.control_sock))
                s.sendall(encode({"cmd": "store", "device": "zram0", "attr": "writeback", "value": "huge",
                                  "progress": True}))
            deadline = time.monotonic() + 60
            while bd(d)[2] < huge and time.monotonic() < deadline:
                time.sleep(0.05)
            ff.control("delay 0")
            assert bd(d)[2] == huge > 0
            assert d.alive()
            with NBDClient(d.nbd_sock, "zram0") as c:
                assert b"".join(c.pread(i * PAGE, PAGE) for i in range(256)) == b"".join(data)


def test_failing_backing_file_loses_nothing(tmp_path):
    with faulty_file(tmp_path, 64 * MiB) as ff:
        with uzramd(tmp_path / "d", devices=(f"zram0:backing_dev={ff.path},disksize=16M",)) as d:
            with NBDClient(d.nbd_sock, "zram0") as c:
                data = fill(c, 256)
                d.store("zram0", "writeback_limit_enable", "1")
                d.store("zram0", "writeback_limit", "1000")
                ff.control(f"fail {errno.EIO}")
                reply = d.request(cmd="store", device="zram0", attr="writeback", value="page_indexes=0-255")
                assert (reply["ok"], reply.get("errno")) == (False, errno.EIO)
                assert d.show("zram0", "writeback_limit") == "1000\n"   # refunded
                assert bd(d) == [0, 0, 0]
                assert b"".join(c.pread(i * PAGE, PAGE) for i in range(256)) == b"".join(data)
                # written-back pages whose reads fail: an I/O error, and the daemon keeps serving
                ff.control("ok")
                assert d.request(cmd="store", device="zram0", attr="writeback", value="page_indexes=0-15")["ok"]
                ff.control(f"fail {errno.EIO}")
                wb = next(i for i in range(16) if data[i][8:] != data[i][:-8])
                with pytest.raises(OSError) as e:
                    c.pread(wb * PAGE, PAGE)
                assert e.value.errno == errno.EIO
                assert int(d.show("zram0", "io_stat").split()[0]) >= 1   # failed_reads
                ff.control("ok")
                assert c.pread(wb * PAGE, PAGE) == data[wb]
                assert c.pread(100 * PAGE, PAGE) == data[100]


def test_really_full_filesystem_gives_enospc(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount (util-linux) is not installed")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        backing = sparse_file(mnt / "backing.img", 8 * MiB)   # sparse: bigger than the filesystem
        with uzramd(tmp_path / "d", devices=(f"zram0:backing_dev={backing},disksize=16M",)) as d:
            with NBDClient(d.nbd_sock, "zram0") as c:
                data = fill(c, 512)
                reply = d.request(cmd="store", device="zram0", attr="writeback", value="page_indexes=0-511")
                assert (reply["ok"], reply.get("errno")) == (False, errno.ENOSPC)
                assert 0 < bd(d)[0] <= 64
                assert b"".join(c.pread(i * PAGE, PAGE) for i in range(512)) == b"".join(data)
                c.trim(0, 512 * PAGE)
                assert bd(d)[0] == 0
                assert os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize >= 200 * 1024  # holes punched
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_reset_during_writeback_waits_and_leaks_nothing(tmp_path):
    with faulty_file(tmp_path, 64 * MiB) as ff:
        with uzramd(tmp_path / "d", devices=(f"zram0:backing_dev={ff.path},writeback_batch_size=4,disksize=16M",)) as d:
            with NBDClient(d.nbd_sock, "zram0") as c:
                fill(c, 256)
                # a client attached: reset refused, writeback unaffected
                assert d.request(cmd="store", device="zram0", attr="reset", value="1")["errno"] == errno.EBUSY
            ff.control("delay 1")                      # the first thread hop takes a second
            result = {}
            writes = ff.counters()["writes"]
            t = threading.Thread(target=lambda: result.update(
                d.request(cmd="store", device="zram0", attr="writeback", value="page_indexes=0-255")))
            t.start()
            deadline = time.monotonic() + 30
            while ff.counters()["writes"] == writes:   # the writeback is inside its first block write
                assert time.monotonic() < deadline, "the writeback did not start"
                time.sleep(0.01)
            assert d.request(cmd="store", device="zram0", attr="reset", value="1")["ok"]
            t.join()
            assert result.get("errno") == errno.ECANCELED
            assert d.show("zram0", "disksize") == "0\n"
            assert d.show("zram0", "backing_dev") == "none\n"
            assert d.mm_stat() == [0] * 9
            assert d.alive()


def test_hot_remove_waits_for_recompression(tmp_path):
    with uzramd(tmp_path / "d", devices=("zram0:disksize=4M", "zram1:recomp_algorithm=algo=zstd,disksize=64M")) as d:
        with NBDClient(d.nbd_sock, "zram1") as c:
            fill(c, 4096)
        t = threading.Thread(target=lambda: d.request(cmd="store", device="zram1", attr="recompress", value=""))
        t.start()
        reply = d.request(cmd="hot_remove", value="1")
        t.join()
        assert reply["ok"]
        assert d.request(cmd="devices")["devices"] == ["zram0"]


def test_concurrent_clients_and_post_processing_against_a_model(tmp_path):
    """Four NBD clients on disjoint regions while another thread keeps running
    idle marking, writeback of every mode, recompression and compaction."""
    backing = sparse_file(tmp_path / "backing.img", 32 * MiB)
    regions = 4
    per = 512
    with uzramd(tmp_path / "d", devices=(
            f"zram0:recomp_algorithm=algo=zstd,backing_dev={backing},disksize={regions * per * PAGE}",)) as d:
        models = [dict() for _ in range(regions)]
        errors = []
        stop = threading.Event()

        def client(k):
            rng = random.Random(k)
            base = k * per
            try:
                with NBDClient(d.nbd_sock, "zram0") as c:
                    for _ in range(600):
                        i = rng.randrange(per)
                        op = rng.random()
                        if op < 0.5:
                            n = rng.randint(1, 4)
                            n = min(n, per - i)
                            data = b"".join(pages.any_page(rng) for _ in range(n))
                            c.pwrite((base + i) * PAGE, data)
                            for j in range(n):
                                models[k][i + j] = data[j * PAGE : (j + 1) * PAGE]
                        elif op < 0.6:
                            off, n = rng.randrange(PAGE), rng.randint(1, 3000)
                            cur = bytearray(models[k].get(i, bytes(PAGE)))
                            n = min(n, PAGE - off)
                            patch = rng.randbytes(n)
                            c.pwrite((base + i) * PAGE + off, patch)
                            cur[off : off + n] = patch
                            models[k][i] = bytes(cur)
                        elif op < 0.7:
                            c.trim((base + i) * PAGE, PAGE)
                            models[k][i] = bytes(PAGE)
                        else:
                            assert c.pread((base + i) * PAGE, PAGE) == models[k].get(i, bytes(PAGE)), (k, i)
            except Exception as e:  # reported below
                errors.append(e)

        def maintenance():
            rng = random.Random(99)
            ops = [("idle", "all"), ("writeback", "idle"), ("writeback", "huge"), ("writeback", "huge_idle"),
                   ("recompress", "type=idle"), ("writeback", "incompressible"), ("compact", "1"),
                   ("writeback", "page_indexes=0-2047"), ("idle", "0")]
            while not stop.is_set():
                attr, value = rng.choice(ops)
                reply = d.request(cmd="store", device="zram0", attr=attr, value=value)
                if not reply["ok"] and reply["errno"] not in (errno.ENOSPC,):
                    errors.append(AssertionError(f"{attr}={value}: {reply}"))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(regions)]
        m = threading.Thread(target=maintenance)
        m.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        m.join()
        assert not errors, errors
        with NBDClient(d.nbd_sock, "zram0") as c:
            for k in range(regions):
                for i in range(per):
                    assert c.pread((k * per + i) * PAGE, PAGE) == models[k].get(i, bytes(PAGE)), (k, i)
        st = d.mm_stat()
        assert int(d.show("zram0", "bd_stat").split()[2]) > 0   # writeback really happened
        assert st[0] > 0
