"""uzramd with zram devices, driven by real NBD clients from Debian."""

import errno
import json
import os
import random
import shutil
import subprocess

import pytest

from ..daemon import uzramd
from ..zram import pages as pagegen

pytestmark = pytest.mark.interop
PAGE = 4096
MiB = 1 << 20


def need(*tools):
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed (scripts/setup installs it as root)")


def nbdsh_cmd() -> list[str]:
    """nbdsh under Debian's python3 (the libnbd bindings live only there)."""
    need("nbdsh")
    if subprocess.run(["/usr/bin/python3", "-c", "import nbd"], capture_output=True).returncode:
        pytest.skip("python3-libnbd is not installed")
    return ["/usr/bin/python3", "-m", "nbd"]


def run(*cmd, check=True, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if check and res.returncode:
        raise AssertionError(f"{cmd[0]} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def swap_like_image(path, n_pages, seed=1):
    """A page set shaped like anonymous memory: zero pages, repeated words,
    structured and text data, and some incompressible pages."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(n_pages):
            k = rng.random()
            if k < 0.15:
                f.write(bytes(PAGE))
            elif k < 0.2:
                f.write(pagegen.same(rng.getrandbits(64)))
            elif k < 0.3:
                f.write(rng.randbytes(PAGE))
            elif k < 0.6:
                f.write(pagegen.binary(rng))
            else:
                f.write(pagegen.compressible(rng))


@pytest.fixture
def daemon(tmp_path):
    with uzramd(tmp_path / "d", devices=("zram0:disksize=64M", "zram1:comp_algorithm=zstd,disksize=32M")) as d:
        yield d


def test_nbdinfo_lists_devices_as_exports(daemon):
    need("nbdinfo")
    out = json.loads(run("nbdinfo", "--json", "--list", daemon.uri("")).stdout)
    exports = {e["export-name"]: e for e in out["exports"]}
    assert set(exports) == {"zram0", "zram1"}
    assert exports["zram0"]["export-size"] == 64 * MiB
    assert "zstd" in exports["zram1"]["description"]
    info = json.loads(run("nbdinfo", "--json", daemon.uri("")).stdout)
    assert info["exports"][0]["export-size"] == 64 * MiB  # empty name is zram0


def test_nbdcopy_round_trip_compresses(daemon, tmp_path):
    need("nbdcopy")
    src = tmp_path / "src.img"
    swap_like_image(src, 16 * MiB // PAGE)
    run("nbdcopy", str(src), daemon.uri("zram1"))
    dst = tmp_path / "dst.img"
    run("nbdcopy", daemon.uri("zram1"), str(dst))
    with open(dst, "rb") as f:
        assert f.read(16 * MiB) == src.read_bytes()
    st = daemon.mm_stat("zram1")
    assert st[5] > 0                    # same-filled pages found
    assert st[1] < st[0] / 2            # zstd shrank the data
    assert st[2] >= st[1]


def test_nbdinfo_map_reports_holes_and_data(daemon):
    need("nbdinfo", "qemu-io")
    run("qemu-io", "-f", "raw", "-t", "writeback", daemon.uri(),
        "-c", "write -P 0x5a 1M 64k", "-c", "write -z -u 4M 64k", "-c", "write -z 8M 64k")
    m = json.loads(run("nbdinfo", "--json", "--map", daemon.uri()).stdout)
    data = [(e["offset"], e["length"]) for e in m if e["type"] == 0]
    assert data == [(MiB, 64 * 1024)]
    zero_alloc = [(e["offset"], e["length"]) for e in m if e["type"] == 2]
    assert zero_alloc == [(8 * MiB, 64 * 1024)]  # WRITE_ZEROES with NO_HOLE stays allocated


def test_qemu_img_convert_and_compare(daemon, tmp_path):
    need("qemu-img")
    src = tmp_path / "src.img"
    swap_like_image(src, 8 * MiB // PAGE, seed=2)
    with open(src, "ab") as f:
        f.truncate(64 * MiB)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), daemon.uri())
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), daemon.uri())
    out = tmp_path / "out.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", daemon.uri(), str(out))
    # sparse: the zero tail was not copied as data
    assert out.stat().st_size < 20 * MiB


def test_qemu_io_patterns_fua_discard(daemon):
    need("qemu-io")
    uri = daemon.uri()
    run("qemu-io", "-f", "raw", uri,  # default writethrough cache: FUA on every write
        "-c", "write -P 0xab 0 128k", "-c", "write -P 0xcd 4000 1000", "-c", "flush")
    out = run("qemu-io", "-f", "raw", uri, "-c", "read -P 0xab 0 4000", "-c", "read -P 0xcd 4000 1000",
              "-c", "read -P 0xab 5000 126072").stdout
    assert "Pattern verification failed" not in out
    run("qemu-io", "-f", "raw", uri, "-c", "discard 0 64k")
    out = run("qemu-io", "-f", "raw", uri, "-c", "read -P 0 0 64k", "-c", "read -P 0xab 64k 64k").stdout
    assert "Pattern verification failed" not in out
    assert int(daemon.show("zram0", "io_stat").split()[3]) >= 16


def test_fio_verify(daemon, tmp_path):
    need("fio")
    job = tmp_path / "v.fio"
    job.write_text(f"""[global]
ioengine=nbd
uri={daemon.uri()}
size=16m
iodepth=16
verify=crc32c
verify_state_save=0
do_verify=1
verify_fatal=1
buffer_compress_percentage=50
refill_buffers=1
[rw]
rw=randrw
bs=4k
[seq]
rw=write
bs=128k
offset=32m
stonewall
""")
    res = run("fio", "--output-format=json", f"--output={tmp_path / 'out.json'}", str(job), check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert all(j["error"] == 0 for j in report["jobs"])


def test_nbd_client_lists_exports(daemon):
    need("nbd-client")
    out = run("nbd-client", "-l", "-unix", str(daemon.nbd_sock), check=False).stdout
    assert "zram0" in out and "zram1" in out


def test_nbdsh_bad_requests_leave_data_and_daemon_intact(daemon):
    nbdsh = nbdsh_cmd()
    script = f"""
import nbd, errno
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri({daemon.uri()!r})
size = h.get_size()
h.pwrite(b"keep" * 1024, 0)
def code(fn):
    try:
        fn()
    except nbd.Error as e:
        return e.errnum
    return 0
assert code(lambda: h.pread(4096, size)) == errno.EINVAL
assert code(lambda: h.pwrite(b"x" * 4096, size - 100)) == errno.ENOSPC
assert code(lambda: h.pread(0, 0)) == errno.EINVAL
assert code(lambda: h.pread(4096, 0, flags=1 << 9)) == errno.EINVAL
assert code(lambda: h.trim(4096, size)) == errno.EINVAL
assert h.pread(4096, 0) == b"keep" * 1024
h.shutdown()
"""
    run(*nbdsh, "-c", script)
    d = run(*nbdsh, "-u", daemon.uri(), "-c", "assert h.pread(4096, 0) == b'keep' * 1024")
    assert d.returncode == 0


def test_garbage_and_abrupt_clients_do_not_hurt_others(daemon):
    import socket
    nbdsh = nbdsh_cmd()
    run(*nbdsh, "-u", daemon.uri(), "-c", "h.pwrite(b'\\x11' * 8192, 1 << 20)")
    for payload in (b"\x00" * 200, b"NBDMAGIC" * 10, os.urandom(1000)):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(daemon.nbd_sock))
            s.recv(18)
            s.sendall(payload)
    # a client that disconnects mid-write
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(daemon.nbd_sock))
        s.recv(18)
        s.sendall(b"\x00\x00\x00\x03")
    run(*nbdsh, "-u", daemon.uri(), "-c", "assert h.pread(8192, 1 << 20) == b'\\x11' * 8192")
    assert daemon.alive()


def test_reset_refused_while_a_client_is_attached(daemon):
    nbdsh = nbdsh_cmd()
    proc = subprocess.Popen([*nbdsh, "-u", daemon.uri(), "-c", "import sys; h.pwrite(b'a' * 4096, 0); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        daemon.wait_for_clients(1)
        reply = daemon.request(cmd="store", device="zram0", attr="reset", value="1")
        assert reply["ok"] is False and reply["errno"] == errno.EBUSY
        reply = daemon.request(cmd="hot_remove", value="0")
        assert reply["errno"] == errno.EBUSY
    finally:
        proc.communicate(b"", timeout=30)
    daemon.wait_for_clients(0)
    daemon.store("zram0", "reset", "1")
    assert daemon.show("zram0", "disksize") == "0\n"


def test_pipelined_sub_page_writes_to_one_page_lose_nothing(daemon):
    """nbd-client -b 512 sends 512-byte I/O: eight pipelined writes into one
    compressed page must all land (each is a read-modify-write of the page)."""
    nbdsh = nbdsh_cmd()
    script = f"""
import nbd
h = nbd.NBD()
h.connect_uri({daemon.uri()!r})
for round in range(20):
    base = round * 4096
    cookies = [h.aio_pwrite(bytes([round * 8 + k + 1]) * 512, base + k * 512) for k in range(8)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    assert all(h.aio_command_completed(c) for c in cookies)
for round in range(20):
    assert h.pread(4096, round * 4096) == b"".join(bytes([round * 8 + k + 1]) * 512 for k in range(8)), round
h.shutdown()
"""
    run(*nbdsh, "-c", script)
