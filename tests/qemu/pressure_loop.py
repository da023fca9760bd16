"""Repeat the global-pressure swap run and count passes, failures and hangs.

Not a test: a measuring tool for uzramd's memory measures. Each run boots a
384 MB guest under TCG that swaps a 320 MB verifying hog through nbd.ko onto
uzramd in the same guest (see ``test_swap.global_pressure``). Example::

    .venv/bin/python -m tests.qemu.pressure_loop -n 20
    .venv/bin/python -m tests.qemu.pressure_loop -n 5 --variant zstd \\
        --sysctls ""        # without the guest settings uzram-swap makes
    .venv/bin/python -m tests.qemu.pressure_loop -n 5 --variant lz4-writeback
    .venv/bin/python -m tests.qemu.pressure_loop -n 5 --kernel-zram   # the anchor

Console logs are kept in ``--workdir`` (one folder per run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from .guestkernel import fetch
from .test_swap import (GLOBAL_TIMEOUT, GLOBAL_VARIANTS, PRODUCT_SYSCTLS, STALL, boot, check_guest_swap,
                        global_pressure, global_pressure_devices)
from .vm import CACHE, GuestConfig, QemuAssets, build_memhog, ensure_packages, static_busybox


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pressure_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--runs", type=int, default=20)
    p.add_argument("--daemon-options", default="--swap", help="uzramd options (default --swap)")
    p.add_argument("--variant", choices=GLOBAL_VARIANTS, default="lz4",
                   help="the stress test's variant: zram0's attributes and writeback (default lz4)")
    p.add_argument("--device", help="zram0's attributes instead of the variant's")
    p.add_argument("--sysctls", default=PRODUCT_SYSCTLS,
                   help=f'guest sysctls (default, as systemd/uzram-swap: "{PRODUCT_SYSCTLS}"; "" for none)')
    p.add_argument("--stall", type=float, default=STALL, help="seconds without progress = hang")
    p.add_argument("--timeout", type=float, default=GLOBAL_TIMEOUT)
    p.add_argument("--workdir", type=Path, default=CACHE / "pressure")
    p.add_argument("--stop-on-hang", action="store_true")
    p.add_argument("--kernel-zram", action="store_true",
                   help="the anchor: the same guest and hog swapping on the guest kernel's own zram0 "
                        "(the variant's algorithm and disksize), no uzramd")
    args = p.parse_args(argv)

    ensure_packages(["qemu-system-x86", "busybox-static", "gcc", "libc6-dev", "nbd-client"])
    busybox = static_busybox()
    assert busybox is not None
    assets = QemuAssets(fetch(CACHE), build_memhog(CACHE), busybox, CACHE)
    device, writeback_every = GLOBAL_VARIANTS[args.variant]
    args.device = args.device or device
    cfg = global_pressure(args.daemon_options, args.device, args.sysctls, writeback_every)
    if args.kernel_zram:
        alg = args.device.split("comp_algorithm=")[1].split(",")[0]
        size = args.device.split("disksize=")[1].split(",")[0]
        cfg = GuestConfig("k", mem_mb=cfg.mem_mb, hog_mb=cfg.hog_mb, hog_passes=cfg.hog_passes,
                          extra={"SYSCTLS": args.sysctls, "ZRAM_ALGORITHM": alg, "ZRAM_DISKSIZE": size},
                          modules=("zstd",) if alg == "zstd" else ())
        writeback_every = 0
    counts = {"pass": 0, "fail": 0, "hang": 0}
    times: list[float] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, args.runs + 1):
        work = args.workdir / f"{stamp}-{i:02d}"
        work.mkdir(parents=True, exist_ok=True)
        run = boot(assets, cfg, global_pressure_devices(cfg, work), work, timeout=args.timeout, stall=args.stall)
        if run.hung:
            outcome, why = "hang", f"no progress for {args.stall:.0f}s after: {run.last_progress}"
        elif args.kernel_zram:
            outcome, why = ("pass" if run.passed else "fail"), run.result or "no result"
            if run.passed:
                times.append(run.seconds)
        else:
            try:
                check_guest_swap(run, writeback=bool(writeback_every))
                outcome, why = "pass", run.result
                times.append(run.seconds)
            except AssertionError as e:
                outcome, why = "fail", str(e).splitlines()[0]
        counts[outcome] += 1
        (work / "outcome.txt").write_text(f"{outcome} {why}\n" + "\n".join(run.lines) + "\n")
        print(f"run {i}/{args.runs}: {outcome.upper()} in {run.seconds:.0f}s: {why[:160]} ({work})",
              flush=True)
        if outcome == "hang" and args.stop_on_hang:
            break
    ran = sum(counts.values())
    spread = (f"; pass times {min(times):.0f}-{max(times):.0f}s, median {statistics.median(times):.0f}s"
              if times else "")
    print(f"{ran} runs: {counts['pass']} passed, {counts['fail']} failed, {counts['hang']} hung{spread}"
          f" [variant {args.variant}, device {args.device}; "
          f"{'the kernel' + chr(39) + 's zram' if args.kernel_zram else 'uzramd ' + (args.daemon_options or '(defaults)')}; "
          f"sysctls {args.sysctls or 'none'}]")
    return 0 if counts["pass"] == ran else 1


if __name__ == "__main__":
    sys.exit(main())
