"""zram-generator configurations: zram-generator's own example, the cases of its
man page and its tests, drop-ins, and uzramd started on such a file."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uzram.daemon import config, zramgen
from uzram.daemon.zramgen import MiB, U64_MAX, Expression, ZramGenError

from ..daemon import uzramd

DATA = Path(__file__).parent / "data"
EXAMPLE = DATA / "zram-generator.conf.example"


def size(expr: str | None, ram: int, variables: dict[str, float] | None = None) -> int:
    """A [zram0] with this zram-size on a machine with ``ram`` MiB: its disksize."""
    dev = zramgen.GenDevice("zram0")
    if expr is not None:
        zramgen.apply_key(dev, "zram-size", expr, print)
    zramgen._size(dev, ram, {"ram": float(ram), **(variables or {})}, print)
    return dev.disksize


@pytest.mark.parametrize("expr,ram,mib", [
    (None, 100, 50), (None, 10000, 4096),                         # the default
    ("min(ram / 2, 4096)", 1024, 512), ("min(ram / 2, 4096)", 8192, 4096),
    ("0.5 * ram", 100, 50), ("0.5 * ram * two", 100, 100),
    ("500", 5000, 500), ("500k", 5000, 500_000), ("32G", 5000, 32_000_000_000),
    ("min(0.5 * ram, 4000)", 3000, 1500),
    ("ram / 10", 8000, 800), ("min(ram / 10, 2048)", 30000, 2048),
    # the man page's piecewise-linear example: 1:1 up to 4G, then 1:2, at most 32G
    ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 1024, 1024),
    ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 12288, 8192),
    ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 61440, 32768),
    ("(ram + 1) * 2 - [3]", 10, 19),
])
def test_zram_size_expressions(expr, ram, mib):
    assert size(expr, ram, {"two": 2.0}) == mib * MiB


def test_fasteval_semantics():
    """Where the expression language differs from Python's arithmetic."""
    ev = lambda text: Expression(text).evaluate({"ram": 1000.0})  # noqa: E731
    assert ev("-2^2") == 4          # unary minus binds to the value, not to the power
    assert ev("2^3^2") == 512       # exponentiation right to left
    assert ev("7 % 4 * 2") == 6
    assert ev("2 < 3 && 7") == 7 and ev("0 || 5") == 5
    assert ev("round(2.5)") == 3 and ev("round(10, 1234)") == 1230 and ev("int(-2.7)") == -2
    assert ev("log(1000)") == pytest.approx(3) and ev("log(2, 8)") == pytest.approx(3)
    assert ev("e()") == math.e and ev("pi()") == math.pi
    assert ev("1.5m") == pytest.approx(0.0015)


def test_size_errors_and_infinity():
    with pytest.raises(ZramGenError, match="< 0"):
        size("(ram-100)/0", 100)           # NaN
    with pytest.raises(ZramGenError, match="< 0"):
        size("ram - 200", 100)
    assert size("(ram-99)/0", 100) == U64_MAX  # +inf saturates, as zram-generator's cast
    with pytest.raises(ZramGenError, match="undefined function 'array'"):
        size("array(1,2)", 100)
    with pytest.raises(ZramGenError, match="undefined variable 'rma'"):
        size("rma / 2", 100)
    with pytest.raises(ZramGenError, match="cannot parse"):
        Expression("min(ram / 2, ")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_example_config(tmp_path, monkeypatch):
    """zram-generator.conf.example as shipped: set! runs a program (a stand-in
    xenstore-read here) whose output becomes a variable of the expressions."""
    bindir = tmp_path / "bin"
    write(bindir / "xenstore-read", "#!/bin/sh\n[ \"$1\" = domid ] && echo 7 || echo 8192\n").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    plan = zramgen.read([EXAMPLE], ram_mb=8000)
    zram0, zram1 = plan.devices
    assert zram0.disksize == 800 * MiB                  # min(ram / 10, 2048)
    assert zram0.mem_limit == 6144 * MiB                # maxhotplug * 3/4
    assert zram0.algorithms == [("lzo-rle", ""), ("zstd", "level=3")]
    assert zram0.recompress_global == "type=idle"
    assert zram0.options == "" and zram0.swap_priority == 100
    warnings: list[str] = []
    assert zramgen.device_attrs(zram0, warnings.append) == [
        ("comp_algorithm", "lzo-rle"),
        ("recomp_algorithm", "algo=zstd priority=1"),
        ("algorithm_params", "priority=1 level=3"),
        ("backing_dev", "/dev/zvol/tarta-zoot/swap-writeback"),
        ("mem_limit", str(6144 * MiB)),
        ("disksize", str(800 * MiB)),
    ]
    assert any("uzramctl --recompress 'type=idle' zram0" in w for w in warnings)
    assert zramgen.swap_settings(zram0) == {"SWAP_PRIORITY": "100", "SWAP_OPTIONS": "", "FS_TYPE": "swap"}
    assert zram1.disksize == 800 * MiB and zram1.effective_fs_type == "ext2"
    warnings.clear()
    zramgen.device_attrs(zram1, warnings.append)
    assert any("does not format or mount" in w and "/run/compressed-mount-point" in w for w in warnings)
    # above host-memory-limit (9048 MiB) zram0 is not created
    assert [d.name for d in zramgen.read([EXAMPLE], ram_mb=10000).devices] == ["zram1"]


def test_obsolete_keys_override_zram_size(tmp_path):
    conf = write(tmp_path / "z.conf", "[zram0]\nzram-size = ram\nzram-fraction = 0.10\nmax-zram-size = 2048\n"
                 "[zram1]\nmax-zram-size = 100\n[zram2]\nzram-fraction = 1\nmax-zram-size = none\n")
    plan = zramgen.read([conf], ram_mb=8000)
    assert [d.disksize // MiB for d in plan.devices] == [800, 100, 8000]


def test_dropins_in_zram_generators_search_order(tmp_path):
    """zram-generator's own drop-in case: a later directory's file replaces an
    earlier one of the same name, files apply in name order, last value wins."""
    root = tmp_path / "root"
    write(root / "usr/lib/systemd/zram-generator.conf", "[zram0]\n")
    d = root / "usr/lib/systemd/zram-generator.conf.d"
    write(d / "01-drop1.conf", "[zram0]\nhost-memory-limit=1234\n")
    write(d / "02-drop2.conf", "[zram0]\nhost-memory-limit=1235\n")
    write(d / "03-drop3.conf", "[zram0]\nhost-memory-limit=1236\n\n[zram1]\nzram-size=ram*0.7\n")
    e = root / "etc/systemd/zram-generator.conf.d"
    write(e / "zram-generator.conf", "# not the main file\n")
    write(e / "03-drop3.conf", "")                      # replaces usr/lib's: no zram1
    write(e / "04-drop4.conf", "[zram2]\nzram-size=ram*0.8\nswap-priority=200\noptions=\n")
    write(e / "05-masked.conf", "")
    (e / "05-masked.conf").unlink()
    (e / "05-masked.conf").symlink_to("/dev/null")
    files = zramgen.locate_fragments(root)
    assert files[0] == root / "usr/lib/systemd/zram-generator.conf"
    plan = zramgen.read(files, ram_mb=782)               # MemTotal 801322 kB
    assert [(d.name, d.disksize, d.swap_priority, d.options) for d in plan.devices] == [
        ("zram0", 391 * MiB, 100, "discard"),
        ("zram2", int(782 * 0.8 * MiB), 200, ""),
    ]
    # given as a file, a standard location brings the whole search
    assert zramgen.fragments_for(root / "usr/lib/systemd/zram-generator.conf") == files


def test_own_dropin_dir_and_refusals(tmp_path):
    conf = write(tmp_path / "my.conf", "[zram0]\nzram-size = 64\n[other]\nx = 1\n")
    write(tmp_path / "my.conf.d/10-prio.conf", "[zram0]\nswap-priority = 5\nno-such-key = 1\n")
    plan = zramgen.read(zramgen.fragments_for(conf), ram_mb=1000)
    assert plan.devices[0].swap_priority == 5
    assert any("ignoring section [other]" in w for w in plan.warnings)
    assert any("unknown key no-such-key" in w for w in plan.warnings)
    for bad, msg in [("swap-priority = 40000", "out of range"), ("writeback-device = dev/sdb", "not absolute"),
                     ("mount-point = /a/../b", "not normalized"), ("zram-fraction = -1", "< 0"),
                     ("host-memory-limit = lots", "'none'")]:
        write(conf, f"[zram0]\n{bad}\n")
        with pytest.raises(ZramGenError, match=msg):
            zramgen.read([conf], ram_mb=1000)


def test_config_detects_zram_generator_files(tmp_path):
    conf = write(tmp_path / "zram-generator.conf",
                 "[zram0]\nzram-size = min(ram / 2, 64)\ncompression-algorithm = zstd(level=1) lz4hc\n")
    cfg = config.build(str(conf), [], None, [])
    assert cfg.devices[0].attrs == [("comp_algorithm", "zstd"), ("algorithm_params", "algo=zstd level=1"),
                                    ("recomp_algorithm", "algo=lz4hc priority=1"),
                                    ("mem_limit", "0"), ("disksize", str(64 * MiB))]
    # only defaults: recognised by its name, zram0 of zram-generator's default size
    bare = write(tmp_path / "etc/systemd/zram-generator.conf", "[zram0]\n")
    ram = zramgen.memtotal_mb()
    assert config.build(str(bare), [], None, []).devices[0].attrs[-1] == (
        "disksize", str(int(min(ram / 2, 4096) * MiB)))
    toml = write(tmp_path / "uzramd.toml", '[zram0]\ncomp_algorithm = "zstd"\ndisksize = "1M"\n')
    assert config.build(str(toml), [], None, []).devices[0].attrs == [("comp_algorithm", "zstd"),
                                                                       ("disksize", "1M")]


def test_uzramd_runs_a_zram_generator_config(tmp_path):
    conf = write(tmp_path / "zram-generator.conf",
                 "[zram0]\nzram-size = 64\ncompression-algorithm = zstd(level=5) deflate\n"
                 "zram-resident-limit = 32\nswap-priority = 7\noptions = discard=pages\n"
                 "[zram3]\nzram-size = 16\nfs-type = ext4\n")
    with uzramd(tmp_path / "d", "--zram-generator-config", str(conf), devices=()) as d:
        assert d.show("zram0", "disksize") == f"{64 * MiB}\n"
        assert "[zstd]" in d.show("zram0", "comp_algorithm")
        assert "#1: " in d.show("zram0", "recomp_algorithm") and "[deflate]" in d.show("zram0", "recomp_algorithm")
        assert d.show("zram3", "disksize") == f"{16 * MiB}\n"
        swap = (d.workdir / "zram0.swap").read_text()
        assert swap == "SWAP_PRIORITY=7\nSWAP_OPTIONS=discard=pages\nFS_TYPE=swap\n"
        assert "FS_TYPE=ext4" in (d.workdir / "zram3.swap").read_text()
        out = subprocess.run(["nbdinfo", "--size", d.uri("zram3")], capture_output=True, text=True, check=True)
        assert int(out.stdout) == 16 * MiB
    log = (tmp_path / "d/uzramd.log").read_text()
    assert "does not format or mount" in log
    assert not (tmp_path / "d/zram0.swap").exists()


def test_uzramd_refuses_a_bad_zram_generator_config(tmp_path):
    conf = write(tmp_path / "zram-generator.conf", "[zram0]\nzram-size = ram / \n")
    r = subprocess.run([sys.executable, "-m", "uzram.daemon", "--config", str(conf),
                        "--control", str(tmp_path / "c.sock")], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot parse" in r.stderr and "zram-size" in r.stderr
