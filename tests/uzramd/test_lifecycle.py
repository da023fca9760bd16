"""uzramd as a process: start-up, configuration, systemd integration, shutdown."""

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from uzram.control import decode, encode
from uzram.daemon.config import ConfigError, build, default_disksize, parse_device, parse_listen

from ..daemon import uzramd

MiB = 1 << 20


def test_default_device_is_zram_generator_sized(tmp_path):
    with uzramd(tmp_path, devices=()) as d:
        assert d.request(cmd="devices")["devices"] == ["zram0"]
        assert int(d.show("zram0", "disksize")) == default_disksize()
        assert d.show("zram0", "comp_algorithm").split().count("[lz4]") == 1
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_disksize() == min(ram // 2, 4 << 30)


def test_device_option_stores_in_order_with_abi_errors(tmp_path):
    cmd = [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{tmp_path}/n.sock",
           "--control", f"{tmp_path}/c.sock", "--device", "zram0:disksize=1M,comp_algorithm=zstd"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "zram0: comp_algorithm=zstd: " in res.stderr and "busy" in res.stderr.lower()
    with uzramd(tmp_path / "ok", devices=("zram0:comp_algorithm=zstd,disksize=1M", "zram3")) as d:
        assert d.show("zram0", "comp_algorithm") == "lzo-rle lzo lz4 lz4hc [zstd] deflate \n"
        assert d.request(cmd="devices")["devices"] == ["zram0", "zram3"]
        assert d.show("zram3", "initstate") == "0\n"


def test_config_file(tmp_path):
    conf = tmp_path / "uzramd.toml"
    conf.write_text("""
[uzramd]
log_level = "info"

[zram0]
comp_algorithm = "deflate"
disksize = "2M"

[zram1]
disksize = 1048576
mem_limit = "64K"
""")
    with uzramd(tmp_path / "d", "--config", str(conf), devices=()) as d:
        assert d.request(cmd="devices")["devices"] == ["zram0", "zram1"]
        assert "[deflate]" in d.show("zram0", "comp_algorithm")
        assert d.mm_stat("zram1")[3] == 64 * 1024
    with pytest.raises(ConfigError):
        build(str(tmp_path / "missing.toml"), [], None, [])


def test_parsers():
    assert str(parse_listen("tcp:10809")) == "tcp:127.0.0.1:10809"
    assert str(parse_listen("tcp:0.0.0.0:10809")) == "tcp:0.0.0.0:10809"
    assert parse_listen("tcp:[::1]:5").host == "::1"
    assert parse_listen("unix:/x/y").path == "/x/y"
    for bad in ("udp:1", "tcp:x", "unix:", "nothing"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    spec = parse_device("zram2:comp_algorithm=zstd,algorithm_params=algo=zstd level=3,disksize=1G")
    assert spec.attrs == [("comp_algorithm", "zstd"), ("algorithm_params", "algo=zstd level=3"), ("disksize", "1G")]
    with pytest.raises(ConfigError):
        parse_device("zram0:disksize")


def test_tcp_listener_defaults_to_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with uzramd(tmp_path, "--listen", f"tcp:{port}", "--tls", "off") as d:  # plaintext TCP is opt-in
        with socket.create_connection(("127.0.0.1", port)) as c:
            assert c.recv(8) == b"NBDMAGIC"
        assert d.alive()


def test_sigterm_answers_in_flight_requests_then_exits_zero(tmp_path):
    with uzramd(tmp_path) as d:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(d.nbd_sock))
            assert c.recv(18)[:8] == b"NBDMAGIC"
            c.sendall((3).to_bytes(4, "big"))                       # FIXED_NEWSTYLE | NO_ZEROES
            name = b"zram0"
            c.sendall(b"IHAVEOPT" + (7).to_bytes(4, "big") + (6 + len(name)).to_bytes(4, "big")
                      + len(name).to_bytes(4, "big") + name + (0).to_bytes(2, "big"))
            buf = b""
            while b"\x00\x00\x00\x01" not in buf[-20:] or len(buf) < 20 + 12 + 20:  # INFO then ACK
                buf += c.recv(4096)
            # pipeline 64 reads and the signal at once
            req = b"".join(b"\x25\x60\x95\x13" + (0).to_bytes(2, "big") + (0).to_bytes(2, "big")
                           + i.to_bytes(8, "big") + (i * 4096).to_bytes(8, "big") + (4096).to_bytes(4, "big")
                           for i in range(64))
            c.sendall(req)
            d.proc.send_signal(signal.SIGTERM)
            got = b""
            c.settimeout(20)
            while True:
                chunk = c.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
        assert len(got) == 64 * (16 + 4096)
        assert d.proc.wait(30) == 0


def test_sd_notify_and_socket_activation(tmp_path):
    """Started the way systemd does: sockets on fd 3 (NBD) and 4 (control, by
    name), NOTIFY_SOCKET for READY=1 / STOPPING=1."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    nbd = socket.socket(socket.AF_UNIX)
    nbd.bind(str(tmp_path / "act.sock"))
    nbd.listen()
    ctl = socket.socket(socket.AF_UNIX)
    ctl.bind(str(tmp_path / "ctl.sock"))
    ctl.listen()
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', LISTEN_FDNAMES='nbd:control')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'uzram.daemon', '-q', '--device', 'zram0:disksize=1M'])\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(nbd.fileno()), str(ctl.fileno())],
                            pass_fds=(nbd.fileno(), ctl.fileno()), env=env)
    try:
        assert notify.recv(1024).startswith(b"READY=1")
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(tmp_path / "act.sock"))
            assert c.recv(8) == b"NBDMAGIC"
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(tmp_path / "ctl.sock"))
            c.sendall(encode({"cmd": "devices"}))
            assert decode(c.makefile("rb").readline())["devices"] == ["zram0"]
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(1024) == b"STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in (notify, nbd, ctl):
            s.close()


def test_control_socket_is_owner_only_and_checks_peer(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    import shutil
    import tempfile
    from pathlib import Path
    work = Path(tempfile.mkdtemp(prefix="uzram-peer-", dir="/tmp"))
    os.chmod(work, 0o755)
    with uzramd(work / "d") as d:
        assert oct(d.control_sock.stat().st_mode & 0o777) == "0o600"
        os.chmod(d.control_sock, 0o666)      # get past the file mode: the peer check must refuse
        os.chmod(d.workdir, 0o755)
        probe = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                 "try:\n"
                 "    s.sendall(b'{\"cmd\":\"devices\"}\\n'); print(repr(s.recv(100)))\n"
                 "except OSError:\n"
                 "    print(repr(b''))\n")
        out = subprocess.run(["/usr/bin/python3", "-c", probe, str(d.control_sock)], capture_output=True,
                             text=True, user=65534, timeout=30)
        assert out.stdout.strip() == "b''", out     # closed without an answer
        assert d.request(cmd="devices")["ok"]
    shutil.rmtree(work)


def test_second_daemon_on_the_same_socket_fails(tmp_path):
    with uzramd(tmp_path) as d:
        res = subprocess.run([sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{d.nbd_sock}",
                              "--control", str(tmp_path / "other.sock")], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1 and "another process" in res.stderr
        assert d.alive()


def test_control_errors_carry_kernel_errnos(tmp_path):
    with uzramd(tmp_path) as d:
        r = d.request(cmd="store", device="zram0", attr="disksize", value="1G")
        assert (r["ok"], r["errno"], r["error"]) == (False, errno.EBUSY, "EBUSY")
        assert d.request(cmd="show", device="zram9", attr="disksize")["errno"] == errno.ENODEV
        assert d.request(cmd="show", device="zram0", attr="reset")["errno"] == errno.EACCES
        assert d.request(cmd="bogus")["errno"] == errno.EINVAL
        assert d.request(cmd="hot_add")["value"] == "1\n"
        assert d.request(cmd="hot_remove", value="1")["ok"]
        assert d.request(cmd="hot_remove", value="1")["errno"] == errno.ENODEV
        assert d.request(cmd="hot_remove", value="-1")["errno"] == errno.EINVAL
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(d.control_sock))
            c.sendall(b"not json\n")
            assert decode(c.makefile("rb").readline())["errno"] == errno.EINVAL
