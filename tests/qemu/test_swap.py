"""Boot a Linux guest under QEMU (TCG) and make it swap through uzram for real.

Mode A: uzramd on the host, QEMU's own NBD client shows the export to the
guest as virtio-blk. Mode B (the users' path): uzramd runs inside the guest
from the host's venv (9p), the guest kernel's nbd.ko attaches it.

Mode B under global pressure (the way a VM really runs short of memory): the
hog has no cgroup limit and asks for more than the guest has free, so
uzramd itself feels the pressure; this is the test of its memory measures
(``uzram/daemon/hardening.py``, the pool's reserve, ``uzram/zram/arena.py``).
A hang is detected from the guest's progress lines, and the kernel's sysrq
dumps are in the failure message.  The lz4 variant runs in every run of the
suite; zstd and writeback when selected (``-m stress``, or
``UZRAM_STRESS=1``); ``tests/qemu/pressure_loop.py`` repeats any of them
and counts passes and hangs.

All modes pass only if the guest's verifying memory hog got all its data back
and the guest swapped out and in on the device, *and* uzram's own counters
agree: while the hog holds its memory, uzram stores at least what the guest
has in swap, compressed; its ``stat`` saw every sector the guest's block
device read and wrote; and freed swap clusters came back as TRIM.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import uzramd

from .guest_query import HARDENING
from .vm import (GuestConfig, GuestRun, QemuAssets, Unavailable, backing_disk, build_initramfs,
                 ensure_packages, host_root_9p, nbd_disk, qemu_command, run_guest)

pytestmark = pytest.mark.qemu

TIMEOUT = 900          # seconds per boot: 10-30 s under TCG, minutes on a busy machine
                       # (a hang is caught sooner, by STALL)
STALL = 90             # seconds without a progress line that count as a hang
GLOBAL_TIMEOUT = 1500  # global pressure under TCG: swapping 100+ MB takes minutes
MIN_RATIO = 1.5        # "mixed" pages are half one repeated word: about 2:1
MiB = 1 << 20
SLACK_SECTORS = 2048   # uzram may see up to 1 MiB more than the guest device counted

# mm_stat fields
ORIG, COMPR, MEM_USED, SAME = 0, 1, 2, 5
# stat fields (the block layer's, 0-based): sectors read / written / discarded
READ_IOS, READ_SECTORS, WRITE_IOS, WRITE_SECTORS, DISCARD_IOS, DISCARD_SECTORS = 0, 2, 4, 6, 11, 13


def check_swap(run: GuestRun, hold_mm: list[int], hold_stat: list[int],
               end_mm: list[int], end_stat: list[int], hold_written_back: int = 0,
               end_written_back: int = 0) -> None:
    """The guest passed, and uzram's counters show that its swap went through uzram
    (``hold_written_back``, ``end_written_back``: pages on the backing device
    then, which mm_stat no longer counts; the pool of a device that wrote
    most of its pages back may hold more than the rest, until compaction)."""
    ctx = (f"\nuzram mm_stat hold {hold_mm} end {end_mm}\nuzram stat hold {hold_stat} end {end_stat}"
           f"\nguest {run.guest}\nguest device stat {run.dev}\n{run.tail()}")
    assert not run.hung, f"the guest hung (no progress for {STALL}s){ctx}\n{run.tail(400)}"
    assert not run.timed_out, f"QEMU killed after {TIMEOUT}s{ctx}"
    assert run.passed, f"guest result: {run.result or 'none'}{ctx}"
    assert run.returncode == 0, f"QEMU exited with {run.returncode}{ctx}"
    assert {"hold", "end"} <= run.guest.keys() and {"hold", "end"} <= run.dev.keys(), ctx
    assert len(hold_mm) == len(end_mm) == 9 and len(hold_stat) == len(end_stat) == 17, (
        f"uzram's counters were not read at the hold point and at the end{ctx}")
    hold, end = run.guest["hold"], run.guest["end"]
    assert end["pswpout"] > 0 and end["pswpin"] > 0, ctx

    # while memhog holds its memory, uzram stores what the guest has in swap,
    # compressed (same-filled pages are kept as just their word)
    swap_used = int(hold["swap_used_kb"]) * 1024
    assert swap_used >= 32 * MiB, f"guest swap in use only {swap_used} bytes{ctx}"
    stored = hold_mm[ORIG] + hold_written_back * 4096
    assert stored >= 0.8 * swap_used, f"uzram stores less than the guest has in swap{ctx}"
    assert 0 < hold_mm[COMPR] and hold_mm[ORIG] / hold_mm[COMPR] > MIN_RATIO, f"compression ratio{ctx}"
    assert 0 < hold_mm[MEM_USED] and (hold_written_back or hold_mm[MEM_USED] < hold_mm[ORIG]), f"pool size{ctx}"
    assert hold_mm[SAME] > 0, f"memhog's same-filled pages not detected{ctx}"

    # uzram saw every sector the guest's block device moved: a request the
    # guest counts as done was answered by uzram. At the hold point swap-out
    # may still be going on between the guest's reading of its counters and
    # uzram's, so only the lower bound holds there; at the end the system is
    # quiet and the counts must agree (QEMU may split or merge requests and
    # read a little on its own, hence a small slack).
    for label, st in (("hold", hold_stat), ("end", end_stat)):
        dev = run.dev[label]
        for field in (READ_SECTORS, WRITE_SECTORS, DISCARD_SECTORS):
            upper = dev[field] + SLACK_SECTORS if label == "end" else st[field]
            assert dev[field] <= st[field] <= upper, (
                f"{label}: stat field {field}: uzram {st[field]}, guest /dev {dev[field]}{ctx}")
    assert end_stat[WRITE_IOS] > 0 and end_stat[READ_IOS] > 0, ctx
    assert end["write_sectors"] * 512 >= swap_used and end["read_sectors"] > 0, ctx

    # memhog's exit freed its swap clusters: swap discarded them (TRIM) and
    # uzram dropped those pages
    assert end["discard_sectors"] > 0, f"the guest issued no discards (swapon -d){ctx}"
    assert end_stat[DISCARD_IOS] > 0, ctx
    assert end_mm[ORIG] + end_written_back * 4096 < stored // 2, f"discards did not free uzram's pages{ctx}"
    print(f"uzram at hold: {hold_mm[ORIG] >> 20} MiB stored in {hold_mm[COMPR] >> 20} MiB "
          f"(ratio {hold_mm[ORIG] / hold_mm[COMPR]:.2f}, {hold_mm[SAME]} same-filled pages); "
          f"sectors read/written/discarded: {end_stat[READ_SECTORS]}/{end_stat[WRITE_SECTORS]}/"
          f"{end_stat[DISCARD_SECTORS]}; after discards {end_mm[ORIG] >> 20} MiB stored")


def boot(assets: QemuAssets, cfg: GuestConfig, devices: list[str], workdir: Path,
         on_hold: Callable[[], None] | None = None, timeout: float = TIMEOUT,
         stall: float = STALL) -> GuestRun:
    """Build this guest's initramfs in ``workdir``, boot it, return what it printed."""
    initrd = build_initramfs(assets.kernel, cfg, assets.memhog, assets.busybox, workdir / "initramfs.cpio")
    monitor = workdir / "monitor.sock"
    cmd = qemu_command(assets.kernel, initrd, cfg.mem_mb, devices, monitor)
    run = run_guest(cmd, workdir / f"console-{cfg.mode}.log", timeout, on_hold, stall, monitor)
    print(f"mode {cfg.mode}: QEMU ran {run.seconds:.1f}s: {'HUNG' if run.hung else run.result}")
    return run


def guest_uzramd(mem_mb: int, hog_mb: int, hog_passes: int, hog_memory_high: str,
                 daemon_options: str = "", device: str = "comp_algorithm=lz4,disksize=512M",
                 sysctls: str = "", nbd_client_opts: str = "-b 4096", writeback_every: int = 0) -> GuestConfig:
    """Mode B: uzramd in the guest (from this checkout and its venv), nbd.ko attached.
    With ``writeback_every``, zram0 writes back to the guest's virtio disk
    (``backing_disk``) and idle pages are written back that often (seconds)."""
    repo = Path(__file__).resolve().parents[2]
    nbd_sock, ctl_sock = "/run/uzram/nbd.sock", "/run/uzram/control.sock"
    daemon_args = (f"-q --listen unix:{nbd_sock} --control {ctl_sock} "
                   f"--device zram0:{device} {daemon_options}").strip()
    return GuestConfig("b", mem_mb=mem_mb, hog_mb=hog_mb, hog_passes=hog_passes,
                       hog_memory_high=hog_memory_high, extra={
                           "PY": sys.executable, "REPO": str(repo), "DAEMON_ARGS": daemon_args,
                           "NBD_SOCK": nbd_sock, "CTL_SOCK": ctl_sock, "NBD_CLIENT_OPTS": nbd_client_opts,
                           "SYSCTLS": sysctls,
                           "WRITEBACK_EVERY": str(writeback_every) if writeback_every else ""},
                       modules=("virtio_blk",) if writeback_every else ())


PRODUCT_SYSCTLS = "vm.min_free_kbytes=16384 vm.watermark_scale_factor=500"   # as systemd/uzram-swap
BACKING_DEV = "/dev/vda"      # the guest's first virtio disk (mode B has no other)
BACKING_MB = 512
WRITEBACK_EVERY = 10          # seconds between rounds of idle writeback in the guest

# the global-pressure variants: zram0's algorithm, and writeback to a virtio disk.
# 512M, 4/3 of the guest's RAM: swap then runs over half full and frees a
# slot as its page is swapped in, the page goes to a new slot when evicted
# again, and over NBD the old slot's copy stays in uzram until its whole
# cluster is discarded. Before uzramd shared such re-swapped pages
# (--dedup) the hog was OOM-killed here in its verify passes.
GLOBAL_DISKSIZE = "512M"
GLOBAL_VARIANTS = {
    "lz4": (f"comp_algorithm=lz4,disksize={GLOBAL_DISKSIZE}", 0),
    "zstd": (f"comp_algorithm=zstd,disksize={GLOBAL_DISKSIZE}", 0),
    "lz4-writeback": (f"backing_dev={BACKING_DEV},comp_algorithm=lz4,disksize={GLOBAL_DISKSIZE}",
                      WRITEBACK_EVERY),
}


def global_pressure(daemon_options: str = "--swap", device: str = GLOBAL_VARIANTS["lz4"][0],
                    sysctls: str = PRODUCT_SYSCTLS, writeback_every: int = 0) -> GuestConfig:
    """384 MB guest, a 320 MB hog with no cgroup limit, two verify passes;
    the guest settings are those systemd/uzram-swap makes. With
    ``writeback_every``, ``device`` should name BACKING_DEV as backing_dev and
    the guest gets that disk (:func:`global_pressure_devices`)."""
    return guest_uzramd(384, 320, 2, "", daemon_options, device, sysctls, "-b 4096 -swap", writeback_every)


def global_pressure_devices(cfg: GuestConfig, workdir: Path) -> list[str]:
    """QEMU's devices for a global-pressure guest: the host's / over 9p, and
    the backing disk when the guest writes back."""
    devices = host_root_9p()
    if cfg.extra.get("WRITEBACK_EVERY"):
        devices += backing_disk(workdir / "backing.img", BACKING_MB << 20)
    return devices


def check_guest_swap(run: GuestRun, writeback: bool = False) -> None:
    server = {k: run.server.get(k, []) for k in (("hold", "mm_stat"), ("hold", "stat"),
                                                 ("end", "mm_stat"), ("end", "stat"))}
    hold_bd = run.server.get(("hold", "bd_stat"), [0])
    end_bd = run.server.get(("end", "bd_stat"), [0])
    check_swap(run, *server.values(), hold_written_back=hold_bd[0] if writeback else 0,
               end_written_back=end_bd[0] if writeback else 0)
    assert run.guest.get("server", {}).get("rc") == 0, "uzramd in the guest did not exit 0 on SIGTERM"
    counters = run.server.get(("end", "hardening"))
    if counters is not None:
        print("uzramd: " + ", ".join(f"{k} {v}" for k, v in zip(HARDENING, counters)))
        got = dict(zip(HARDENING, counters))
        # the guest's root may set PR_SET_IO_FLUSHER: the feed must have undone it
        assert got["feeds_reclaim_io"] == got["feeds"], f"a pool feed cannot swap out in its reclaim: {got}"
    if writeback:
        assert len(end_bd) == 3 and end_bd[2] > 0, f"no page was written back: bd_stat {end_bd}\n{run.tail()}"
        print(f"written back: {end_bd[2]} pages, read back {end_bd[1]}; on the disk at hold {hold_bd[0]}")


def test_swap_host_uzramd_qemu_nbd_client(qemu_assets: QemuAssets, short_tmp: Path, tmp_path: Path) -> None:
    """Mode A: host uzramd <- QEMU NBD client <- virtio-blk /dev/vda <- guest swap."""
    cfg = GuestConfig("a", mem_mb=128, hog_mb=192, hog_passes=2)
    with uzramd(short_tmp, devices=("zram0:comp_algorithm=zstd,disksize=512M",)) as d:
        held: dict[str, list[int]] = {}

        def on_hold() -> None:
            held["mm_stat"] = d.mm_stat()
            held["stat"] = [int(x) for x in d.show("zram0", "stat").split()]

        run = boot(qemu_assets, cfg, nbd_disk(d.nbd_sock), tmp_path, on_hold)
        alive = d.alive()
        end_mm = d.mm_stat() if alive else []
        end_stat = [int(x) for x in d.show("zram0", "stat").split()] if alive else []
        rc = d.stop()
    assert alive, f"uzramd died ({rc}):\n{(short_tmp / 'uzramd.log').read_text()}\n{run.tail()}"
    check_swap(run, held.get("mm_stat", []), held.get("stat", []), end_mm, end_stat)
    assert rc == 0, f"uzramd exited with {rc} on SIGTERM"


def test_swap_guest_uzramd_nbd_ko(qemu_assets: QemuAssets, tmp_path: Path) -> None:
    """Mode B: guest swap -> /dev/nbd0 (nbd.ko) -> uzramd in the guest, from the host's venv."""
    try:
        ensure_packages(["nbd-client"])
    except Unavailable as e:
        pytest.skip(str(e))
    cfg = guest_uzramd(384, 192, 1, "64M")
    check_guest_swap(boot(qemu_assets, cfg, host_root_9p(), tmp_path))


@pytest.mark.parametrize("variant", [v if v == "lz4" else pytest.param(v, marks=pytest.mark.stress)
                                     for v in GLOBAL_VARIANTS])
def test_swap_guest_uzramd_global_pressure(qemu_assets: QemuAssets, tmp_path: Path, variant: str) -> None:
    """Mode B, the whole guest short of memory: uzramd must keep serving
    swap-outs, with lz4 (in every run of the suite: about 10 minutes), and
    when asked (``-m stress``) with zstd and with lz4 while idle pages are
    written back to a virtio disk in the guest."""
    try:
        ensure_packages(["nbd-client"])
    except Unavailable as e:
        pytest.skip(str(e))
    device, writeback_every = GLOBAL_VARIANTS[variant]
    cfg = global_pressure(device=device, writeback_every=writeback_every)
    run = boot(qemu_assets, cfg, global_pressure_devices(cfg, tmp_path), tmp_path, timeout=GLOBAL_TIMEOUT)
    check_guest_swap(run, writeback=bool(writeback_every))
