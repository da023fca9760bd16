"""zram-generator's configuration (``zram-generator.conf`` and its ``.conf.d``
drop-ins), turned into uzramd's device plan.

The semantics follow zram-generator(8) and zram-generator.conf(5):

* files: the main file first, then the drop-ins sorted by file name; a later
  value of a key overrides an earlier one, ``[zramN]`` sections merge;
* sizes: ``zram-size`` and ``zram-resident-limit`` are expressions in MiB of
  ``ram`` (MemTotal in whole MiB) evaluated in double precision the way the
  ``fasteval`` crate does (``sizeexpr.py``); the obsolete
  ``zram-fraction``/``max-zram-size`` override ``zram-size``;
* ``host-memory-limit`` drops a device on a larger machine; devices of size
  0 are dropped;
* ``compression-algorithm``: the first algorithm is ``comp_algorithm`` (its
  parameters go to ``algorithm_params``), the next ones are
  ``recomp_algorithm`` with priorities 1, 2, ...;
* ``swap-priority`` and ``options`` are for the swap unit (``uzram-swap``);
  ``fs-type``/``mount-point`` cannot be applied by a daemon that serves block
  devices over NBD: the device is created and the client formats and mounts it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# re-exported: the errors and expressions of a zram-generator configuration
from .sizeexpr import Expression as Expression, ZramGenError as ZramGenError

MiB = 1 << 20
U64_MAX = (1 << 64) - 1
DEFAULT_ZRAM_SIZE = "min(ram / 2, 4096)"
BASE_DIRS = ("usr/lib", "usr/local/lib", "etc", "run")
MAIN_NAME = "systemd/zram-generator.conf"
DROPIN_DIR = "systemd/zram-generator.conf.d"


def mib_to_bytes(mib: float, what: str) -> int:
    """zram-generator's ``(f * 1024 * 1024) as u64`` after refusing negative (and NaN) sizes."""
    if not mib >= 0:
        raise ZramGenError(f"{what}={mib} < 0")
    b = mib * 1024.0 * 1024.0
    return U64_MAX if b >= 2.0 ** 64 else int(b)


# -- files ----------------------------------------------------------------------------

def parse_ini(text: str, path: str) -> list[tuple[str | None, str, str]]:
    """``(section, key, value)`` in file order (section None before any header;
    key "" for a section header)."""
    out: list[tuple[str | None, str, str]] = []
    section: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ZramGenError(f"{path}:{n}: unterminated section header {line!r}")
            section = line[1:-1].strip()
            out.append((section, "", ""))  # a section exists even without keys
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ZramGenError(f"{path}:{n}: expected key = value, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.append((section, key.strip(), value))
    return out


def locate_fragments(root: Path = Path("/"), main: Path | None = None) -> list[Path]:
    """zram-generator's search: the main file (the last of the four base
    directories that has one, unless ``main`` is given), then every
    ``zram-generator.conf.d/*.conf`` sorted by name, a later directory's file
    replacing an earlier one of the same name and a link to /dev/null masking it."""
    dropins: dict[str, Path] = {}
    for base in BASE_DIRS:
        d = root / base / DROPIN_DIR
        if d.is_dir():
            for p in d.iterdir():
                if p.name.endswith(".conf"):
                    dropins[p.name] = p
    files = [dropins[n] for n in sorted(dropins)
             if not (dropins[n].is_symlink() and os.path.realpath(dropins[n]) == "/dev/null")]
    if main is None:
        main = next((p for p in (root / b / MAIN_NAME for b in reversed(BASE_DIRS)) if p.exists()), None)
    return ([main] if main is not None else []) + files


def fragments_for(path: Path) -> list[Path]:
    """The files read for ``--zram-generator-config PATH``: a standard location
    brings zram-generator's whole search; any other file its own ``PATH.d/*.conf``."""
    resolved = path.absolute()
    for base in BASE_DIRS:
        suffix = Path(base) / MAIN_NAME
        parts = resolved.parts
        if parts[-len(suffix.parts):] == suffix.parts:
            root = Path(*parts[: len(parts) - len(suffix.parts)]) if len(parts) > len(suffix.parts) else Path("/")
            return locate_fragments(root, main=path)
    d = Path(str(path) + ".d")
    extra = sorted(p for p in d.glob("*.conf")) if d.is_dir() else []
    return [path] + [p for p in extra if not (p.is_symlink() and os.path.realpath(p) == "/dev/null")]


def looks_like_zram_generator(text: str) -> bool:
    """True for an INI file with zram-generator keys (uzramd's own file is TOML)."""
    keys = {"zram-size", "zram-fraction", "max-zram-size", "compression-algorithm", "swap-priority",
            "host-memory-limit", "memory-limit", "zram-resident-limit", "writeback-device",
            "fs-type", "mount-point", "options"}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("set!"):
            return True
        key, eq, _ = s.partition("=")
        if eq and key.strip() in keys:
            return True
    return False


def memtotal_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal in whole MiB, as zram-generator's ``ram``."""
    try:
        for line in meminfo.read_text().splitlines():
            f = line.split()
            if len(f) >= 2 and f[0] == "MemTotal:":
                return int(int(f[1]) / 1024)
    except OSError as e:
        raise ZramGenError(f"cannot read {meminfo}: {e.strerror}") from e
    raise ZramGenError(f"no MemTotal in {meminfo}")


# -- devices --------------------------------------------------------------------------

@dataclass
class GenDevice:
    """One ``[zramN]`` section after every file was read."""
    name: str
    host_memory_limit_mb: int | None = None
    zram_size: Expression | None = None
    resident_limit: Expression | None = None
    algorithms: list[tuple[str, str]] = field(default_factory=list)
    recompress_global: str = ""
    writeback_device: str | None = None
    swap_priority: int = 100
    mount_point: str | None = None
    fs_type: str | None = None
    options: str = "discard"
    zram_fraction: float | None = None
    max_zram_size_mb: int | None | bool = False   # False: not given; None: "none"
    disksize: int = 0
    mem_limit: int = 0

    @property
    def is_swap(self) -> bool:
        return self.mount_point is None and self.fs_type in (None, "swap")

    @property
    def effective_fs_type(self) -> str:
        return self.fs_type or ("swap" if self.is_swap else "ext2")


def _optional_mb(value: str, key: str) -> int | None:
    if value == "none":
        return None
    if not value.isdigit():
        raise ZramGenError(f"{key}: expected a number of MiB or 'none', got {value!r}")
    return int(value)


def _abs_path(key: str, value: str) -> str:
    if not value.startswith("/"):
        raise ZramGenError(f"{key} {value} is not absolute")
    if ".." in value.split("/"):
        raise ZramGenError(f"{key} {value} is not normalized")
    return "/" + "/".join(p for p in value.split("/") if p not in ("", "."))


def _parse_algorithms(value: str) -> tuple[list[tuple[str, str]], str]:
    algos: list[tuple[str, str]] = []
    global_params = ""
    for word in value.split():
        algo, paren, params = word.partition("(")
        if paren:
            params = params[:-1] if params.endswith(")") else params
            params = params.replace(",", " ")
        if algo:
            algos.append((algo, params))
        else:
            global_params = params
    return algos, global_params


def apply_key(dev: GenDevice, key: str, value: str, warn: Callable[[str], None]) -> None:
    if key in ("host-memory-limit", "memory-limit"):
        dev.host_memory_limit_mb = _optional_mb(value, key)
    elif key == "zram-size":
        dev.zram_size = Expression(value)
    elif key == "zram-resident-limit":
        dev.resident_limit = Expression(value)
    elif key == "compression-algorithm":
        dev.algorithms, dev.recompress_global = _parse_algorithms(value)
    elif key == "writeback-device":
        dev.writeback_device = _abs_path(key, value)
    elif key == "swap-priority":
        try:
            prio = int(value)
        except ValueError:
            raise ZramGenError(f"{dev.name}: failed to parse priority {value!r}") from None
        if not -1 <= prio <= 0x7FFF:
            raise ZramGenError(f"{dev.name}: swap priority {prio} out of range (-1..32767)")
        dev.swap_priority = prio
    elif key == "mount-point":
        dev.mount_point = _abs_path(key, value)
    elif key == "fs-type":
        dev.fs_type = value
    elif key == "options":
        dev.options = value
    elif key == "zram-fraction":
        try:
            frac = float(value)
        except ValueError:
            raise ZramGenError(f"{dev.name}: failed to parse zram-fraction {value!r}") from None
        if not frac >= 0:
            raise ZramGenError(f"{dev.name}: zram-fraction={frac} < 0")
        dev.zram_fraction = frac
    elif key == "max-zram-size":
        dev.max_zram_size_mb = _optional_mb(value, key)
    else:
        warn(f"{dev.name}: unknown key {key}, ignoring")


def _run_set(program: str, variables: dict[str, float], where: str, warn: Callable[[str], None]) -> float:
    """``set!VAR = program``: /bin/sh -c program, its output an expression."""
    try:
        out = subprocess.run(["/bin/sh", "-c", "--", program], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, check=False)
    except OSError as e:
        raise ZramGenError(f"{where}: {program}: {e.strerror}") from e
    if out.returncode != 0:
        warn(f"{where}: {program} exited {out.returncode}")
    text = out.stdout.decode(errors="replace")
    try:
        return Expression(text).evaluate(variables)
    except ZramGenError as e:
        raise ZramGenError(f"{where}: {program}: {text.strip()!r}: {e}") from e


@dataclass
class Plan:
    """What the files ask for: the devices to create (size > 0) and the warnings."""
    devices: list[GenDevice]
    warnings: list[str]
    ram_mb: int


def read(paths: list[Path], ram_mb: int | None = None) -> Plan:
    """Read zram-generator files in order and size the devices."""
    warnings: list[str] = []
    warn = warnings.append
    ram = memtotal_mb() if ram_mb is None else ram_mb
    variables: dict[str, float] = {"ram": float(ram)}
    devices: dict[str, GenDevice] = {}
    for path in paths:
        try:
            text = path.read_text()
        except OSError as e:
            raise ZramGenError(f"cannot read {path}: {e.strerror}") from e
        for section, key, value in parse_ini(text, str(path)):
            if section is None:
                op, bang, var = key.partition("!")
                if bang and op == "set":
                    variables[var] = _run_set(value, variables, f"{path}: {key}", warn)
                elif bang:
                    warn(f"{path}: unknown outside-of-section operation {op}!, ignoring")
                else:
                    warn(f"{path}: invalid outside-of-section key {key}, ignoring")
                continue
            if not (section.startswith("zram") and section[4:].isdigit()):
                if not key:
                    warn(f"{path}: ignoring section [{section}]")
                continue
            name = f"zram{int(section[4:])}"
            dev = devices.setdefault(name, GenDevice(name))
            if not key:
                continue
            try:
                apply_key(dev, key, value, warn)
            except ZramGenError as e:
                raise ZramGenError(f"{path}: [{section}] {key}: {e}") from e
    result = []
    for dev in sorted(devices.values(), key=lambda d: int(d.name[4:])):
        _size(dev, ram, variables, warn)
        if dev.disksize > 0:
            result.append(dev)
    return Plan(result, warnings, ram)


def _size(dev: GenDevice, ram: int, variables: dict[str, float], warn: Callable[[str], None]) -> None:
    if dev.host_memory_limit_mb is not None and dev.host_memory_limit_mb < ram:
        warn(f"{dev.name}: system has too much memory ({ram}MB), limit is {dev.host_memory_limit_mb}MB, ignoring")
        return
    if dev.zram_fraction is not None or dev.max_zram_size_mb is not False:
        frac = 0.5 if dev.zram_fraction is None else dev.zram_fraction
        max_mb = U64_MAX if dev.max_zram_size_mb in (None, False) else int(dev.max_zram_size_mb)
        dev.disksize = min(min(int(frac * ram), U64_MAX), max_mb) * MiB
        dev.disksize = min(dev.disksize, U64_MAX)
    else:
        mib = dev.zram_size.evaluate(variables) if dev.zram_size else min(ram / 2.0, 4096.0)
        dev.disksize = mib_to_bytes(mib, f"{dev.name}: zram-size")
        if ram and dev.disksize // (ram * MiB) > 32:
            text = dev.zram_size.text if dev.zram_size else DEFAULT_ZRAM_SIZE
            warn(f"{dev.name}: zram-size ({text} = {dev.disksize}B) would require an improbable "
                 f"compression ratio with {ram}MB of memory; units may be wrong (MiB)")
    if dev.resident_limit is not None:
        dev.mem_limit = mib_to_bytes(dev.resident_limit.evaluate(variables),
                                     f"{dev.name}: zram-resident-limit")


# -- to uzramd ------------------------------------------------------------------------

_ALGO_PARAM_KEYS = ("level", "dict", "deflate.winbits")


def device_attrs(dev: GenDevice, warn: Callable[[str], None]) -> list[tuple[str, str]]:
    """The attribute stores zram-generator's setup does, in its order."""
    from ..zram.compressors import AVAILABLE
    attrs: list[tuple[str, str]] = []
    for prio, (algo, params) in enumerate(dev.algorithms):
        if algo not in AVAILABLE:  # zram-generator, too, warns and goes on
            hint = " (pip install 'uzram[lzo]')" if algo.startswith("lzo") else ""
            warn(f"{dev.name}: algorithm {algo!r} not available{hint}; "
                 f"available: {' '.join(AVAILABLE)}; " + ("keeping the default" if prio == 0 else "skipped"))
            continue
        if prio == 0:
            attrs.append(("comp_algorithm", algo))
            if params:
                attrs.append(("algorithm_params", f"algo={algo} {params}"))
            continue
        attrs.append(("recomp_algorithm", f"algo={algo} priority={prio}"))
        if params:
            words = params.split()
            algo_words = [w for w in words if w.partition("=")[0] in _ALGO_PARAM_KEYS]
            other = [w for w in words if w not in algo_words]
            if algo_words:
                attrs.append(("algorithm_params", f"priority={prio} " + " ".join(algo_words)))
            if other:
                warn(f"{dev.name}: recompression parameters {' '.join(other)!r} for {algo} are not "
                     f"run at start; run them with: uzramctl --recompress '{' '.join(other)} "
                     f"priority={prio}' {dev.name}")
    if dev.recompress_global:
        warn(f"{dev.name}: global recompression parameters ({dev.recompress_global}) are not run by "
             f"uzramd; run them when wanted with: uzramctl --recompress '{dev.recompress_global}' {dev.name}")
    if dev.writeback_device is not None:
        attrs.append(("backing_dev", dev.writeback_device))
    attrs.append(("mem_limit", str(dev.mem_limit)))
    attrs.append(("disksize", str(dev.disksize)))
    if not dev.is_swap:
        where = f" and mount it on {dev.mount_point}" if dev.mount_point else ""
        warn(f"{dev.name}: fs-type={dev.effective_fs_type}"
             f"{' mount-point=' + dev.mount_point if dev.mount_point else ''}: uzramd serves the "
             f"device over NBD and does not format or mount it; attach it with an NBD client, "
             f"then mkfs.{dev.effective_fs_type} it{where} (uzram-swap will not use it as swap)")
    return attrs


def swap_settings(dev: GenDevice) -> dict[str, str]:
    """What the swap unit reads: priority, swapon options and the file system type."""
    return {"SWAP_PRIORITY": str(dev.swap_priority), "SWAP_OPTIONS": dev.options,
            "FS_TYPE": dev.effective_fs_type}
