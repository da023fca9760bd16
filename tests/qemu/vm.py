"""Host-side pieces of the QEMU swap tests: tools, guest image, running QEMU.

The guest speaks a line protocol on its serial console (see ``init.sh``);
:func:`run_guest` streams it to a log file, answers ``UZRAM-HOLD`` on the
serial line after calling back into the test, kills QEMU on timeout, and
parses the result into a :class:`GuestRun`.

A hung guest is told from a slow one by progress lines (memhog's and
init's): when none arrived for ``stall`` seconds, the host asks the guest
kernel for sysrq dumps through QEMU's monitor (blocked tasks, memory, all
tasks: that needs no guest user space), collects them, and kills QEMU.
"""

from __future__ import annotations

import fcntl
import os
import queue
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .guestkernel import GuestKernel
from .initramfs import Initramfs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / ".work" / "qemu"

# Debian package -> check that it is usable here
PACKAGES: dict[str, Callable[[], bool]] = {
    "qemu-system-x86": lambda: shutil.which("qemu-system-x86_64") is not None,
    "busybox-static": lambda: static_busybox() is not None,
    "gcc": lambda: shutil.which("gcc") is not None,
    "libc6-dev": lambda: Path("/usr/lib/x86_64-linux-gnu/libc.a").exists(),
    "nbd-client": lambda: shutil.which("nbd-client", path="/usr/sbin:/sbin:/usr/bin:/bin") is not None,
}


class Unavailable(Exception):
    """A prerequisite cannot be met on this machine; the test is skipped."""


@dataclass(frozen=True)
class QemuAssets:
    """What every guest is built from (the cached kernel, the static binaries)."""

    kernel: GuestKernel
    memhog: Path
    busybox: Path
    cache: Path


def is_static(path: Path) -> bool:
    """True for an ELF64 executable without a program interpreter (PT_INTERP)."""
    try:
        head = path.read_bytes()[:65536]
    except OSError:
        return False
    if head[:4] != b"\x7fELF" or head[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    return all(struct.unpack_from("<I", head, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def static_busybox() -> Path | None:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if is_static(Path(p)):
            return Path(p)
    return None


def ensure_packages(names: list[str]) -> None:
    """Install the missing ones as root with apt-get; raise Unavailable otherwise."""
    missing = [n for n in names if not PACKAGES[n]()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"missing Debian packages {' '.join(missing)} (install them as root, "
                          "or run scripts/setup as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise Unavailable(f"apt-get install {' '.join(missing)} failed: {p.stderr.strip()[-300:]}")
    still = [n for n in missing if not PACKAGES[n]()]
    if still:
        raise Unavailable(f"installed but still not usable: {' '.join(still)}")


def build_memhog(cache: Path = CACHE) -> Path:
    """``memhog.c`` compiled static (once per source change)."""
    src, out = HERE / "memhog.c", cache / "memhog"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "memhog.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            tmp = out.with_suffix(".tmp")
            p = subprocess.run(["gcc", "-O2", "-Wall", "-static", "-o", str(tmp), str(src)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"gcc -static memhog.c failed:\n{p.stderr}")
            tmp.replace(out)
    return out


@dataclass
class GuestConfig:
    """What the guest does; becomes /etc/uzram-test.conf (shell variables)."""

    mode: str                       # "a", "b" or "k" (the guest kernel's zram, the anchor)
    mem_mb: int = 128               # guest RAM
    hog_mb: int = 192               # memhog size (more than the guest may use)
    hog_passes: int = 1             # verify passes after the hold
    hog_pattern: str = "mixed"
    hog_memory_high: str = ""       # cgroup memory.high for memhog; "" = global pressure
    discard: str = "pages"          # swapon -d POLICY ("" = no discard)
    extra: dict[str, str] = field(default_factory=dict)   # more variables (mode b's server)
    modules: tuple[str, ...] = ()   # kernel modules beyond the mode's (a backing disk's driver)

    def conf(self) -> str:
        items = {"MODE": self.mode, "HOG_MB": str(self.hog_mb), "HOG_PASSES": str(self.hog_passes),
                 "HOG_PATTERN": self.hog_pattern, "HOG_MEMORY_HIGH": self.hog_memory_high,
                 "DISCARD": self.discard, **self.extra}
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in items.items())


MODULES = {"a": ["virtio_pci", "virtio_blk"], "b": ["virtio_pci", "nbd", "9pnet_virtio", "9p"],
           "k": ["zram", "lz4"]}


def build_initramfs(kernel: GuestKernel, cfg: GuestConfig, memhog: Path, busybox: Path, dest: Path) -> Path:
    """busybox, /init, memhog, the mode's modules (in load order) and the config."""
    img = Initramfs()
    for d in ("proc", "sys", "dev", "tmp", "run", "sbin", "usr/bin", "usr/sbin"):
        img.dir(d)
    img.chardev("dev/console", 5, 1)
    img.copy("bin/busybox", busybox, 0o755)
    img.symlink("bin/sh", "busybox")
    img.copy("init", HERE / "init.sh", 0o755)
    img.copy("bin/memhog", memhog, 0o755)
    order = kernel.load_order(MODULES[cfg.mode] + list(cfg.modules))
    for name in order:
        img.copy(f"lib/modules/{name}.ko", kernel.module_path(name), 0o644)
    img.file("etc/modules.list", "".join(n + "\n" for n in order).encode())
    img.file("etc/uzram-test.conf", cfg.conf().encode())
    return img.write(dest)


@dataclass
class GuestRun:
    """What one boot printed and how it ended."""

    log: Path
    lines: list[str]
    returncode: int | None
    timed_out: bool
    seconds: float
    result: str = ""                                                  # after "UZRAM-TEST: "
    guest: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> counters
    dev: dict[str, list[int]] = field(default_factory=dict)           # label -> /sys/block/X/stat
    server: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (label, attr) -> values
    hold_answered: bool = False
    hung: bool = False              # no progress line for the stall timeout
    last_progress: str = ""         # the last progress line before the stall

    @property
    def passed(self) -> bool:
        return self.result.startswith("PASS")

    def tail(self, n: int = 60) -> str:
        return f"--- last {n} lines of {self.log} ---\n" + "\n".join(self.lines[-n:])

    def parse(self) -> None:
        for line in self.lines:
            tag, sep, rest = line.partition(": ")
            if not sep:
                continue
            words = rest.split()
            try:
                if tag == "UZRAM-TEST":
                    self.result = rest.strip()
                elif tag == "UZRAM-GUEST" and words:
                    self.guest[words[0]] = {k: float(v) for k, _, v in (w.partition("=") for w in words[1:])}
                elif tag == "UZRAM-DEV" and words:
                    self.dev[words[0]] = [int(x) for x in words[1:]]
                elif tag == "UZRAM-SERVER" and len(words) >= 2 and words[1] != "error":
                    self.server[(words[0], words[1])] = [int(x) for x in words[2:]]
            except ValueError:
                continue   # a line garbled by interleaved console output


def qemu_command(kernel: GuestKernel, initrd: Path, mem_mb: int, devices: list[str],
                 monitor: Path | None = None) -> list[str]:
    """TCG with every CPU feature it emulates (the venv's wheels may need x86-64-v2
    or more), one CPU, no NIC or other default devices, serial console on stdio.
    With ``monitor``, QEMU's human monitor listens on that UNIX socket (the
    host sends sysrq keys through it when the guest hangs)."""
    mon = ["-monitor", f"unix:{monitor},server=on,wait=off"] if monitor is not None else []
    return ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-no-reboot",
            "-machine", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(mem_mb),
            "-display", "none", "-serial", "stdio",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 mitigations=off loglevel=4 sysrq_always_enabled",
            *mon, *devices]


def nbd_disk(socket_path: Path, export: str = "zram0") -> list[str]:
    """Mode A: QEMU's NBD client on a UNIX socket, shown to the guest as virtio-blk."""
    path = str(socket_path).replace(",", ",,")
    return ["-blockdev", f"driver=nbd,node-name=swap0,server.type=unix,server.path={path},"
            f"export={export},discard=unmap",
            "-device", "virtio-blk-pci,drive=swap0"]


def backing_disk(image: Path, size: int) -> list[str]:
    """A virtio disk for the guest (its first, ``/dev/vda``, in mode B) over a
    sparse raw image of ``size`` bytes: a real block device for writeback."""
    with open(image, "wb") as f:
        f.truncate(size)
    path = str(image).replace(",", ",,")
    return ["-drive", f"file={path},format=raw,if=none,id=backing0",
            "-device", "virtio-blk-pci,drive=backing0"]


def host_root_9p() -> list[str]:
    """Mode B: the host's / read-only over virtio-9p (tag ``hostroot``)."""
    return ["-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"]


PROGRESS_PREFIXES = ("memhog:", "uzram-test:", "UZRAM-", "MEMHOG:")
SYSRQ_KEYS = ("9", "w", "m", "t")   # console loglevel 9, blocked tasks, memory, all tasks


def sysrq(monitor: Path, keys: tuple[str, ...] = SYSRQ_KEYS) -> str:
    """Press alt-sysrq-KEY in the guest for each key (QEMU's human monitor);
    returns "" or why it failed."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(monitor))
            for k in keys:
                s.sendall(f"sendkey alt-sysrq-{k}\n".encode())
                time.sleep(1.0)
    except OSError as e:
        return str(e)
    return ""


def run_guest(cmd: list[str], log: Path, timeout: float,
              on_hold: Callable[[], None] | None = None,
              stall: float | None = None, monitor: Path | None = None) -> GuestRun:
    """Run QEMU, stream its console to ``log``; on ``UZRAM-HOLD`` call ``on_hold``
    and send a line to the guest. QEMU is killed after ``timeout`` seconds, or
    ``stall`` seconds after the last progress line (after sysrq dumps, if
    ``monitor`` is QEMU's monitor socket)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    q: queue.Queue[str | None] = queue.Queue()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout

    def reader() -> None:
        with open(log, "w") as f:
            for raw in out:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                f.write(line + "\n")
                f.flush()
                q.put(line)
        q.put(None)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    timed_out = answered = hung = False
    last_progress, progress_at = "", time.monotonic()
    try:
        while True:
            now = time.monotonic()
            left = timeout - (now - t0)
            if left <= 0:
                timed_out = True
                break
            if stall is not None and now - progress_at >= stall:
                hung = True
                break
            wait = left if stall is None else min(left, stall - (now - progress_at))
            try:
                line = q.get(timeout=max(0.01, wait))
            except queue.Empty:
                continue
            if line is None:
                break
            lines.append(line)
            if line.startswith(PROGRESS_PREFIXES):
                last_progress, progress_at = line, time.monotonic()
            if line.strip() == "UZRAM-HOLD" and not answered:
                try:
                    if on_hold is not None:
                        on_hold()
                finally:
                    answered = True
                    try:
                        proc.stdin.write(b"\n")
                        proc.stdin.flush()
                    except BrokenPipeError:
                        pass
        if hung:
            lines.append(f"uzram-host: no progress for {stall:.0f}s after: {last_progress}")
            why = sysrq(monitor) if monitor is not None else "no monitor"
            if why:
                lines.append(f"uzram-host: no sysrq dumps: {why}")
            quiet_since = time.monotonic()
            end = quiet_since + 90
            while time.monotonic() < end and time.monotonic() - quiet_since < 15:
                try:
                    line = q.get(timeout=1.0)
                except queue.Empty:
                    continue
                if line is None:
                    break
                lines.append(line)
                quiet_since = time.monotonic()
        elif not timed_out:
            proc.wait(max(1.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        th.join(10)
        out.close()
        while True:   # lines that arrived after the loop stopped
            try:
                rest = q.get_nowait()
            except queue.Empty:
                break
            if rest is not None:
                lines.append(rest)
    run = GuestRun(log, lines, proc.returncode, timed_out, time.monotonic() - t0, hold_answered=answered,
                   hung=hung, last_progress=last_progress)
    run.parse()
    return run
