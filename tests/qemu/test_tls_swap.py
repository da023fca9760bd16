"""The kernel's NBD client over TLS: swap in a QEMU guest on nbd.ko, whose
nbd-client starts TLS with a client certificate (its TLS proxy then carries
every request of the kernel), against uzramd in the guest with
``--tls-verify-peer``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ..tlscerts import make_certs
from .test_swap import READ_SECTORS, WRITE_SECTORS
from .vm import (GuestConfig, QemuAssets, Unavailable, build_initramfs, ensure_packages, host_root_9p,
                 qemu_command, run_guest)

pytestmark = pytest.mark.qemu
TIMEOUT = 600   # TLS in software under TCG, on a shared machine


def test_swap_guest_uzramd_nbd_ko_over_tls(qemu_assets: QemuAssets, tmp_path: Path) -> None:
    try:
        ensure_packages(["nbd-client"])
    except Unavailable as e:
        pytest.skip(str(e))
    certs = make_certs(tmp_path / "pki")  # the host's /tmp is the guest's
    repo = Path(__file__).resolve().parents[2]
    nbd_sock, ctl_sock = "/run/uzram/nbd.sock", "/run/uzram/control.sock"
    daemon_args = (f"-q --listen unix:{nbd_sock} --control {ctl_sock} "
                   f"--tls on --tls-certificates {certs.server} --tls-verify-peer "
                   "--device zram0:comp_algorithm=lz4,disksize=512M")
    # any reply but ACK to STARTTLS, or a failed TLS handshake, is fatal to nbd-client
    client = (f"-b 4096 -cacertfile {certs.client}/ca-cert.pem -certfile {certs.client}/client-cert.pem "
              f"-keyfile {certs.client}/client-key.pem -tlshostname localhost")
    # a lighter load than the plaintext swap test (tests/qemu/test_swap.py):
    # this one shows the TLS path, not the swap accounting
    cfg = GuestConfig("b", mem_mb=384, hog_mb=88, hog_passes=1, hog_memory_high="64M", extra={
        "PY": sys.executable, "REPO": str(repo), "DAEMON_ARGS": daemon_args,
        "NBD_SOCK": nbd_sock, "CTL_SOCK": ctl_sock, "NBD_CLIENT_OPTS": client})
    initrd = build_initramfs(qemu_assets.kernel, cfg, qemu_assets.memhog, qemu_assets.busybox,
                             tmp_path / "initramfs.cpio")
    run = run_guest(qemu_command(qemu_assets.kernel, initrd, cfg.mem_mb, host_root_9p()),
                    tmp_path / "console-b.log", TIMEOUT)
    print(f"TLS mode b: QEMU ran {run.seconds:.1f}s: {run.result}")
    ctx = f"\nguest {run.guest}\nserver {run.server}\n{run.tail()}"
    assert not run.timed_out, f"QEMU killed after {TIMEOUT}s{ctx}"
    assert run.passed and run.returncode == 0, f"guest result: {run.result or 'none'}{ctx}"
    end = run.guest["end"]
    assert end["pswpout"] > 0 and end["pswpin"] > 0, ctx
    # every sector the guest's /dev/nbd0 moved went through uzram, over TLS
    stat = run.server.get(("end", "stat"), [])
    assert len(stat) == 17, ctx
    for field in (READ_SECTORS, WRITE_SECTORS):
        assert run.dev["end"][field] <= stat[field], ctx
    assert end["write_sectors"] > 0, ctx
    assert run.guest.get("server", {}).get("rc") == 0, "uzramd in the guest did not exit 0 on SIGTERM"
