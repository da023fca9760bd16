"""What the benchmarks drive and how: the servers (uzramd, nbdkit) as child
processes, the host kernel's zram0 claimed for a run and always reset after
it, and the clients (fio, nbdcopy, dd) with their results parsed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent   # the checkout whose uzram the daemon runs by default
PERCENTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench: missing {' '.join(missing)} (scripts/setup installs them as root)")


def wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(3000):
        if path.exists():
            return
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited with {proc.returncode}")
        time.sleep(0.01)
    sys.exit(f"bench: {what} did not start")


def rss(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status size field (VmRSS, RssAnon, ...) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """An NBD server child process listening on a UNIX socket."""

    def __init__(self, name: str, cmd: list[str], sock: Path, extra: Sequence[Path] = (),
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.sock = sock
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        for p in [sock, *extra]:
            wait_for(p, self.proc, name)

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def rss(self, field: str = "VmRSS") -> int:
        return rss(self.proc.pid, field)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def uzramd(work: Path, name: str, devices: Sequence[str], tree: Path | None = None,
           extra: Sequence[str] = ()) -> Server:
    """A uzramd child with its own NBD and control sockets in ``work``; with
    ``tree``, the uzram package of that checkout (say, an older commit's
    ``git worktree``) instead of this one."""
    cmd = [sys.executable, "-m", "uzram.daemon", "-q", "--listen", f"unix:{work / (name + '.sock')}",
           "--control", str(work / (name + ".ctl")), *extra]
    for d in devices:
        cmd += ["--device", d]
    # ``-m`` puts the working directory first on sys.path, before PYTHONPATH:
    # the daemon runs in the tree whose package it must import
    tree = (tree or ROOT).resolve()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return Server("uzramd", cmd, work / (name + ".sock"), [work / (name + ".ctl")], env=env, cwd=tree)


# -- the host kernel's zram0

KERNEL_SYSFS = Path("/sys/block/zram0")


def kernel_zram_unavailable(alg: str, sysfs: Path = KERNEL_SYSFS) -> str | None:
    """Why the host's zram0 cannot be used for a comparison, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    if not sysfs.exists():
        return "the host kernel has no zram0"
    if (sysfs / "disksize").read_text().strip() != "0" or (sysfs / "initstate").read_text().strip() != "0":
        return "the host's zram0 is in use (disksize is not 0)"
    if alg not in (sysfs / "comp_algorithm").read_text().replace("[", " ").replace("]", " ").split():
        return f"the host's zram0 has no {alg}"
    return None


def _store(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def kernel_reset(sysfs: Path = KERNEL_SYSFS) -> None:
    """Reset zram0, waiting out a closing opener (EBUSY) for up to 30 s."""
    for _ in range(300):
        try:
            _store(sysfs / "reset", "1")
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    _store(sysfs / "reset", "1")


def kernel_configure(alg: str, size: int, sysfs: Path = KERNEL_SYSFS) -> None:
    kernel_reset(sysfs)
    _store(sysfs / "comp_algorithm", alg)
    _store(sysfs / "disksize", str(size))


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so that cleanups run."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- clients

def fio(opts: dict[str, str], workdir: Path, *, seconds: float, ramp: float,
        tag: str = "job") -> subprocess.Popen[str]:
    """Start one fio job (``opts`` names the target, rw, bs, iodepth, size)."""
    full = {"time_based": "1", "runtime": f"{max(int(seconds * 1000), 100)}ms", "ramp_time": f"{int(ramp * 1000)}ms",
            "norandommap": "1", "randrepeat": "0", "lat_percentiles": "1", "percentile_list": ":".join(str(p) for p in PERCENTILES), **opts}
    job = workdir / f"{tag}.fio"
    job.write_text("[job]\n" + "".join(f"{k}={v}\n" for k, v in full.items()))
    return subprocess.Popen(["fio", "--output-format=json", f"--output={workdir / (tag + '.json')}", str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def fio_result(proc: subprocess.Popen[str], workdir: Path, tag: str = "job", timeout: float = 600) -> dict[str, Any]:
    """IOPS, MB/s, mean and percentile latencies (µs) of a finished fio job: the
    total latency, submission included (the kernel's zram completes a request
    inside io_submit, so its completion latency alone is near zero)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        raise RuntimeError(f"fio failed: {out}")
    j = json.loads((workdir / (tag + ".json")).read_text())["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] else j["write"]
    pct = {str(float(k)): v / 1e3 for k, v in side["lat_ns"].get("percentile", {}).items()}
    return {"iops": side["iops"], "mbps": side["bw_bytes"] / 1e6, "lat_us": side["lat_ns"]["mean"] / 1e3,
            "lat_pct_us": pct}


def run_fio(opts: dict[str, str], workdir: Path, *, seconds: float, ramp: float) -> dict[str, Any]:
    return fio_result(fio(opts, workdir, seconds=seconds, ramp=ramp), workdir, timeout=seconds * 10 + 120)


def nbd_fio(uri: str) -> dict[str, str]:
    return {"ioengine": "nbd", "uri": uri}


def kernel_fio(sysfs: Path = KERNEL_SYSFS) -> dict[str, str]:
    return {"ioengine": "libaio", "direct": "1", "filename": f"/dev/{sysfs.name}"}


def nbdcopy_cmd(img: Path, uri: str, request: int = 128 << 10, depth: int = 16) -> list[str]:
    """Copy every byte of ``img`` with NBD writes: one connection, ``depth``
    requests of ``request`` bytes in flight, no zero detection."""
    return ["nbdcopy", "--connections=1", f"--requests={depth}", f"--request-size={request}",
            "--sparse=0", "--allocated", str(img), uri]


def dd_cmd(img: Path, dev: Path, request: int = 128 << 10) -> list[str]:
    return ["dd", f"if={img}", f"of={dev}", f"bs={request}", "oflag=direct", "status=none"]


def copy_rate(cmd: list[str], nbytes: int, seconds: float) -> dict[str, float]:
    """Run ``cmd`` (which moves ``nbytes``) again and again for at least
    ``seconds``; MB/s and 128 KiB requests/s over the whole time."""
    reps, t0 = 0, time.monotonic()
    while True:
        subprocess.run(cmd, check=True, capture_output=True, timeout=900)
        reps += 1
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
    mbps = reps * nbytes / elapsed / 1e6
    return {"mbps": mbps, "iops": mbps * 1e6 / (128 << 10), "copies": reps}


def _machine_jiffies() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot, from /proc/stat
    (idle and iowait are not busy; steal is: a CPU the machine did not get)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command name (state first)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system time of a process so far (every thread), in seconds."""
    f = _stat_fields(Path(f"/proc/{pid}/stat"))
    return int(f[11]) / TICK, int(f[12]) / TICK


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far, in seconds."""
    return sum(cpu_times(pid))


def _tree_ticks(pid: int) -> int:
    """User and system ticks of ``pid`` and its children (the worker
    processes of ``--process-per-device``)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = _stat_fields(stat)
        except (OSError, IndexError):
            continue    # gone meanwhile
        if int(stat.parent.name) == pid or int(f[1]) == pid:
            total += int(f[11]) + int(f[12])
    return total


def with_cpu(work: Callable[[], dict[str, Any]], pid: int) -> Callable[[], dict[str, Any]]:
    """``work``, its result with the CPUs in use meanwhile: ``machine_cpus``
    (the whole machine, clients included) and ``daemon_cpus`` (process
    ``pid`` and its children), each in CPUs (1.0: one CPU all the time)."""
    def run() -> dict[str, Any]:
        busy0, all0 = _machine_jiffies()
        own0, t0 = _tree_ticks(pid), time.monotonic()
        res = work()
        busy1, all1 = _machine_jiffies()
        own1, t1 = _tree_ticks(pid), time.monotonic()
        cpus = os.cpu_count() or 1
        return res | {"machine_cpus": cpus * (busy1 - busy0) / max(all1 - all0, 1),
                      "daemon_cpus": (own1 - own0) / TICK / max(t1 - t0, 1e-9)}
    return run


def together(*work: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the callables at once, each in a thread; their results in order."""
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(work)

    def run(i: int) -> None:
        try:
            results[i] = work[i]()
        except BaseException as e:  # handed to the caller below
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        out.append(r)
    return out
