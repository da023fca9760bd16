"""uzramd over TCP with TLS, driven by real clients (libnbd, qemu) and a raw one."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uzram.nbd import constants as C

from ..daemon import Uzramd, uzramd
from ..tlscerts import Certs, make_certs
from .test_interop import need, nbdsh_cmd, run

pytestmark = pytest.mark.interop
MiB = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    need("openssl")
    return make_certs(tmp_path_factory.mktemp("pki"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TCPDaemon:
    def __init__(self, d: Uzramd, port: int) -> None:
        self.d = d
        self.port = port

    def nbd(self, export: str = "zram0") -> str:
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def nbds(self, certdir: Path, export: str = "zram0") -> str:
        return f"nbds://127.0.0.1:{self.port}/{export}?tls-certificates={certdir}"

    def qemu_opts(self, creds: bool = True, export: str = "zram0") -> str:
        opts = f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={self.port},export={export}"
        return opts + (",tls-creds=tls0" if creds else "")


def qemu_object(certdir: Path) -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,dir={certdir},endpoint=client"]


def start(tmp_path: Path, *args: str) -> Iterator[TCPDaemon]:
    port = free_port()
    with uzramd(tmp_path / "d", "--listen", f"tcp:127.0.0.1:{port}", *args,
                devices=("zram0:disksize=64M",)) as d:
        yield TCPDaemon(d, port)


@pytest.fixture
def required(tmp_path: Path, certs: Certs) -> Iterator[TCPDaemon]:
    """TLS required (the default once certificates are given)."""
    yield from start(tmp_path, "--tls-certificates", str(certs.server))


# --- a raw client ----------------------------------------------------------------------


class Raw:
    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=20)
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (C.NBDMAGIC, C.IHAVEOPT) and hflags & C.FLAG_FIXED_NEWSTYLE
        self.sock.sendall(struct.pack(">I", C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES))

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; its replies up to the final (ACK or error) one."""
        self.sock.sendall(struct.pack(">QII", C.IHAVEOPT, opt, len(data)) + data)
        replies = []
        while True:
            magic, o, rtype, length = struct.unpack(">QIII", self.recv(20))
            assert magic == C.OPT_REPLY_MAGIC and o == opt
            replies.append((rtype, self.recv(length)))
            if rtype == C.REP_ACK or rtype & (1 << 31):
                return replies

    def starttls(self, certdir: Path) -> None:
        assert self.option(C.OPT_STARTTLS) == [(C.REP_ACK, b"")]
        ctx = ssl.create_default_context(cafile=str(certdir / "ca-cert.pem"))
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def go_data(name: str) -> bytes:
    return struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)


# --- startup policy -----------------------------------------------------------------------


def test_tcp_without_certificates_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"tcp:127.0.0.1:{port}",
           "--control", str(tmp_path / "c.sock"), "--device", "zram0:disksize=1M"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "--tls-certificates DIR" in res.stderr and "--tls off" in res.stderr
    # the same through the config file's listen key
    conf = tmp_path / "u.toml"
    conf.write_text(f'[uzramd]\nlisten = ["tcp:127.0.0.1:{port}"]\n[zram0]\ndisksize = "1M"\n')
    res = subprocess.run([sys.executable, "-m", "uzram.daemon", "-q", "--config", str(conf),
                          "--control", str(tmp_path / "c.sock")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--tls off" in res.stderr
    assert not (tmp_path / "c.sock").exists()


def test_socket_activated_tcp_without_certificates_refuses(tmp_path: Path) -> None:
    """A TCP socket passed by systemd gets the same rule as --listen tcp:."""
    need("systemd-socket-activate")
    port = free_port()
    proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", sys.executable, "-m",
                             "uzram.daemon", "-q", "--control", str(tmp_path / "c.sock"),
                             "--device", "zram0:disksize=1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(500):  # it execs uzramd on the first connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "--tls-certificates DIR" in err and "--tls off" in err


def test_bad_certificate_dir_refuses_to_start(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "uzram.daemon", "-q", "--listen", "tcp:127.0.0.1:1",
                          "--tls-certificates", str(tmp_path), "--control", str(tmp_path / "c.sock")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "server-cert.pem" in res.stderr


def test_tls_off_serves_plaintext_tcp(tmp_path: Path) -> None:
    need("nbdinfo")
    for d in start(tmp_path, "--tls", "off"):
        info = json.loads(run("nbdinfo", "--json", d.nbd()).stdout)
        assert info["exports"][0]["export-size"] == 64 * MiB
        with Raw(d.port) as r:
            assert [t for t, _ in r.option(C.OPT_STARTTLS)] == [C.REP_ERR_POLICY]


def test_config_file_keys(tmp_path: Path, certs: Certs) -> None:
    need("nbdinfo")
    port = free_port()
    conf = tmp_path / "u.toml"
    conf.write_text(f'[uzramd]\nlisten = ["tcp:127.0.0.1:{port}"]\ntls = "require"\n'
                    f'tls_certificates = "{certs.server}"\ntls_verify_peer = true\n'
                    '[zram0]\ndisksize = "64M"\n')
    with uzramd(tmp_path / "d", "--config", str(conf), devices=()) as d:
        t = TCPDaemon(d, port)
        info = json.loads(run("nbdinfo", "--json", t.nbds(certs.client)).stdout)
        assert info["exports"][0]["export-size"] == 64 * MiB
        assert run("nbdinfo", t.nbds(certs.anon), check=False).returncode != 0  # verify_peer
        assert run("nbdinfo", t.nbd(), check=False).returncode != 0  # require


# --- require --------------------------------------------------------------------------------


def test_nbdinfo_over_tls(required: TCPDaemon, certs: Certs) -> None:
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", required.nbds(certs.anon)).stdout)
    assert info["exports"][0]["export-size"] == 64 * MiB
    assert info["TLS"] is True
    listed = json.loads(run("nbdinfo", "--json", "--list", required.nbds(certs.anon, "")).stdout)
    assert [e["export-name"] for e in listed["exports"]] == ["zram0"]


def test_plaintext_clients_get_nothing(required: TCPDaemon) -> None:
    need("nbdinfo")
    res = run("nbdinfo", required.nbd(), check=False)
    assert res.returncode != 0
    res = run("nbdinfo", "--list", required.nbd(""), check=False)
    assert res.returncode != 0 and "zram0" not in res.stdout


def test_raw_client_gets_tls_reqd(required: TCPDaemon, certs: Certs) -> None:
    with Raw(required.port) as r:
        for opt, data in ((C.OPT_LIST, b""), (C.OPT_GO, go_data("zram0")), (C.OPT_INFO, go_data("zram0")),
                          (C.OPT_STRUCTURED_REPLY, b"")):
            replies = r.option(opt, data)
            assert [t for t, _ in replies] == [C.REP_ERR_TLS_REQD], opt
        # then STARTTLS, and the same options work, encrypted
        r.starttls(certs.anon)
        replies = r.option(C.OPT_LIST)
        assert [t for t, _ in replies] == [C.REP_SERVER, C.REP_ACK]
        assert b"zram0" in replies[0][1]
        assert [t for t, _ in r.option(C.OPT_STARTTLS)] == [C.REP_ERR_INVALID]  # TLS already up
        replies = r.option(C.OPT_GO, go_data("zram0"))
        assert replies[-1][0] == C.REP_ACK
        # one request in transmission: READ 4 KiB
        r.sock.sendall(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_READ, 7, 0, 4096))
        magic, err, cookie = struct.unpack(">IIQ", r.recv(16))
        assert (magic, err, cookie) == (C.SIMPLE_REPLY_MAGIC, 0, 7)
        assert r.recv(4096) == bytes(4096)


def test_export_name_before_tls_is_hung_up(required: TCPDaemon) -> None:
    with Raw(required.port) as r:
        r.sock.sendall(struct.pack(">QII", C.IHAVEOPT, C.OPT_EXPORT_NAME, 5) + b"zram0")
        assert r.closed()


def test_nbdcopy_and_nbdsh_over_tls(required: TCPDaemon, certs: Certs, tmp_path: Path) -> None:
    need("nbdcopy")
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(8 * MiB) + bytes(8 * MiB))
    run("nbdcopy", str(src), required.nbds(certs.anon))
    dst = tmp_path / "dst.img"
    run("nbdcopy", required.nbds(certs.anon), str(dst))
    with open(dst, "rb") as f:
        assert f.read(16 * MiB) == src.read_bytes()
    script = (
        "h.set_uri_allow_local_file(True)\n"
        f"h.connect_uri({required.nbds(certs.anon)!r})\n"
        "assert h.get_tls_negotiated()\n"
        "h.pwrite(b'\\xa5' * 65536 + b'tls!' * 1024, 40 << 20)\n"
        "assert h.pread(69632, 40 << 20) == b'\\xa5' * 65536 + b'tls!' * 1024\n"
        f"assert h.pread(4096, 0) == {src.read_bytes()[:4096]!r}\n"
        "assert h.get_size() == 64 << 20\n"
        "print('ok')\n"
    )
    out = run(*nbdsh_cmd(), "-c", script).stdout
    assert out.strip() == "ok"


def test_qemu_over_tls(required: TCPDaemon, certs: Certs, tmp_path: Path) -> None:
    need("qemu-img", "qemu-io", "nbdcopy")
    obj = qemu_object(certs.client)
    info = json.loads(run("qemu-img", "info", "--output=json", *obj, "--image-opts",
                          required.qemu_opts()).stdout)
    assert info["virtual-size"] == 64 * MiB
    out = run("qemu-io", *obj, "--image-opts", required.qemu_opts(),
              "-c", "write -P 0xab 1M 256k", "-c", "read -P 0xab 1M 256k").stdout
    assert "Pattern verification failed" not in out
    # what qemu wrote, read back by libnbd over TLS, and by qemu-img convert
    dst = tmp_path / "dst.img"
    run("nbdcopy", required.nbds(certs.anon), str(dst))
    assert dst.read_bytes()[MiB:MiB + 256 * 1024] == b"\xab" * (256 * 1024)
    conv = tmp_path / "conv.img"
    run("qemu-img", "convert", *obj, "--image-opts", required.qemu_opts(), "-O", "raw", str(conv))
    assert conv.read_bytes() == dst.read_bytes()
    # without tls-creds qemu gets nothing
    res = run("qemu-img", "info", "--image-opts", required.qemu_opts(creds=False), check=False)
    assert res.returncode != 0


# --- on --------------------------------------------------------------------------------------


def test_on_serves_both(tmp_path: Path, certs: Certs) -> None:
    need("nbdinfo")
    for d in start(tmp_path, "--tls", "on", "--tls-certificates", str(certs.server)):
        plain = json.loads(run("nbdinfo", "--json", d.nbd()).stdout)
        assert plain["exports"][0]["export-size"] == 64 * MiB and plain["TLS"] is False
        enc = json.loads(run("nbdinfo", "--json", d.nbds(certs.anon)).stdout)
        assert enc["exports"][0]["export-size"] == 64 * MiB and enc["TLS"] is True


# --- verify-peer ------------------------------------------------------------------------------


def test_verify_peer(tmp_path: Path, certs: Certs) -> None:
    need("nbdinfo", "qemu-img")
    for d in start(tmp_path, "--tls-certificates", str(certs.server), "--tls-verify-peer"):
        ok = json.loads(run("nbdinfo", "--json", d.nbds(certs.client)).stdout)
        assert ok["exports"][0]["export-size"] == 64 * MiB
        assert run("nbdinfo", d.nbds(certs.anon), check=False).returncode != 0  # no certificate
        assert run("nbdinfo", d.nbds(certs.rogue), check=False).returncode != 0  # another CA's
        info = run("qemu-img", "info", *qemu_object(certs.client), "--image-opts", d.qemu_opts())
        assert "64 MiB" in info.stdout
        res = run("qemu-img", "info", *qemu_object(certs.anon), "--image-opts", d.qemu_opts(), check=False)
        assert res.returncode != 0
        # refused clients end their own connection only: the daemon still serves
        assert json.loads(run("nbdinfo", "--json", d.nbds(certs.client)).stdout)["TLS"] is True


# --- UNIX sockets --------------------------------------------------------------------------------


def test_unix_socket_stays_plaintext_under_require(required: TCPDaemon, certs: Certs) -> None:
    """--tls require protects TCP; the owner-only UNIX socket serves plaintext
    (the kernel's nbd-client attaches through it) and may start TLS."""
    need("nbdinfo")
    sock = required.d.nbd_sock
    plain = json.loads(run("nbdinfo", "--json", f"nbd+unix:///zram0?socket={sock}").stdout)
    assert plain["TLS"] is False
    enc = json.loads(run("nbdinfo", "--json",
                         f"nbds+unix:///zram0?socket={sock}&tls-certificates={certs.anon}"
                         "&tls-verify-peer=false").stdout)
    assert enc["TLS"] is True


# --- nbd-client (its TLS negotiation; the kernel part runs in tests/qemu) ----------------------


def test_nbd_client_list_over_tls(tmp_path: Path, certs: Certs) -> None:
    need("nbd-client")
    c = certs.client
    for d in start(tmp_path, "--tls-certificates", str(certs.server), "--tls-verify-peer"):
        res = run("nbd-client", "-l", "127.0.0.1", str(d.port), "-cacertfile", str(c / "ca-cert.pem"),
                  "-certfile", str(c / "client-cert.pem"), "-keyfile", str(c / "client-key.pem"))
        assert "zram0" in res.stdout
        res = run("nbd-client", "-l", "127.0.0.1", str(d.port), check=False)
        assert res.returncode != 0 and "zram0" not in res.stdout
        assert "TLS is required" in res.stderr
