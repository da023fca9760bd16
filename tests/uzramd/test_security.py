"""uzramd as an operator who trusts it with swap expects: exact export and
device names, a runtime directory no one else can take over, and no silent
blank after an unclean exit."""

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from uzram.control import decode, encode

from ..daemon import uzramd
from ..nbdclient import NBDClient

PAGE = 4096
IHAVEOPT = 0x49484156454F5054
OPT_GO, OPT_LIST, REP_ACK, REP_SERVER = 7, 3, 1, 2
REP_ERR_UNKNOWN = (1 << 31) | 6


def need(*tools):
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def go_reply(sock_path, name: bytes) -> tuple[int, bytes]:
    """A raw NBD_OPT_GO for ``name`` (bytes, sent as is): the final reply type
    and its payload."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        assert _recv(s, 18)[:16] == b"NBDMAGICIHAVEOPT"
        s.sendall(struct.pack(">I", 3))
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            _magic, _opt, rtype, length = struct.unpack(">QIII", _recv(s, 20))
            payload = _recv(s, length)
            if rtype == REP_ACK or rtype >= 1 << 31:
                return rtype, payload


def control(d, **req):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.control_sock))
        s.sendall(encode(req))
        return decode(s.makefile("rb").readline())


# -- exact names --------------------------------------------------------------------------------

ALIASES = ["zram0\n", "zram000", "zram01", "/dev/zram1", "zram\u0661", " zram0", "zram0 ", "ZRAM0", "zram-0",
           "zram" + "1" * 5000]


def test_export_names_are_exact(tmp_path):
    with uzramd(tmp_path / "d", devices=("zram0:disksize=16M", "zram1:disksize=16M")) as d:
        for name in ALIASES + ["zram" + "1" * 4000]:
            rtype, _ = go_reply(d.nbd_sock, name.encode())
            assert rtype >= 1 << 31, name[:20]  # ERR_UNKNOWN (ERR_TOO_BIG past 4096 bytes)
        assert d.alive()
        for name, expect in ((b"zram0", REP_ACK), (b"zram1", REP_ACK), (b"", REP_ACK), (b"zram2", REP_ERR_UNKNOWN)):
            assert go_reply(d.nbd_sock, name)[0] == expect, name


def test_nbdinfo_sees_exact_names_only(tmp_path):
    need("nbdinfo")
    with uzramd(tmp_path / "d", devices=("zram0:disksize=16M", "zram1:disksize=16M")) as d:
        listed = subprocess.run(["nbdinfo", "--list", "--json", d.uri("")], check=True,
                                capture_output=True, text=True).stdout
        assert [e["export-name"] for e in json.loads(listed)["exports"]] == ["zram0", "zram1"]
        for quoted in ("zram0%0A", "zram000", "%2Fdev%2Fzram1", "zram%D9%A1"):
            r = subprocess.run(["nbdinfo", "--size", f"nbd+unix:///{quoted}?socket={d.nbd_sock}"],
                               capture_output=True, text=True)
            assert r.returncode != 0, quoted
        assert subprocess.run(["nbdinfo", "--size", d.uri("zram1")], check=True, capture_output=True,
                              text=True).stdout.strip() == str(16 << 20)


def test_control_device_names_are_exact(tmp_path):
    with uzramd(tmp_path / "d", devices=("zram0:disksize=16M", "zram1:disksize=16M")) as d:
        for name in ALIASES:
            if name == "/dev/zram1":
                continue
            reply = control(d, cmd="show", device=name, attr="disksize")
            assert (reply["ok"], reply.get("errno")) == (False, errno.ENODEV), name[:20]
        assert d.alive()  # the 5000-digit name used to kill the daemon (int()'s digit limit)
        # uzramctl-style paths are part of the control protocol
        assert control(d, cmd="show", device="/dev/zram1", attr="disksize")["value"] == f"{16 << 20}\n"


# -- runtime directory ----------------------------------------------------------------------------

def as_user(uid, env):
    """Run uzramd as ``uid`` (no passwd entry needed) with only ``env``."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run uzramd as another user")
    need("setpriv")
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            sys.executable, "-m", "uzram.daemon", "-q", "--device", "zram0:disksize=4M"], env


def start_and_stop(cmd_env, sock: Path, timeout=20):
    """Start uzramd; wait for ``sock`` (then SIGTERM) or for its exit."""
    cmd, env = cmd_env
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:  # served: the signal handlers are in place by then
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(encode({"cmd": "version"}))
                if decode(s.makefile("rb").readline())["ok"]:
                    break
        except OSError:
            time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_fallback_runtime_dir_is_created_private_and_checked(tmp_path):
    uid = 40000 + os.getpid() % 20000
    rundir = Path(f"/tmp/uzram-{uid}")
    shutil.rmtree(rundir, ignore_errors=True)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = as_user(uid, env)
    try:
        # a user whose directory does not exist yet starts fine; it is created 0700
        rc, out = start_and_stop(cmd, rundir / "control.sock")
        assert rc == 0, out
        st = rundir.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o700)
        assert not (rundir / "control.sock.state").exists()  # a clean stop leaves no marker
        # another user got there first: refused, with what to do
        shutil.rmtree(rundir)
        rundir.mkdir(mode=0o755)
        rc, out = start_and_stop(cmd, rundir / "control.sock")
        assert rc != 0 and f"owned by uid 0, not {uid}" in out and "rm -r" in out, out
        assert not (rundir / "control.sock").exists()
        # ours, but writable by others
        os.chown(rundir, uid, uid)
        os.chmod(rundir, 0o777)
        rc, out = start_and_stop(cmd, rundir / "control.sock")
        assert rc != 0 and "lets other users write" in out, out
        # a symlink planted in its place
        rundir.rmdir()
        target = tmp_path / "elsewhere"
        target.mkdir()
        os.chown(target, uid, uid)
        rundir.symlink_to(target)
        rc, out = start_and_stop(cmd, rundir / "control.sock")
        assert rc != 0 and not list(target.iterdir()), out
    finally:
        if rundir.is_symlink():
            rundir.unlink()
        shutil.rmtree(rundir, ignore_errors=True)


def test_xdg_runtime_dir_is_used_and_checked(tmp_path):
    uid = 40000 + (os.getpid() + 1) % 20000
    xdg = Path(tempfile.mkdtemp(prefix="uzram-xdg-"))  # reachable by that user, unlike tmp_path
    os.chown(xdg, uid, uid)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "XDG_RUNTIME_DIR": str(xdg)}
    rc, out = start_and_stop(as_user(uid, env), xdg / "uzram" / "control.sock")
    assert rc == 0, out
    assert ((xdg / "uzram").stat().st_mode & 0o777) == 0o700
    os.chmod(xdg / "uzram", 0o770)
    try:
        rc, out = start_and_stop(as_user(uid, env), xdg / "uzram" / "control.sock")
        assert rc != 0 and "lets other users write" in out, out
    finally:
        shutil.rmtree(xdg)


# -- unclean exit ------------------------------------------------------------------------------

DEVICES = ("zram0:disksize=16M", "zram1:disksize=16M")


def kill(d):
    """SIGKILL, and remove the dead sockets so the next start is waited for
    (the marker stays)."""
    d.stop(signal.SIGKILL)
    d.nbd_sock.unlink()
    d.control_sock.unlink()


def refused(d, export):
    rtype, payload = go_reply(d.nbd_sock, export.encode())
    return rtype == REP_ERR_UNKNOWN and b"uncleanly" in payload


def test_after_sigkill_devices_refuse_until_reset(tmp_path):
    work = tmp_path / "d"
    with uzramd(work, devices=DEVICES) as d:
        with NBDClient(d.nbd_sock, "zram0") as c:
            c.pwrite(3000 * PAGE, b"secret!!" * 512)
        marker = Path(f"{d.control_sock}.state")
        assert json.loads(marker.read_text())["pid"] == d.proc.pid
        kill(d)
    with uzramd(work, devices=DEVICES) as d:
        assert refused(d, "zram0") and refused(d, "zram1") and refused(d, "")
        # a clean stop does not forget it
        assert d.stop() == 0
    assert json.loads(marker.read_text())["unclean"] == ["zram0", "zram1"]
    with uzramd(work, devices=DEVICES) as d:
        assert refused(d, "zram0") and refused(d, "zram1")
        # an explicit reset: the store, or uzramctl -r (reset + hot_remove)
        d.store("zram0", "reset", "1")
        d.store("zram0", "disksize", "16M")
        with NBDClient(d.nbd_sock, "zram0") as c:
            assert c.pread(3000 * PAGE, PAGE) == bytes(PAGE)  # blank, and now known to be
            c.pwrite(0, b"x" * PAGE)
        subprocess.run([sys.executable, "-m", "uzram.ctl", "--control", str(d.control_sock), "-r", "/dev/zram1"],
                       check=True, capture_output=True)
        assert refused(d, "zram1") is False
        assert d.stop() == 0
    assert not marker.exists()
    with uzramd(work, devices=DEVICES) as d:
        assert go_reply(d.nbd_sock, b"zram1")[0] == REP_ACK


def test_the_fuse_file_refuses_too(tmp_path):
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs /dev/fuse and root")
    work = tmp_path / "d"
    mnt = tmp_path / "sys"
    with uzramd(work, "--fuse", str(mnt), devices=DEVICES) as d:
        # the sockets exist before the marker is written: a kill between
        # the two would leave nothing to refuse
        marker, deadline = Path(f"{d.control_sock}.state"), time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        kill(d)
    subprocess.run(["umount", "-l", str(mnt)], check=False)
    with uzramd(work, "--fuse", str(mnt), devices=DEVICES) as d:
        deadline = time.monotonic() + 20
        while not (mnt / "dev" / "zram0").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OSError) as e:
            open(mnt / "dev" / "zram0", "rb")
        assert e.value.errno == errno.EIO
        (mnt / "zram0" / "reset").write_text("1")
        (mnt / "zram0" / "disksize").write_text("16M")
        with open(mnt / "dev" / "zram0", "rb") as f:
            assert f.read(PAGE) == bytes(PAGE)


def test_another_daemon_is_not_affected(tmp_path):
    with uzramd(tmp_path / "a", devices=DEVICES) as a:
        kill(a)
    with uzramd(tmp_path / "b", devices=DEVICES) as b:  # another control path
        assert go_reply(b.nbd_sock, b"zram0")[0] == REP_ACK
        assert b.stop() == 0
    assert not Path(f"{b.control_sock}.state").exists()
    assert Path(f"{a.control_sock}.state").exists()
