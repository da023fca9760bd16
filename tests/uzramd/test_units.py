"""systemd/: the units as systemd reads them (verify, security rating), socket
activation for real with systemd-socket-activate, the FUSE set-up the
drop-in describes, and the uzram-swap script's stop, which must never pull a
swap device from under the kernel.

No systemd runs as PID 1 here, so the units are checked offline; the
uzram-swap tests use the real swapon/swapoff/mkswap on a loop device and a
stub nbd-client (the host kernel has no NBD client), plus a stub swapoff
for the failure the kernel gives under memory pressure (ENOMEM)."""

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uzram.control import decode, encode

from .test_security import REP_ACK, REP_ERR_UNKNOWN, go_reply

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
MiB = 1 << 20


def need(*tools):
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def unit_root(tmp_path):
    """An installed tree as the README's install steps make it."""
    root = tmp_path / "root"
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for f in UNITS.glob("*.service"):
        shutil.copy(f, system)
    for f in UNITS.glob("*.socket"):
        shutil.copy(f, system)
    (system / "uzramd.service.d").mkdir()
    (root / "opt/uzram/bin").mkdir(parents=True)
    (root / "opt/uzram/bin/uzramd").write_text("#!/bin/sh\n")
    (root / "opt/uzram/bin/uzramd").chmod(0o755)
    (root / "usr/local/lib/uzram").mkdir(parents=True)
    shutil.copy(UNITS / "uzram-swap", root / "usr/local/lib/uzram/uzram-swap")
    return root


def analyze(root, *args):
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          cwd=root / "etc/systemd/system", timeout=120)


def test_units_verify(unit_root):
    need("systemd-analyze")
    units = ["uzramd.service", "uzramd.socket", "uzramd-control.socket", "uzram-swap@zram0.service"]
    r = analyze(unit_root, "verify", f"--root={unit_root}", *units)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    shutil.copy(UNITS / "uzramd-fuse.conf", unit_root / "etc/systemd/system/uzramd.service.d/fuse.conf")
    r = analyze(unit_root, "verify", f"--root={unit_root}", "uzramd.service")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


def exposure(root):
    r = analyze(root, "security", "--offline=yes", "--threshold=40", "uzramd.service")
    m = re.search(r"Overall exposure level for uzramd.service: (\d+\.\d)", r.stdout)
    assert m, r.stdout + r.stderr
    return r.returncode, float(m.group(1))


def test_uzramd_service_is_rated_at_most_4(unit_root):
    need("systemd-analyze")
    rc, level = exposure(unit_root)
    assert rc == 0 and level <= 4.0, level
    # with the --fuse drop-in too
    shutil.copy(UNITS / "uzramd-fuse.conf", unit_root / "etc/systemd/system/uzramd.service.d/fuse.conf")
    rc, level = exposure(unit_root)
    assert rc == 0 and level <= 4.0, level


def test_unit_settings_that_keep_swap_safe():
    service = (UNITS / "uzramd.service").read_text()
    swap = (UNITS / "uzram-swap@.service").read_text()
    for line in ("User=uzram", "NoNewPrivileges=yes", "AmbientCapabilities=CAP_IPC_LOCK CAP_SYS_RESOURCE",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "StateDirectory=uzram", "--control /run/uzram/control.sock",
                 "CPUSchedulingPolicy=rr", "RestrictRealtime=yes"):
        assert line in service, line
    assert re.search(r"^LimitNOFILE=\d+", service, re.M)
    assert "ReadWritePaths=/var/lib/uzram" not in service  # StateDirectory creates it
    assert re.search(r"^BindsTo=uzramd.service", swap, re.M)
    assert re.search(r"^After=.*uzramd.service", swap, re.M)  # so it stops (swapoff) before uzramd
    assert not re.search(r"^Wants=", swap, re.M)
    # the install paths are the README's
    readme = (ROOT / "README.md").read_text()
    assert "/opt/uzram/bin/uzramd" in service and "python3 -m venv /opt/uzram" in readme
    assert "/usr/local/lib/uzram/uzram-swap" in swap and "/usr/local/lib/uzram/uzram-swap" in readme


# -- socket activation, for real -----------------------------------------------------------------

def test_socket_activation_and_restart_after_a_crash(tmp_path):
    """systemd-socket-activate passes the two named sockets as the .socket
    units do; a crashed daemon, activated again, refuses its devices."""
    need("systemd-socket-activate")
    nbd, ctl = tmp_path / "nbd.sock", tmp_path / "control.sock"

    log = open(tmp_path / "uzramd.log", "wb")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)

    def activate():
        proc = subprocess.Popen(
            ["systemd-socket-activate", f"--listen={nbd}", f"--listen={ctl}", "--fdname=nbd:control",
             f"--setenv=NOTIFY_SOCKET={tmp_path / 'notify'}",
             sys.executable, "-m", "uzram.daemon", "-q", "--control", str(ctl),
             "--device", "zram0:disksize=16M"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (nbd.exists() and ctl.exists()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        return proc

    proc = activate()
    try:
        assert go_reply(nbd, b"zram0")[0] == REP_ACK  # the first connection starts uzramd
        assert notify.recv(1024).startswith(b"READY=1")
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(ctl))
            c.sendall(encode({"cmd": "devices"}))
            assert decode(c.makefile("rb").readline())["devices"] == ["zram0"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        nbd.unlink()
        ctl.unlink()
        proc = activate()
        rtype, payload = go_reply(nbd, b"zram0")
        assert rtype == REP_ERR_UNKNOWN and b"uncleanly" in payload
        assert notify.recv(1024).startswith(b"READY=1")  # SIGTERM is handled from then on
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "uzramd.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.close()


# -- --fuse as the drop-in runs it -----------------------------------------------------------------

def test_fuse_as_an_unprivileged_user_with_ambient_cap_sys_admin(tmp_path):
    """What uzramd-fuse.conf sets up, without systemd: another uid, no new
    privileges, CAP_SYS_ADMIN as the only extra ambient capability; the tree
    is mounted in this (the host's) namespace and unmounted at the end."""
    need_root()
    need("setpriv")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    uid = 40000 + (os.getpid() + 2) % 20000
    run = Path(tempfile_dir(uid))
    mnt = run / "sys"
    caps = ",".join(f"+{c}" for c in ("sys_admin", "sys_resource", "ipc_lock") if in_bounding_set(c))
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
           f"--inh-caps={caps}", f"--ambient-caps={caps}",
           sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{run}/nbd.sock",
           "--control", f"{run}/control.sock", "--device", "zram0:disksize=8M", "--fuse", str(mnt)]
    # Debian's udev makes /dev/fuse 0666; some containers keep it 0600
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "zram0" / "disksize").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert os.path.ismount(mnt)
        assert (mnt / "zram0" / "disksize").read_text() == f"{8 * MiB}\n"
        (mnt / "zram0" / "writeback_limit_enable").write_text("1")
        assert (mnt / "zram0" / "writeback_limit_enable").read_text() == "1\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        os.chmod("/dev/fuse", fuse_mode)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(run, ignore_errors=True)


CAP_BITS = {"sys_admin": 21, "sys_resource": 24, "ipc_lock": 14}


def in_bounding_set(cap):
    """Containers may lack some (CAP_SYS_RESOURCE here); CAP_SYS_ADMIN is the one that matters."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapBnd:"))
    present = int(line.split()[1], 16) >> CAP_BITS[cap] & 1
    if cap == "sys_admin" and not present:
        pytest.skip("CAP_SYS_ADMIN is not in this process's bounding set")
    return bool(present)


def tempfile_dir(uid):
    import tempfile
    d = tempfile.mkdtemp(prefix="uzram-run-")
    os.chown(d, uid, uid)
    return d


# -- uzram-swap ------------------------------------------------------------------------------

STUB_NBD_CLIENT = """#!/bin/sh
echo "nbd-client $*" >> "$UZRAM_TEST_LOG"
"""
STUB_FAILING_SWAPOFF = """#!/bin/sh
echo "swapoff $*" >> "$UZRAM_TEST_LOG"
echo "swapoff: $1: swapoff failed: Cannot allocate memory" >&2
exit 255
"""


@pytest.fixture
def swap_loop(tmp_path):
    """A loop device standing for /dev/nbd0, and a PATH with a stub nbd-client."""
    need_root()
    need("losetup", "mkswap", "swapon", "swapoff")
    image = tmp_path / "swap.img"
    fd = os.open(image, os.O_CREAT | os.O_WRONLY, 0o600)
    os.ftruncate(fd, 16 * MiB)
    os.close(fd)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "nbd-client").write_text(STUB_NBD_CLIENT)
    (stubs / "nbd-client").chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "UZRAM_TEST_LOG": str(log),
           "UZRAM_SYSCTLS": "0",   # never change the host's vm sysctls
           "NBD_DEVICE": loop, "SWAP_PRIORITY": "0", "NBD_SERVER": "unix:/nonexistent/nbd.sock"}
    try:
        yield loop, env, stubs, log
    finally:
        subprocess.run(["swapoff", loop], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def swap_active(dev):
    out = subprocess.run(["swapon", "--show=NAME", "--noheadings", "--raw"], capture_output=True,
                         text=True).stdout.split()
    return dev in out


def uzram_swap(env, *args):
    return subprocess.run(["sh", str(UNITS / "uzram-swap"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_uzram_swap_stop_detaches_after_a_successful_swapoff(swap_loop):
    loop, env, _stubs, log = swap_loop
    r = uzram_swap(env, "start", "zram0")
    assert r.returncode == 0, r.stderr
    assert swap_active(loop)
    # a device smaller than 4/3 of the RAM is used, with advice (README: Swap inside a VM)
    assert "less than 4/3 of this machine's RAM" in r.stderr and "disksize=" in r.stderr, r.stderr
    r = uzram_swap(env, "stop", "zram0")
    assert r.returncode == 0, r.stderr
    assert not swap_active(loop)
    calls = log.read_text().splitlines()
    assert calls[0].startswith(f"nbd-client -unix /nonexistent/nbd.sock {loop} -N zram0")
    assert calls[-1] == f"nbd-client -d {loop}"


def test_uzram_swap_stop_keeps_the_device_when_swapoff_fails(swap_loop):
    loop, env, stubs, log = swap_loop
    assert uzram_swap(env, "start", "zram0").returncode == 0
    (stubs / "swapoff").write_text(STUB_FAILING_SWAPOFF)   # as under memory pressure (ENOMEM)
    (stubs / "swapoff").chmod(0o755)
    r = uzram_swap(env, "stop", "zram0")
    assert r.returncode != 0
    assert "leaving zram0 attached" in r.stderr
    assert swap_active(loop)                                 # still swap
    assert f"nbd-client -d {loop}" not in log.read_text()   # never detached
    (stubs / "swapoff").unlink()
    assert uzram_swap(env, "stop", "zram0").returncode == 0  # once it can, it does
    assert not swap_active(loop)
    assert log.read_text().splitlines()[-1] == f"nbd-client -d {loop}"


def test_uzram_swap_stop_of_a_device_that_is_not_swap_just_detaches(swap_loop):
    loop, env, _stubs, log = swap_loop
    r = uzram_swap(env, "stop", "zram0")
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [f"nbd-client -d {loop}"]


def test_uzram_swap_is_executable():
    assert os.stat(UNITS / "uzram-swap").st_mode & stat.S_IXUSR


def test_uzram_swap_raises_what_uzramd_checks():
    """The kernel settings uzram-swap raises are the ones ``uzramctl
    --hardening`` reports short of (one list of values, two places)."""
    from uzram.daemon.hardening import VM_NEEDS
    raised = dict(re.findall(r"^\s*raise (\w+) (\d+)$", (UNITS / "uzram-swap").read_text(), re.M))
    assert {k: int(v) for k, v in raised.items()} == VM_NEEDS
