"""Interoperability with real NBD clients (Debian's libnbd tools, qemu, fio, nbd-client)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import trio

from .support import SYSTEM_PYTHON, NBDEnv, libnbd, run

pytestmark = pytest.mark.interop


def need(*tools: str) -> None:
    for t in tools:
        if not shutil.which(t):
            pytest.skip(f"{t} not installed")


def need_libnbd() -> None:
    if not os.path.exists(SYSTEM_PYTHON) or os.system(f"{SYSTEM_PYTHON} -c 'import nbd' 2>/dev/null") != 0:
        pytest.skip("python3-libnbd not installed")


def put(env: NBDEnv, offset: int, data: bytes) -> None:
    """Write straight into the export, as an earlier client would have."""
    env.export.write(offset, memoryview(data), False)


# --- nbdinfo -----------------------------------------------------------------------------


async def test_nbdinfo(env: NBDEnv) -> None:
    need("nbdinfo")
    out = (await run(["nbdinfo", env.uri])).stdout.decode()
    for line in [
        "protocol: newstyle-fixed without TLS, using structured packets",
        'export="mem":',
        "description: test export",
        "export-size: 67108864",
        "base:allocation",
        "is_rotational: false",
        "is_read_only: false",
        "can_trim: true",
        "can_zero: true",
        "can_fast_zero: true",
        "can_flush: true",
        "can_fua: true",
        "can_multi_conn: true",
        "can_cache: true",
        "block_size_minimum: 1",
        "block_size_preferred: 4096",
        "block_size_maximum: 67108864",
    ]:
        assert line in out, (line, out)


async def test_nbdinfo_list(env: NBDEnv) -> None:
    need("nbdinfo")
    out = (await run(["nbdinfo", "--list", env.uri])).stdout.decode()
    assert 'export="mem":' in out and 'export="other":' in out
    assert "description: read-only export" in out
    other = out[out.index('export="other"') :]
    assert "export-size: 1048576" in other and "is_read_only: true" in other


async def test_nbdinfo_map(env: NBDEnv) -> None:
    need("nbdinfo")
    put(env, 1 << 20, b"d" * 8192)
    put(env, 3 << 20, b"e" * 100)
    out = (await run(["nbdinfo", "--map", env.uri])).stdout.decode()
    rows = [tuple(line.split(None, 3)) for line in out.strip().splitlines()]
    assert rows == [
        ("0", str(1 << 20), "3", "hole,zero"),
        (str(1 << 20), "8192", "0", "data"),
        (str((1 << 20) + 8192), str((2 << 20) - 8192), "3", "hole,zero"),
        (str(3 << 20), "4096", "0", "data"),
        (str((3 << 20) + 4096), str((61 << 20) - 4096), "3", "hole,zero"),
    ], out


# --- libnbd scripts ---------------------------------------------------------------------


async def test_libnbd_bad_requests(env: NBDEnv) -> None:
    need_libnbd()
    await libnbd(
        r"""
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context("base:allocation")
h.connect_uri(URI)
size = h.get_size()
pattern = bytes(range(256)) * 16
h.pwrite(pattern, 8192)

def intact():
    assert h.pread(4096, 8192) == pattern

E = errno
checks = [
    (h.pread, (512, size - 100), E.EINVAL),           # read beyond EOF
    (h.pread, (512, size), E.EINVAL),
    (h.pwrite, (b"x" * 512, size - 100), E.ENOSPC),   # write beyond EOF
    (h.zero, (512, size - 100), E.ENOSPC),
    (h.trim, (512, size - 100), E.EINVAL),
    (h.cache, (512, size - 100), E.EINVAL),
    (h.pread, (0, 0), E.EINVAL),                      # zero length
    (h.pwrite, (b"", 0), E.EINVAL),
    (h.trim, (0, 0), E.EINVAL),
    (h.zero, (0, 0), E.EINVAL),
]
for fn, args, err in checks:
    expect_err(fn, *args, errnum=err)
    intact()
# unknown or misplaced flags
expect_err(h.pread, 512, 0, flags=1 << 9, errnum=E.EINVAL); intact()
expect_err(h.pwrite, b"y" * 512, 8192, flags=nbd.CMD_FLAG_NO_HOLE, errnum=E.EINVAL); intact()
expect_err(h.pread, 512, 0, flags=nbd.CMD_FLAG_REQ_ONE, errnum=E.EINVAL); intact()
expect_err(h.pwrite, b"y" * 512, 8192, flags=nbd.CMD_FLAG_FAST_ZERO, errnum=E.EINVAL); intact()
expect_err(h.pread, 512, 0, flags=nbd.CMD_FLAG_DF, errnum=E.EINVAL); intact()
expect_err(h.block_status, 512, size, lambda *a: 0, errnum=E.EINVAL); intact()
# unaligned is fine: the minimum block size is 1
h.pwrite(b"z" * 3, 8193)
assert h.pread(5, 8192) == pattern[:1] + b"zzz" + pattern[4:5]
h.pwrite(pattern[1:4], 8193)
intact()
# FUA everywhere it is allowed, flush, zero with flags
h.pwrite(pattern, 8192, flags=nbd.CMD_FLAG_FUA)
h.zero(4096, 16384, flags=nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 20480, flags=nbd.CMD_FLAG_FAST_ZERO)
h.trim(4096, 24576, flags=nbd.CMD_FLAG_FUA)
h.flush()
intact()
assert h.pread(12288, 16384) == bytes(12288)
print("OK")
""",
        env.uri,
    )


async def test_libnbd_option_mode(env: NBDEnv) -> None:
    need_libnbd()
    await libnbd(
        r"""
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
assert h.opt_list(lambda n, d: names.append((n, d))) == 2
assert names == [("mem", "test export"), ("other", "read-only export")], names
h.opt_info()
assert h.get_size() == 64 << 20 and h.get_block_size(nbd.SIZE_MAXIMUM) == 64 << 20
assert h.can_trim() and not h.is_read_only()
ctx = []
assert h.opt_list_meta_context(lambda c: ctx.append(c)) == 1 and ctx == ["base:allocation"]
h.set_export_name("other")
h.opt_info()
assert h.get_size() == 1 << 20 and h.is_read_only() and not h.can_trim()
h.set_export_name("nope")
expect_err(h.opt_info)
expect_err(h.opt_go)
assert h.aio_is_negotiating()
h.set_export_name("")
h.opt_go()
assert h.get_size() == 64 << 20
h.pwrite(b"go" * 256, 0)
assert h.pread(512, 0) == b"go" * 256
h.shutdown()

h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
h.opt_abort()
assert h.aio_is_closed()
print("OK")
""",
        env.uri,
    )
    assert env.export.data[:512] == b"go" * 256


async def test_libnbd_fallbacks(env: NBDEnv) -> None:
    need_libnbd()
    await libnbd(
        r"""
for sr, hflags, proto in [
    (False, None, "newstyle-fixed"),
    (True, 0, "newstyle"),  # no fixed newstyle: EXPORT_NAME with the zero pad
    (False, nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE, "newstyle-fixed"),  # no NO_ZEROES
]:
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_request_structured_replies(sr)
    h.add_meta_context("base:allocation")
    if hflags is not None:
        h.set_handshake_flags(hflags)
    h.connect_uri(URI)
    assert h.get_protocol() == proto, h.get_protocol()
    assert h.get_structured_replies_negotiated() == (sr and hflags != 0)
    if not h.get_structured_replies_negotiated():
        assert not h.can_meta_context("base:allocation")
    data = os.urandom(65536)
    h.pwrite(data, 4096)
    assert h.pread(65536, 4096) == data
    expect_err(h.pread, 512, h.get_size(), errnum=errno.EINVAL)
    assert h.pread(65536, 4096) == data
    h.shutdown()
print("OK")
""",
        env.uri,
    )


async def test_libnbd_read_only_export(env: NBDEnv) -> None:
    need_libnbd()
    await libnbd(
        r"""
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(URI)
assert h.get_export_name() == "other" and h.is_read_only()
expect_err(h.pwrite, b"x" * 512, 0, errnum=errno.EPERM)
expect_err(h.trim, 512, 0, errnum=errno.EPERM)
expect_err(h.zero, 512, 0, errnum=errno.EPERM)
assert h.pread(512, 0) == bytes(512)
h.flush()
print("OK")
""",
        env.uri_for("other"),
    )


async def test_libnbd_pipelined_sub_page_and_block_status(env: NBDEnv) -> None:
    need_libnbd()
    await libnbd(
        r"""
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(URI)
assert h.can_meta_context("base:allocation")
page = 1 << 20
cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([i + 1]) * 512), page + 512 * i) for i in range(8)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
assert h.pread(4096, page) == b"".join(bytes([i + 1]) * 512 for i in range(8))
ext = []
def cb(meta, offset, entries, err):
    ext.append((meta, offset, list(entries)))
    return 0
h.block_status(4 << 20, 0, cb)
assert ext == [("base:allocation", 0, [1 << 20, 3, 4096, 0, (3 << 20) - 4096, 3])], ext
ext.clear()
h.block_status(4 << 20, 0, cb, flags=nbd.CMD_FLAG_REQ_ONE)
assert ext == [("base:allocation", 0, [1 << 20, 3])], ext
h.shutdown()
print("OK")
""",
        env.uri,
    )


async def test_nbdsh(env: NBDEnv) -> None:
    need("nbdsh")
    # nbdsh -c closes the socket without NBD_CMD_DISC
    p = await run(
        [
            "nbdsh",
            "-u",
            env.uri,
            "-c",
            "h.pwrite(b'nbdsh!' * 100, 4096)",
            "-c",
            "print(h.pread(6, 4096).decode(), h.get_size())",
        ],
        env={"PATH": "/usr/bin:/bin"},
    )  # nbdsh runs the python3 on PATH: Debian's has libnbd
    assert p.stdout.decode().split() == ["nbdsh!", str(64 << 20)]
    assert env.export.data[4096:4696] == b"nbdsh!" * 100


# --- nbdcopy, qemu ------------------------------------------------------------------------


def make_image(path: str, size: int) -> bytes:
    """Random data with zeroed stretches (exercises WRITE_ZEROES and holes)."""
    data = bytearray(os.urandom(size))
    for start in range(0, size, 4 << 20):
        data[start + (1 << 20) : start + (3 << 20)] = bytes(2 << 20)
    with open(path, "wb") as f:
        f.write(data)
    return bytes(data)


async def test_nbdcopy_roundtrip(env: NBDEnv, short_tmp: str) -> None:
    need("nbdcopy", "cmp")
    src, dst = os.path.join(short_tmp, "src.img"), os.path.join(short_tmp, "dst.img")
    data = make_image(src, 24 << 20)
    await run(["nbdcopy", "--connections=4", "--flush", src, env.uri])
    assert bytes(env.export.data[: len(data)]) == data
    await run(["nbdcopy", "--connections=4", env.uri, dst])
    await run(["cmp", "-n", str(len(data)), src, dst])
    with open(dst, "rb") as f:
        f.seek(len(data))
        assert f.read() == bytes((64 << 20) - len(data))
    assert env.export.flushes >= 1


async def test_qemu_img_convert_compare_map(env: NBDEnv, short_tmp: str) -> None:
    need("qemu-img")
    src = os.path.join(short_tmp, "src.img")
    make_image(src, 16 << 20)
    await run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, env.uri])
    await run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, env.uri])
    out = (await run(["qemu-img", "map", "--output=json", "-f", "raw", env.uri])).stdout
    got = [(e["start"], e["length"], e["data"], e["zero"]) for e in json.loads(out)]
    M = 1 << 20
    expected = [(0, M, True, False)]
    for start in (M, 5 * M, 9 * M, 13 * M):  # the zeroed stretches became holes
        expected += [(start, 2 * M, False, True), (start + 2 * M, 2 * M, True, False)]
    expected[-1] = (15 * M, M, True, False)
    expected.append((16 * M, 48 * M, False, True))
    assert got == expected


async def test_qemu_io_patterns(env: NBDEnv) -> None:
    need("qemu-io")
    cmds = [
        "write -P 0xab 0 64k",
        "read -P 0xab 0 64k",
        "write -z 64k 64k",
        "read -P 0 64k 64k",
        "write -P 0xcd 128k 8k",
        "write -z -u 128k 4k",
        "read -P 0 128k 4k",
        "read -P 0xcd 132k 4k",
        "discard 0 32k",
        "read -P 0 0 32k",
        "read -P 0xab 32k 32k",
        "write -f -P 0x11 1m 512",
        "read -P 0x11 1m 512",
        "flush",
        "write -P 0x22 2m 3m",
        "read -P 0x22 2m 3m",
    ]
    args = ["qemu-io", "-f", "raw", env.uri]
    for c in cmds:
        args += ["-c", c]
    p = await run(args)
    out = p.stdout.decode() + p.stderr.decode()
    assert "failed" not in out.lower(), out
    assert env.export.flushes >= 1
    assert env.export.fua_writes >= 4  # qemu-io's default writethrough cache sets FUA
    assert env.export.data[0x20000 + 4096 : 0x20000 + 8192] == b"\xcd" * 4096


async def test_fio_verify(env: NBDEnv, short_tmp: str) -> None:
    need("fio")
    out = os.path.join(short_tmp, "fio.json")
    p = await run(
        [
            "fio",
            "--name=verify",
            "--ioengine=nbd",
            f"--uri={env.uri}",
            "--rw=randrw",
            "--bs=4k",
            "--size=8m",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
            f"--output={out}",
        ],
        check=False,
        cwd=short_tmp,
    )
    with open(out) as f:
        text = f.read()
    report = json.loads(text[text.index("{") :])
    job = report["jobs"][0]
    assert p.returncode == 0 and job["error"] == 0, (p.stderr, job["error"])
    assert job["write"]["total_ios"] > 0 and job["read"]["total_ios"] > 0


async def test_nbd_client_list(env: NBDEnv) -> None:
    need("nbd-client")
    p = await run(["nbd-client", "-l", "-unix", env.path])
    out = p.stdout.decode()
    assert "mem: test export" in out and "other: read-only export" in out, out
    # nbd-client closes without reading the ABORT reply; the server shrugs that off
    with trio.fail_after(5):
        while env.server.connection_count:
            await trio.sleep(0.01)
