"""uzramctl --debug histogram: zsmalloc's classes in use as text bars."""

from __future__ import annotations

import os

from uzram.ctl.histogram import parse_classes, render

from ..nbdclient import NBDClient


def test_bars_follow_the_classes_file(daemon, ctl):
    with NBDClient(daemon.nbd_sock, "zram0") as nbd:
        for i in range(30):   # 20 pages compress to one size, 10 to a much larger one
            keep = 200 if i < 20 else 2000
            nbd.pwrite(i * 4096, os.urandom(keep) + bytes(4096 - keep))
    classes = [r for r in parse_classes(ctl("--debug", "classes", "zram0").out) if r["obj_used"]]
    assert sum(r["obj_used"] for r in classes) == 30
    r = ctl("--debug", "histogram", "zram0")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split()[:2] == ["size", "objects"]
    rows = {int(line.split()[0]): line for line in lines[1:-1]}
    assert sorted(rows) == sorted(c["size"] for c in classes)
    bars = {size: line.count("#") for size, line in rows.items()}
    big = max(classes, key=lambda c: c["obj_used"])
    assert bars[big["size"]] == max(bars.values()) and big["obj_used"] == 20
    small = min(classes, key=lambda c: c["obj_used"])
    assert bars[small["size"]] < bars[big["size"]]
    assert lines[-1] == f"{len(classes)} classes in use, 30 objects in {sum(c['pages_used'] for c in classes)} pages"


def test_empty_and_errors(daemon, ctl):
    assert render("") == "no objects stored\n"
    assert ctl("--debug", "histogram", "zram0").out == "no objects stored\n"
    r = ctl("--debug", "histogram", "zram9")
    assert r.rc == 1 and "zram9" in r.err
