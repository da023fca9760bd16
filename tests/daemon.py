"""Starting a real uzramd for tests: a subprocess on sockets in a temp dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from uzram.control import encode, read_reply, reply_errno


def raise_for(reply: dict) -> dict:
    """Return a successful reply, or raise its error as OSError."""
    if reply.get("ok"):
        return reply
    code = reply_errno(reply)
    raise OSError(code, reply.get("message") or os.strerror(code))


class Uzramd:
    def __init__(self, workdir: Path, proc: subprocess.Popen, nbd: Path, control: Path) -> None:
        self.workdir = workdir
        self.proc = proc
        self.nbd_sock = nbd
        self.control_sock = control

    def uri(self, export: str = "zram0") -> str:
        return f"nbd+unix:///{export}?socket={self.nbd_sock}"

    def request(self, **req) -> dict:
        """One control request; returns the final reply (progress lines skipped)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.control_sock))
            s.sendall(encode(req))
            return read_reply(s.makefile("rb"), limit=-1)

    def show(self, device: str, attr: str) -> str:
        return raise_for(self.request(cmd="show", device=device, attr=attr))["value"]

    def store(self, device: str, attr: str, value: str) -> None:
        raise_for(self.request(cmd="store", device=device, attr=attr, value=value))

    def mm_stat(self, device: str = "zram0") -> list[int]:
        return [int(x) for x in self.show(device, "mm_stat").split()]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_clients(self, n: int, timeout: float = 60) -> None:
        """Until the first device has ``n`` clients (a client may attach, or
        be dropped, slowly on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while (now := self.request(cmd="status")["devices"][0]["clients"]) != n:
            assert time.monotonic() < deadline, f"{now} clients, not {n}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _wait_for(paths: list[Path], proc: subprocess.Popen, log: Path, timeout: float,
              notify: socket.socket | None = None) -> None:
    """Until the sockets exist and, given ``notify``, the daemon said READY=1:
    it binds its sockets first and handles SIGTERM, writes its unclean-exit
    marker and its swap settings only before READY (a test acting as soon
    as the sockets exist could race those on a loaded machine)."""
    deadline = time.monotonic() + timeout
    ready = notify is None
    while not (ready and all(p.exists() for p in paths)):
        if proc.poll() is not None:
            raise RuntimeError(f"uzramd exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError("uzramd did not create its sockets" if ready else "uzramd did not say READY=1")
        if notify is not None and not ready:
            try:
                ready = notify.recv(4096).startswith(b"READY=1")
            except TimeoutError:
                pass
        else:
            time.sleep(0.02)


@contextmanager
def uzramd(workdir: Path, *args: str, devices: tuple[str, ...] = ("zram0:disksize=64M",),
           env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> Iterator[Uzramd]:
    """Run uzramd with ``--device`` for each of ``devices`` (none: its defaults);
    ``prefix`` goes before the command (``prlimit ...``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    nbd = workdir / "nbd.sock"
    control = workdir / "control.sock"
    cmd = [*prefix, sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{nbd}", "--control", str(control)]
    for d in devices:
        cmd += ["--device", d]
    cmd += list(args)
    given = env or {}
    env = {**os.environ, **given}
    notify = None
    if "NOTIFY_SOCKET" not in given:
        # an abstract name: no path length limit, nothing left behind
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        name = f"uzram-test-{os.getpid()}-{id(notify)}-{time.monotonic_ns()}"
        notify.bind("\0" + name)
        notify.settimeout(0.02)
        env["NOTIFY_SOCKET"] = "@" + name
    log = open(workdir / "uzramd.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for([nbd, control], proc, workdir / "uzramd.log", 20, notify)
        yield Uzramd(workdir, proc, nbd, control)
    finally:
        if notify is not None:
            notify.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
