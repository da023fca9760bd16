"""zram-generator's configuration (``zram-generator.conf`` and its ``.conf.d``
drop-ins), turned into uzramd's device plan.

The semantics follow zram-generator(8) and zram-generator.conf(5):

* files: the main file first, then the drop-ins sorted by file name; a later
  value of a key overrides an earlier one, ``[zramN]`` sections merge;
* sizes: ``zram-size`` and ``zram-resident-limit`` are expressions in MiB of
  ``ram`` (MemTotal in whole MiB) evaluated in double precision the way the
  ``fasteval`` crate does (its operator passes: ``^`` right to left, then
  ``%``, ``/``, ``*`` (right to left), ``-``, ``+`` (right to left),
  comparisons, ``&&``, ``||``; SI suffixes on numbers; ``min``, ``max``,
  ``int``, ``ceil``, ``floor``, ``round``, ``abs``, ``sign``, ``log``,
  ``e()``, ``pi()`` and the trigonometric functions); the obsolete
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

import math
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
U64_MAX = (1 << 64) - 1
DEFAULT_ZRAM_SIZE = "min(ram / 2, 4096)"
BASE_DIRS = ("usr/lib", "usr/local/lib", "etc", "run")
MAIN_NAME = "systemd/zram-generator.conf"
DROPIN_DIR = "systemd/zram-generator.conf.d"


class ZramGenError(ValueError):
    """A configuration zram-generator itself would refuse, or one uzram cannot apply."""


# -- expressions ----------------------------------------------------------------------

_SUFFIX = {"k": 3, "K": 3, "M": 6, "G": 9, "T": 12, "m": -3, "u": -6, "µ": -6, "n": -9, "p": -12}
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<suffix>[kKMGTmuµnp](?![A-Za-z_0-9]))? |
    (?P<name>[A-Za-z_][A-Za-z_0-9]*) |
    (?P<op><=|>=|==|!=|&&|\|\||[-+*/%^<>()\[\],!]))""", re.VERBOSE)
_BINARY = ("^", "%", "/", "*", "-", "+", "<", "<=", "==", "!=", ">=", ">", "&&", "||")
# fasteval's passes over a flat operand/operator list: (operators, right-to-left?)
_PASSES = ((("^",), True), (("%",), False), (("/",), False), (("*",), True), (("-",), False),
           (("+",), True), (("<", "<=", "==", "!=", ">=", ">"), False), (("&&",), False),
           (("||",), False))
_EPS = 8.0 * 2.220446049250313e-16


def _feq(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= _EPS


def _div(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _mod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:
        return math.nan


def _pow(a: float, b: float) -> float:
    try:
        r = a ** b
    except OverflowError:
        return math.inf
    except ZeroDivisionError:
        return math.inf
    return math.nan if isinstance(r, complex) else float(r)


def _log(base: float, x: float) -> float:
    def ln(v: float) -> float:
        if v > 0:
            return math.log(v)
        return -math.inf if v == 0 else math.nan
    return _div(ln(x), ln(base)) if base != 10.0 else (math.log10(x) if x > 0 else ln(x))


_OPS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": _div, "%": _mod, "^": _pow,
    "<": lambda a, b: float(a < b), "<=": lambda a, b: float(a <= b),
    "==": lambda a, b: float(_feq(a, b)), "!=": lambda a, b: float(not _feq(a, b)),
    ">=": lambda a, b: float(a >= b), ">": lambda a, b: float(a > b),
    "&&": lambda a, b: a if _feq(a, 0.0) else b, "||": lambda a, b: b if _feq(a, 0.0) else a,
}


def _minmax(pick: Callable[[float, float], float]) -> Callable[..., float]:
    def f(*args: float) -> float:
        if not args:
            raise ZramGenError("min/max need at least one argument")
        if any(math.isnan(a) for a in args):
            return math.nan
        r = args[0]
        for a in args[1:]:
            r = pick(r, a)
        return r
    return f


def _one(fn: Callable[[float], float]) -> Callable[..., float]:
    def f(*args: float) -> float:
        if len(args) != 1:
            raise ZramGenError("function takes exactly one argument")
        try:
            return float(fn(args[0]))
        except (ValueError, OverflowError):
            return math.nan
    return f


def _round(*args: float) -> float:
    modulus, x = (1.0, args[0]) if len(args) == 1 else args
    q = _div(x, modulus)
    if math.isinf(q) or math.isnan(q):
        return q
    r = math.floor(abs(q) + 0.5) * math.copysign(1.0, q)  # half away from zero, as Rust's round
    return r * modulus


_FUNCS: dict[str, Callable[..., float]] = {
    "min": _minmax(min), "max": _minmax(max),
    "int": _one(math.trunc), "ceil": _one(math.ceil), "floor": _one(math.floor),
    "abs": _one(abs), "sign": _one(lambda v: math.copysign(1.0, v) if not math.isnan(v) else v),
    "log": lambda *a: _log(10.0, a[0]) if len(a) == 1 else _log(a[0], a[1]),
    "round": _round,
    "e": lambda: math.e, "pi": lambda: math.pi,
    "sin": _one(math.sin), "cos": _one(math.cos), "tan": _one(math.tan),
    "asin": _one(math.asin), "acos": _one(math.acos), "atan": _one(math.atan),
    "sinh": _one(math.sinh), "cosh": _one(math.cosh), "tanh": _one(math.tanh),
    "asinh": _one(math.asinh), "acosh": _one(math.acosh), "atanh": _one(math.atanh),
}


Node = tuple[Any, ...]
"""A parsed expression: ("const", x), ("var", name), ("unary", op, node),
("call", name, [node...]) or ("expr", [node...], [op...])."""


class Expression:
    """A parsed ``zram-size``-style expression; ``evaluate(vars)`` gives MiB as a float."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens = self._lex(text)
        self._pos = 0
        self._tree = self._expr()
        if self._pos != len(self._tokens):
            raise ZramGenError(f"cannot parse {text!r}: unexpected {self._tokens[self._pos][1]!r}")

    @staticmethod
    def _lex(text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ZramGenError(f"cannot parse {text!r} at {text[pos:]!r}")
            pos = m.end()
            if m.group("num") is not None:
                value = m.group("num")
                if m.group("suffix"):
                    value += f"e{_SUFFIX[m.group('suffix')]}"
                out.append(("num", value))
            elif m.group("name") is not None:
                out.append(("name", m.group("name")))
            else:
                out.append(("op", m.group("op")))
        return out

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise ZramGenError(f"cannot parse {self.text!r}: unexpected end")
        self._pos += 1
        return tok

    # An expression is a flat list: value (op value)*, as fasteval keeps it.
    def _expr(self) -> Node:
        values = [self._value()]
        ops: list[str] = []
        while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] in _BINARY:
            self._pos += 1
            ops.append(tok[1])
            values.append(self._value())
        return ("expr", values, ops)

    def _value(self) -> Node:
        kind, text = self._take()
        if kind == "num":
            return ("const", float(text))
        if kind == "op" and text in ("-", "+", "!"):
            return ("unary", text, self._value())
        if kind == "op" and text in ("(", "["):
            inner = self._expr()
            self._expect(")" if text == "(" else "]")
            return inner
        if kind == "name":
            tok = self._peek()
            if tok is not None and tok[1] in ("(", "["):
                close = ")" if tok[1] == "(" else "]"
                self._pos += 1
                args = []
                if (t := self._peek()) is not None and t[1] == close:
                    self._pos += 1
                else:
                    args.append(self._expr())
                    while (sep := self._take())[1] == ",":
                        args.append(self._expr())
                    if sep[1] != close:
                        raise ZramGenError(f"cannot parse {self.text!r}: expected {close!r}")
                return ("call", text, args)
            return ("var", text)
        raise ZramGenError(f"cannot parse {self.text!r}: unexpected {text!r}")

    def _expect(self, what: str) -> None:
        if self._take()[1] != what:
            raise ZramGenError(f"cannot parse {self.text!r}: expected {what!r}")

    def evaluate(self, variables: dict[str, float]) -> float:
        return self._eval(self._tree, variables)

    def _eval(self, node: Node, env: dict[str, float]) -> float:
        kind = node[0]
        if kind == "const":
            const: float = node[1]
            return const
        if kind == "var":
            if node[1] not in env:
                raise ZramGenError(f"{self.text!r}: undefined variable {node[1]!r}")
            return env[node[1]]
        if kind == "unary":
            v = self._eval(node[2], env)
            return -v if node[1] == "-" else (float(_feq(v, 0.0)) if node[1] == "!" else v)
        if kind == "call":
            fn = _FUNCS.get(node[1])
            if fn is None:
                raise ZramGenError(f"{self.text!r}: undefined function {node[1]!r}")
            return fn(*(self._eval(a, env) for a in node[2]))
        values = [self._eval(v, env) for v in node[1]]
        ops = list(node[2])
        for names, rtol in _PASSES:
            if rtol:
                for i in range(len(ops) - 1, -1, -1):
                    if i < len(ops) and ops[i] in names:
                        values[i:i + 2] = [_OPS[ops[i]](values[i], values[i + 1])]
                        del ops[i]
            else:
                i = 0
                while i < len(ops):
                    if ops[i] in names:
                        values[i:i + 2] = [_OPS[ops[i]](values[i], values[i + 1])]
                        del ops[i]
                    else:
                        i += 1
        return values[0]


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
