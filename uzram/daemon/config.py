"""uzramd's configuration: command line and TOML file, merged into one plan."""

from __future__ import annotations

import errno
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..control import default_control_path, default_nbd_path
from ..zram.kparse import memparse

GiB = 1 << 30


@dataclass
class DeviceSpec:
    """A device to create at start, with attributes stored in the order given."""
    name: str
    attrs: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Listen:
    kind: str            # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


@dataclass
class Config:
    listen: list[Listen] = field(default_factory=list)
    control: Path = field(default_factory=default_control_path)
    devices: list[DeviceSpec] = field(default_factory=list)
    fuse: Path | None = None
    log_level: str = "warning"
    limits: Limits = field(default_factory=lambda: Limits())
    metrics: Listen | None = None  # Prometheus endpoint
    swap_settings: dict[str, dict[str, str]] = field(default_factory=dict)  # zram-generator's, per device
    swap: bool = False                       # serve swap on this machine (--swap)
    reserve: int | None = None               # pool reserve per device (--reserve); None: by ``swap``
    dedup: bool | None = None                # share re-swapped pages (--dedup); None: as ``swap``
    warnings: list[str] = field(default_factory=list)
    tls: str | None = None                   # off, on, require; None: require with certificates
    tls_certificates: Path | None = None     # nbdkit layout: ca-cert.pem, server-cert.pem, server-key.pem
    tls_verify_peer: bool = False
    process_per_device: bool = False         # each device in a worker process of its own


@dataclass
class Limits:
    """What bounds the daemon's memory, connections and shutdown (keys of
    [uzramd] and options of the same names with dashes)."""
    max_buffer_memory: int = 64 << 20
    max_connections: int = 0          # 0: sized from the descriptor limit
    idle_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    busy_poll: int = 50               # microseconds; 0: never

    def set(self, key: str, value: object) -> None:
        text = str(value).strip()
        try:
            if key == "max_buffer_memory":
                number, used = memparse(text)
                if not text or used != len(text) or not (1 << 20) <= number <= (1 << 40):
                    raise ValueError("a size from 1M to 1T, e.g. 64M")
                self.max_buffer_memory = number
            elif key == "max_connections":
                n = int(text)
                if not 0 <= n <= 1 << 20:
                    raise ValueError("0 (automatic) or a positive count")
                self.max_connections = n
            elif key in ("idle_timeout", "shutdown_timeout"):
                seconds = float(text)
                if not 0 < seconds <= 86400:
                    raise ValueError("seconds, more than 0")
                setattr(self, key, seconds)
            elif key == "busy_poll":
                usec = int(text)
                if not 0 <= usec <= 10_000:
                    raise ValueError("microseconds from 0 (off) to 10000")
                self.busy_poll = usec
            else:
                raise ConfigError(f"unknown key {key!r}")
        except ValueError as e:
            raise ConfigError(f"{key.replace('_', '-')}: bad value {text[:40]!r}: {e}") from None


class ConfigError(ValueError):
    pass


def parse_listen(text: str) -> Listen:
    """``unix:PATH``, ``tcp:PORT``, ``tcp::PORT``, ``tcp:HOST:PORT`` or ``tcp:[V6]:PORT``.
    A TCP listener without a host binds loopback only."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(f"bad listen address {text!r}: use unix:PATH or tcp:[HOST:]PORT")
    if kind == "unix":
        return Listen("unix", path=rest)
    if kind != "tcp":
        raise ConfigError(f"bad listen address {text!r}: use unix:PATH or tcp:[HOST:]PORT")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"bad TCP port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"bad TCP port in {text!r}")
    return Listen("tcp", host=host, port=number)


def parse_device(text: str) -> DeviceSpec:
    """``NAME[:ATTR=VALUE,...]``, e.g. ``zram0:comp_algorithm=zstd,disksize=1G``."""
    name, _, rest = text.partition(":")
    spec = DeviceSpec(name.strip())
    for item in filter(None, (p.strip() for p in rest.split(","))):
        attr, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"bad device attribute {item!r} in {text!r}: expected ATTR=VALUE")
        spec.attrs.append((attr.strip(), value))
    return spec


def default_disksize() -> int:
    """zram-generator's default: min(RAM / 2, 4 GiB)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(ram // 2, 4 * GiB)


def default_device() -> DeviceSpec:
    return DeviceSpec("zram0", [("comp_algorithm", "lz4"), ("disksize", str(default_disksize()))])


MAX_CONFIG_BYTES = 1 << 20


def load_zram_generator(path: Path, cfg: Config) -> None:
    """Devices from zram-generator's configuration (the file and its drop-ins)."""
    from . import zramgen
    try:
        plan = zramgen.read(zramgen.fragments_for(path))
        for dev in plan.devices:
            cfg.devices.append(DeviceSpec(dev.name, zramgen.device_attrs(dev, plan.warnings.append)))
            cfg.swap_settings[dev.name] = zramgen.swap_settings(dev)
    except zramgen.ZramGenError as e:
        raise ConfigError(f"{path}: {e}") from e
    cfg.warnings.extend(plan.warnings)
    if not plan.devices:
        cfg.warnings.append(f"{path}: no zram device to create (none configured, or all of size 0)")


def load_file(path: Path, cfg: Config) -> None:
    """Read a TOML file: a ``[uzramd]`` table and one ``[zramN]`` table per device
    (or a zram-generator.conf, recognised by its keys)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {str(e)[:300]}") from e
    from .zramgen import looks_like_zram_generator
    if looks_like_zram_generator(text) or path.name == "zram-generator.conf" \
            or path.parent.name == "zram-generator.conf.d":
        load_zram_generator(path, cfg)
        return
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as e:
        raise ConfigError(f"{path}: {str(e)[:300]}") from e
    try:
        _apply_file(path, data, cfg)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: {str(e)[:300]}") from e


def _apply_file(path: Path, data: dict[str, Any], cfg: Config) -> None:
    daemon = data.pop("uzramd", {})
    if not isinstance(daemon, dict):
        raise ConfigError(f"{path}: uzramd must be a table: [uzramd]")
    for key, value in daemon.items():
        if key == "listen":
            values = value if isinstance(value, list) else [value]
            cfg.listen.extend(parse_listen(str(v)) for v in values)
        elif key == "control":
            cfg.control = Path(value)
        elif key == "fuse":
            cfg.fuse = Path(value)
        elif key == "log_level":
            cfg.log_level = str(value)
        elif key in _TLS_KEYS:
            _tls_key(cfg, _TLS_KEYS[key], value, path)
        elif key in LIMIT_KEYS:
            try:
                cfg.limits.set(key, value)
            except ConfigError as e:
                raise ConfigError(f"{path}: [uzramd] {e}") from None
        elif key == "metrics":
            cfg.metrics = parse_listen(str(value))
        elif key == "swap":
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [uzramd] swap must be true or false")
            cfg.swap = value
        elif key == "dedup":
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [uzramd] dedup must be true or false")
            cfg.dedup = value
        elif key == "process_per_device":
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [uzramd] process_per_device must be true or false")
            cfg.process_per_device = value
        elif key == "reserve":
            try:
                cfg.reserve = parse_reserve(value)
            except ConfigError as e:
                raise ConfigError(f"{path}: [uzramd] {e}") from None
        else:
            raise ConfigError(f"{path}: unknown key {key!r} in [uzramd]")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name!r} must be a table like [zram0]")
        cfg.devices.append(DeviceSpec(name, [(k, _as_text(v)) for k, v in table.items()]))


DAEMON_KEYS = {   # every key of [uzramd], as uzramd.toml(5) documents it
    "listen": "a string or a list of strings: unix:PATH or tcp:[HOST:]PORT (a TCP listener without a host "
              "binds loopback only)",
    "control": "the control socket's path",
    "fuse": "mount the attribute tree at this directory",
    "metrics": "serve Prometheus metrics at unix:PATH or tcp:[HOST:]PORT",
    "log_level": "warning (the default), info or debug",
    "tls": "off, on or require (--tls); a TCP listener needs on or require, or off said explicitly",
    "tls_certificates": "the directory of server-cert.pem, server-key.pem and ca-cert.pem (--tls-certificates)",
    "tls_verify_peer": "true: clients must present a certificate signed by ca-cert.pem",
    "max_buffer_memory": "bytes held for requests in flight, all connections together (--max-buffer-memory)",
    "max_connections": "NBD connections at once (--max-connections)",
    "idle_timeout": "seconds a connection may stall mid-request or leave replies unread (--idle-timeout)",
    "shutdown_timeout": "seconds given to requests in flight at SIGTERM (--shutdown-timeout)",
    "busy_poll": "microseconds to poll a connection for its next request before sleeping; 0: never (--busy-poll)",
    "swap": "true: serve swap on this machine (--swap): locked memory, a pool reserve, admission",
    "reserve": "auto, 0 or a size: prefaulted pool memory per device under swap (--reserve)",
    "dedup": "true: a page written with the contents of a page read lately shares its object, as a page "
             "swapped in and out again does (--dedup; default: as swap)",
    "process_per_device": "true: serve each device from a worker process of its own, so devices use "
                          "separate cores (--process-per-device); not with TLS, fuse or metrics",
}

_TLS_KEYS = {"tls": "tls", "tls_certificates": "tls_certificates", "tls-certificates": "tls_certificates",
             "tls_verify_peer": "tls_verify_peer", "tls-verify-peer": "tls_verify_peer"}


def _tls_key(cfg: Config, attr: str, value: object, path: Path) -> None:
    if attr == "tls_verify_peer":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: tls_verify_peer must be true or false")
        cfg.tls_verify_peer = value
    elif attr == "tls_certificates":
        cfg.tls_certificates = Path(str(value))
    elif value not in ("off", "on", "require"):
        raise ConfigError(f"{path}: tls must be \"off\", \"on\" or \"require\"")
    else:
        cfg.tls = str(value)


def apply_tls(cfg: Config, tls: str | None, certificates: str | None, verify_peer: bool) -> None:
    """Command-line TLS options override the file's."""
    if tls is not None:
        cfg.tls = tls
    if certificates is not None:
        cfg.tls_certificates = Path(certificates)
    if verify_peer:
        cfg.tls_verify_peer = True


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


AUTO_RESERVE = -1
"""The reserve sized from each device (see ``reserve.reserve_for``)."""


def parse_reserve(value: object) -> int:
    """``auto``, or a size: bytes as a number, or text such as ``16M``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, ok = value, True
    else:
        text = str(value).strip()
        if text.lower() == "auto":
            return AUTO_RESERVE
        number, used = memparse(text)
        ok = bool(text) and used == len(text)
    if not ok or isinstance(value, bool) or not 0 <= number <= 1 << 40:
        raise ConfigError(f"reserve: bad value {str(value)[:40]!r}: auto, 0, or a size such as 16M")
    return number


def swap_mode(cfg: Config, swap_option: bool, reserve_option: str | None) -> tuple[bool, int]:
    """Whether to serve swap on this machine and the pool reserve setting:
    ``--swap`` or the file's ``swap = true``; ``--reserve``, else the
    file's ``reserve``, else auto with swap and 0 without."""
    swap = swap_option or cfg.swap
    if reserve_option is not None:
        return swap, parse_reserve(reserve_option)
    if cfg.reserve is not None:
        return swap, cfg.reserve
    return swap, AUTO_RESERVE if swap else 0


def dedup_mode(cfg: Config, dedup_option: str | None, swap: bool) -> bool:
    """``--dedup on|off``, else the file's ``dedup``, else on with swap."""
    if dedup_option is not None:
        if dedup_option not in ("on", "off"):
            raise ConfigError(f"--dedup: bad value {dedup_option[:40]!r}: on or off")
        return dedup_option == "on"
    return swap if cfg.dedup is None else cfg.dedup


LIMIT_KEYS = ("max_buffer_memory", "max_connections", "idle_timeout", "shutdown_timeout", "busy_poll")


def build(config_file: str | None, listen: list[str], control: str | None,
          devices: list[str], fuse: str | None = None,
          limits: dict[str, str] | None = None,
          zram_generator_config: str | None = None) -> Config:
    cfg = Config()
    if config_file:
        load_file(Path(config_file), cfg)
    if zram_generator_config:
        load_zram_generator(Path(zram_generator_config), cfg)
    for key, value in (limits or {}).items():
        cfg.limits.set(key, value)
    cfg.listen.extend(parse_listen(item) for item in listen)
    if control:
        cfg.control = Path(control)
    if fuse:
        cfg.fuse = Path(fuse)
    cfg.devices.extend(parse_device(d) for d in devices)
    if not config_file and not devices and not zram_generator_config:
        cfg.devices.append(default_device())
    seen = set()
    for d in cfg.devices:
        if d.name in seen:
            raise ConfigError(f"device {d.name} configured twice")
        seen.add(d.name)
    return cfg


def default_listen() -> Listen:
    return Listen("unix", path=str(default_nbd_path()))


__all__ = ["Config", "ConfigError", "DeviceSpec", "Listen", "build", "default_listen", "errno"]
