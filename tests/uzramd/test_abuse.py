"""Hostile and unlucky input to a running uzramd: whatever arrives, the daemon
answers the next client and the data it stores reads back intact."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uzram.control import decode

from ..daemon import Uzramd, uzramd
from ..nbdclient import NBDClient

PAGE = 4096


def _raw_control(d: Uzramd, payload: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes on the control socket; return what came back until EOF
    or the first complete line."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(d.control_sock))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while b"\n" not in out:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def _healthy(d: Uzramd, c: NBDClient, pages: dict[int, bytes]) -> None:
    assert d.alive(), "uzramd died"
    assert d.request(cmd="version")["ok"]
    for i, data in pages.items():
        assert c.pread(i * PAGE, PAGE) == data


@pytest.fixture
def daemon(tmp_path: Path):
    with uzramd(tmp_path, devices=("zram0:disksize=16M",)) as d:
        with NBDClient(d.nbd_sock, "zram0") as c:
            pages = {i: os.urandom(PAGE // 2) * 2 for i in (0, 7, 1000)}
            for i, data in pages.items():
                c.pwrite(i * PAGE, data)
            yield d, c, pages


def test_deeply_nested_json_is_an_error_not_a_crash(daemon) -> None:
    d, c, pages = daemon
    body = b"[" * 200_000 + b"]" * 200_000          # 400 KB, too deep to parse
    reply = decode(_raw_control(d, body + b"\n"))
    assert reply["ok"] is False and reply["error"] == "EINVAL"
    body = b"[" * 600_000 + b"]" * 600_000          # 1.2 MB: refused before parsing
    reply = decode(_raw_control(d, body + b"\n"))
    assert reply["ok"] is False and reply["error"] == "E2BIG"
    nested = b'{"cmd":' * 5000 + b"1" + b"}" * 5000
    reply = decode(_raw_control(d, nested + b"\n"))
    assert reply["ok"] is False and reply["error"] == "EINVAL"
    _healthy(d, c, pages)


def test_huge_device_numbers_and_numbers_are_refused(daemon) -> None:
    d, c, pages = daemon
    reply = d.request(cmd="show", device="zram" + "1" * 5000, attr="disksize")
    assert reply["ok"] is False and reply["error"] in ("ENODEV", "EINVAL")
    reply = decode(_raw_control(d, b'{"cmd":"version","x":' + b"9" * 100_000 + b"}\n"))
    assert reply["ok"] is False and reply["error"] == "EINVAL"
    reply = d.request(cmd="hot_remove", value="9" * 5000)
    assert reply["ok"] is False
    _healthy(d, c, pages)


def test_a_line_over_the_limit_ends_that_client_only(daemon) -> None:
    d, c, pages = daemon
    reply = decode(_raw_control(d, b"x" * (4 << 20)))
    assert reply["ok"] is False and reply["error"] == "E2BIG"
    _healthy(d, c, pages)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=2000),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                 lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                 max_leaves=30).map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({
        "cmd": st.sampled_from(["devices", "status", "attrs", "show", "store", "hot_add", "hot_remove",
                                "debug", "version", "bogus"]),
        "device": st.one_of(st.text(max_size=20), st.sampled_from(["zram0", "zram1", "zram00", "zram0\n"]),
                            st.integers()),
        "attr": st.one_of(st.text(max_size=20), st.sampled_from(
            ["disksize", "mem_limit", "comp_algorithm", "reset", "idle", "max_comp_streams", "mm_stat"])),
        "value": st.one_of(st.text(max_size=30), st.integers(), st.none()),
        "name": st.text(max_size=12),
    }).map(lambda o: json.dumps(o).encode()),
))
def test_fuzzed_control_requests(daemon, line: bytes) -> None:
    """Random bytes, random JSON and random well-formed requests (never one
    that resets or removes the device holding the data)."""
    d, c, pages = daemon
    try:
        req = json.loads(line)
    except ValueError:
        req = None
    if isinstance(req, dict) and (req.get("attr") in ("reset", "disksize") or req.get("cmd") == "hot_remove"):
        return  # EBUSY on zram0 with a client attached; other devices: not ours to lose
    answer = _raw_control(d, line.replace(b"\n", b" ") + b"\n")
    if answer:
        reply = json.loads(answer.split(b"\n")[0])
        assert "ok" in reply or "progress" in reply
    assert d.alive()
    _healthy(d, c, pages)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_fd_exhaustion_does_not_kill_the_daemon(tmp_path: Path) -> None:
    """Under a 48-descriptor limit, 40 NBD connections, then control requests:
    surplus connections are refused, the control socket still answers."""
    with uzramd(tmp_path, devices=("zram0:disksize=16M",), prefix=("prlimit", "--nofile=48:48")) as d:
        held = []
        try:
            for _ in range(40):
                s = socket.socket(socket.AF_UNIX)
                held.append(s)
                s.settimeout(10)
                s.connect(str(d.nbd_sock))
            time.sleep(0.5)
            for _ in range(3):
                assert d.request(cmd="version")["ok"]
            served = 0
            for s in held:
                try:
                    greeting = s.recv(18)
                except (TimeoutError, ConnectionResetError):
                    greeting = b""
                served += greeting.startswith(b"NBDMAGIC")
            assert 0 < served < 40, served
        finally:
            for s in held:
                s.close()
        assert d.alive()
        deadline = time.monotonic() + 20
        while True:   # the closed connections are noticed asynchronously
            try:
                c = NBDClient(d.nbd_sock, "zram0")
                break
            except (EOFError, ConnectionResetError):
                assert time.monotonic() < deadline, "no connection served after the others closed"
                time.sleep(0.1)
        with c:
            c.pwrite(0, b"\x5a" * PAGE)
            assert c.pread(0, PAGE) == b"\x5a" * PAGE
        assert d.stop() == 0


def test_nbd_handshake_garbage_ends_that_connection_only(daemon) -> None:
    d, c, pages = daemon
    for junk in (b"\x00" * 8, struct.pack(">QI", 0x49484156454F5054, 0xFFFFFFFF) + b"\xff" * 64,
                 os.urandom(4096)):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(d.nbd_sock))
            s.recv(18)
            try:
                s.sendall(junk)
                s.recv(100)
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                pass
    _healthy(d, c, pages)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(min_size=1, max_size=64),
    st.tuples(st.sampled_from([1, 2, 3, 6, 7, 8, 9, 10, 0xFFFFFFFF]), st.binary(max_size=48)).map(
        lambda t: struct.pack(">QII", 0x49484156454F5054, t[0], len(t[1])) + t[1]),
    st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=16)).map(   # lying lengths
        lambda t: struct.pack(">QII", 0x49484156454F5054, 7, t[0]) + t[1]),
), max_size=6), st.integers(0, 3))
def test_fuzzed_handshakes(daemon, options: list[bytes], flags: int) -> None:
    """Random option haggling: each connection ends or is served; nothing else changes."""
    d, c, pages = daemon
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(d.nbd_sock))
        s.recv(18)
        _send_and_drain(s, struct.pack(">I", flags) + b"".join(options))
    _healthy(d, c, pages)


def _send_and_drain(s: socket.socket, data: bytes) -> None:
    """Send everything, close our side, read until the server closes."""
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass


_REQ = struct.Struct(">IHHQQI")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(
    st.sampled_from([0x25609513, 0x25609513, 0x25609513, 0x12345678]),
    st.integers(0, 0xFFFF),                                   # flags
    st.sampled_from([0, 0, 1, 3, 4, 5, 6, 7, 8, 9, 0xFFFF]),  # READ, WRITE, FLUSH, TRIM, CACHE, ZEROES, ...
    st.one_of(st.integers(0, 16 << 20), st.integers(0, 2**64 - 1)),
    st.one_of(st.integers(0, 70000), st.integers(0, 2**32 - 1)),
    st.binary(max_size=300),
), min_size=1, max_size=8))
def test_fuzzed_transmission(daemon, requests) -> None:
    """Random requests on a second connection, payloads shorter than claimed
    included: errors or a closed connection for that client; the pages
    written by the first client read back intact (no request touches them,
    or only zero-length or refused ones do: they are outside the 16 MiB
    device or in a range the fuzzer never writes)."""
    d, c, pages = daemon
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(d.nbd_sock))
        s.recv(18)
        name = b"zram0"
        go = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 7, len(go)) + go)
        blob = b""
        for magic, flags, cmd, offset, length, payload in requests:
            if cmd in (1, 4, 6) and _touches(offset, length, pages):
                offset = (offset % (1 << 20)) + (8 << 20)   # writes stay clear of the kept pages
            blob += _REQ.pack(magic, flags, cmd, 1, offset, length) + payload
        _send_and_drain(s, blob)
    _healthy(d, c, pages)


def _touches(offset: int, length: int, pages: dict[int, bytes]) -> bool:
    return any(offset < (i + 1) * PAGE and i * PAGE < offset + max(length, 1) for i in pages)
