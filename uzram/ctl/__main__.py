"""uzramctl: set up and control uzram devices, the way zramctl(8) does for
the kernel's zram, through uzramd's control socket."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..control import ProtocolError, default_control_path, device_id, runtime_dir
from .client import Client, ControlError, DaemonNotRunning
from .devices import DeviceView, dev_path
from .histogram import render as render_histogram
from .progress import ProgressBar
from .sizes import SizeError, human_size, parse_size
from .table import COLUMNS, DEFAULT_COLUMNS, UnknownColumn, parse_columns, render

PROG = "uzramctl"


def _opt(dest: str) -> str:
    return "--" + dest.replace("_", "-")


class Failure(Exception):
    """Print ``uzramctl: <message>`` and exit 1."""


def _warn(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


class _Ordered(argparse.Action):
    """Store (or set a flag) and remember the order options were given in."""

    def __init__(self, *args: Any, flag: bool = False, **kwargs: Any) -> None:
        if flag:
            kwargs["nargs"] = 0
            kwargs.setdefault("default", False)
        self.flag = flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(ns, self.dest, True if self.flag else values)
        order = getattr(ns, "order", None) or []
        if self.dest not in order:
            order.append(self.dest)
        ns.order = order


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except SizeError as e:
        raise argparse.ArgumentTypeError(f"failed to parse size: '{text}': {e}") from None


def _streams(text: str) -> int:
    try:
        value = int(text, 10)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"failed to parse streams: '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    cols = "\n".join(f" {c.name:>11}  {c.help}" for c in COLUMNS.values())
    usage = [u for act in ACTIONS.values() if (u := act.usage)]
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} " + f"\n       {PROG} ".join(usage),
        description="Set up and control uzram devices (zram emulated in userspace by uzramd).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(" <size> is a number with an optional suffix: K, M, G, T, P, E (KiB, MiB, ... = 1024^n)\n"
                "   or KB, MB, ... (1000^n).\n <alg> is the name of an algorithm, e.g. lzo-rle, lzo, lz4, lz4hc, zstd,\n"
                "   deflate (see --attr comp_algorithm <device>).\n\n"
                f"Available output columns:\n{cols}\n\n"
                "The control socket is --control PATH, else $UZRAM_CONTROL, else "
                f"{runtime_dir() / 'control.sock'}."),
    )
    p.set_defaults(order=None)
    a = p.add_argument

    def action(name: str) -> None:
        act = ACTIONS[name]
        assert act.option is not None
        flags, kwargs = act.option
        a(*flags, dest=act.dest, action=_Ordered, **kwargs)

    # zramctl's options, in zramctl's order
    a("--control", metavar="PATH", type=Path, help="uzramd's control socket")
    a("-a", "--algorithm", metavar="<alg>", action=_Ordered, help="compression algorithm to use")
    a("-b", "--bytes", action=_Ordered, flag=True,
      help="print sizes in bytes, not in human-readable form")
    action("find")
    a("-n", "--noheadings", action=_Ordered, flag=True, help="don't print headings")
    a("-o", "--output", metavar="<list>", action=_Ordered, help="columns to use for status output")
    a("--output-all", action=_Ordered, flag=True, help="output all columns")
    a("-p", "--algorithm-params", metavar="<parameter>", action=_Ordered,
      help="parameters for the compression algorithm")
    action("reset")
    a("--raw", action=_Ordered, flag=True, help="use raw status output format")
    action("create")
    a("-t", "--streams", metavar="<number>", type=_streams, action=_Ordered,
      help="number of compression streams (ignored: gone since Linux 6.15)")
    # uzramctl's own actions
    for act in ACTIONS.values():
        if act.extra:
            action(act.name)
    a("-V", "--version", action="version", version=f"{PROG} from uzram {__version__}")
    a("devices", nargs="*", metavar="<device>", help=argparse.SUPPRESS)
    return p


def _check_usage(p: argparse.ArgumentParser, args: argparse.Namespace) -> Action:
    """zramctl's rules for combining options; returns the action to run."""
    given = [d for d in (args.order or []) if getattr(args, d) not in (None, False)]
    status = [""] * len(_EXCLUSIVE)
    for opt in given:
        for i, group in enumerate(_EXCLUSIVE):
            if opt not in group:
                continue
            if not status[i]:
                status[i] = opt
            elif status[i] != opt:
                p.error(f"options {_opt(status[i])} and {_opt(opt)} cannot be combined")
    if args.find and args.devices:
        p.error("option --find is mutually exclusive with <device>")
    act = next((a for a in ACTIONS.values() if a.option and getattr(args, a.dest) is not None
                and getattr(args, a.dest) is not False), ACTIONS["status"])  # -s 0 is given
    if act.devices != "many" and len(args.devices) > 1:
        p.error("only one <device> at a time is allowed")
    if act.name != "create" and (args.algorithm is not None or args.algorithm_params is not None
                                 or args.streams):
        p.error("options --algorithm, --algorithm-params, and --streams must be combined with --size")
    if act.devices in ("one", "many") and not args.find and not args.devices:
        p.error("no device specified")
    if act.devices == "none" and args.devices:
        p.error(f"{_opt(act.dest)} does not take a <device>")
    return act


# -- actions ---------------------------------------------------------------------------

def _kname(device: str) -> str:
    """The kernel name (``zramN``) of a device argument, or Failure(ENODEV)."""
    n = device_id(device)
    if n is None:
        raise Failure(f"{device}: {os.strerror(errno.ENODEV)}")
    return f"zram{n}"


def _fetcher(client: Client) -> Callable[[str, str], str | None]:
    def fetch(device: str, attr: str) -> str | None:
        try:
            return client.show(device, attr)
        except ControlError:
            return None
    return fetch


def do_status(client: Client, args: argparse.Namespace) -> None:
    columns: list[str] = list(COLUMNS) if args.output_all else list(DEFAULT_COLUMNS)
    if args.output is not None:
        try:
            columns = parse_columns(args.output, columns)
        except UnknownColumn as e:
            raise Failure(f"unknown column: {e}") from None
    views = [DeviceView(d, _fetcher(client)) for d in client.status()]
    if args.devices:
        name = _kname(args.devices[0])
        views = [v for v in views if v.name == name]
        if not views:
            raise Failure(f"{dev_path(args.devices[0])}: {os.strerror(errno.ENODEV)}")
    else:
        views = [v for v in views if v.disksize() > 0]
    rows = [[v.cell(c, args.bytes) for c in columns] for v in views]
    term = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    sys.stdout.write(render(columns, rows, headings=not args.noheadings, raw=args.raw,
                            term_width=term))


def find_free(client: Client) -> str | None:
    """zramctl's ``find_free_zram``: zram0, zram1, ... up to the first device
    with disksize 0; at the first missing id a device is hot-added instead."""
    sizes = {}
    for d in client.status():
        n = device_id(d["name"])
        if n is not None:
            sizes[n] = DeviceView(d, _fetcher(client)).disksize()
    i = 0
    while True:
        if i in sizes:
            if sizes[i] == 0:
                return f"zram{i}"
        else:
            try:
                n = client.hot_add()
            except ControlError:
                return None
            try:
                used = int(client.show(f"zram{n}", "disksize")) > 0
            except (ControlError, ValueError):
                used = False
            if not used:
                return f"zram{n}"
            sizes[n] = 1
        i += 1


def do_find(client: Client, args: argparse.Namespace) -> None:
    name = find_free(client)
    if name is None:
        raise Failure("no free zram device found")
    print(dev_path(name))


def do_create(client: Client, args: argparse.Namespace) -> None:
    """Reset, then comp_algorithm, algorithm_params and disksize, as zramctl -s."""
    if args.find:
        name = find_free(client)
        if name is None:
            raise Failure("no free zram device found")
    else:
        name = _kname(args.devices[0])
        if name not in client.devices():
            raise Failure(f"{dev_path(name)}: {os.strerror(errno.ENODEV)}")
    path = dev_path(name)

    def store(attr: str, value: str, what: str) -> None:
        try:
            client.store(name, attr, value)
        except ControlError as e:
            raise Failure(f"{path}: {what}: {e.strerror}") from None

    store("reset", "1", "failed to reset")
    if args.streams:
        try:
            client.store(name, "max_comp_streams", str(args.streams))
        except ControlError as e:
            if e.errno != errno.ENOENT:
                raise Failure(f"{path}: failed to set number of streams: {e.strerror}") from None
    if args.algorithm is not None:
        store("comp_algorithm", args.algorithm, "failed to set algorithm")
    if args.algorithm_params is not None:
        store("algorithm_params", args.algorithm_params, "failed to set algorithm params")
    store("disksize", str(args.size), f"failed to set disksize ({args.size} bytes)")
    if args.find:
        print(path)


def do_reset(client: Client, args: argparse.Namespace) -> int:
    """``reset`` then ``hot_remove`` each device; a failed reset is reported
    (exit 1) and, as in zramctl, a failed hot_remove is not."""
    rc = 0
    for device in args.devices:
        n = device_id(device)
        try:
            if n is None:
                raise ControlError(errno.ENODEV)
            client.store(f"zram{n}", "reset", "1")
        except ControlError as e:
            _warn(f"{dev_path(device)}: failed to reset: {e.strerror}")
            rc = 1
        if n is not None:
            try:
                client.hot_remove(n)
            except ControlError:
                pass
    return rc


def _attr_store(client: Client, device: str, attr: str, value: str, progress: bool = False) -> None:
    name = _kname(device)
    bar = ProgressBar(sys.stderr) if progress and sys.stderr.isatty() else None
    try:
        if progress:
            client.store(name, attr, value, bar or (lambda done, total, what: None))
        else:
            client.store(name, attr, value)
    except ControlError as e:
        raise Failure(f"{name}: {attr}: {e.strerror}") from None
    finally:
        if bar is not None:
            bar.close()


def do_attr(client: Client, args: argparse.Namespace) -> None:
    """``--attr NAME`` prints the attribute as sysfs would; ``NAME=VALUE`` stores it."""
    attr, eq, value = args.attr.partition("=")
    if not eq:
        name = _kname(args.devices[0])
        try:
            text = client.show(name, attr)
        except ControlError as e:
            raise Failure(f"{name}: {attr}: {e.strerror}") from None
        sys.stdout.write(text)
        return
    _attr_store(client, args.devices[0], attr, value)


def do_debug(client: Client, args: argparse.Namespace) -> None:
    name = _kname(args.devices[0])
    histogram = args.debug == "histogram"
    try:
        text = str(client.request("debug", device=name, name="classes" if histogram else args.debug)["value"])
    except ControlError as e:
        raise Failure(f"{name}: {args.debug}: {e.strerror}") from None
    if histogram:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 80
        text = render_histogram(text, width)
    sys.stdout.write(text)


def do_hot_add(client: Client, args: argparse.Namespace) -> None:
    try:
        n = client.hot_add()
    except ControlError as e:
        raise Failure(f"hot_add: {e.strerror}") from None
    print(f"/dev/zram{n}")


def do_hot_remove(client: Client, args: argparse.Namespace) -> None:
    text = args.hot_remove
    n = int(text) if text.isdigit() else device_id(text)
    if n is None:
        raise Failure(f"{text}: {os.strerror(errno.ENODEV)}")
    try:
        client.hot_remove(n)
    except ControlError as e:
        raise Failure(f"zram{n}: hot_remove: {e.strerror}") from None


def do_writeback(client: Client, args: argparse.Namespace) -> None:
    _attr_store(client, args.devices[0], "writeback", args.writeback, progress=True)


def do_idle(client: Client, args: argparse.Namespace) -> None:
    _attr_store(client, args.devices[0], "idle", args.idle)


def do_compact(client: Client, args: argparse.Namespace) -> None:
    _attr_store(client, args.devices[0], "compact", "1")


def do_recompress(client: Client, args: argparse.Namespace) -> None:
    _attr_store(client, args.devices[0], "recompress", args.recompress)


def do_metrics(client: Client, args: argparse.Namespace) -> None:
    try:
        sys.stdout.write(str(client.request("metrics")["value"]))
    except ControlError as e:
        raise Failure(f"metrics: {e.strerror} ({e.detail})") from None


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def do_hardening(client: Client, args: argparse.Namespace) -> None:
    """The daemon's memory measures in force and its pool reserves' state,
    one ``name value`` line each (sizes in bytes with --bytes)."""
    try:
        state = client.request("hardening")["hardening"]
    except ControlError as e:
        raise Failure(f"hardening: {e.strerror} ({e.detail})") from None
    if not isinstance(state, dict):
        raise ProtocolError("bad hardening reply from uzramd")
    sizes = {"heap_cushion", "reserve", "reserve_free"}
    width = max((len(k) for k in state), default=0)
    for key, value in state.items():
        text = human_size(value) if key in sizes and not args.bytes and isinstance(value, int) else _shown(value)
        print(f"{key:<{width}}  {text}")


@dataclass(frozen=True)
class Action:
    """One thing uzramctl does: how it is asked for, what it runs."""

    name: str
    run: Callable[[Client, argparse.Namespace], int | None]
    devices: str     # <device> arguments: "optional" (at most one), "one", "many" or "none"
    usage: str = ""  # its line in the usage synopsis (one line may show several actions)
    option: tuple[tuple[str, ...], dict[str, Any]] | None = None  # argparse's flags and keywords
    extra: bool = True   # beyond zramctl's actions (status, find, set-up, reset)

    @property
    def dest(self) -> str:
        return "size" if self.name == "create" else self.name


def _flag(*flags: str, help: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, {"flag": True, "help": help}


def _arg(*flags: str, metavar: str, help: str, **kw: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, {"metavar": metavar, "help": help, **kw}


# Every action, in the order they take precedence when several are given
# (zramctl's -r over -s over -f; uzramctl's own exclude each other).
ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("status", do_status, "optional", "[options] [<device>]", extra=False),
    Action("reset", do_reset, "many", "-r <device>...",
           _flag("-r", "--reset", help="reset the specified zram devices"), extra=False),
    Action("create", do_create, "one", "[options] -f | <device> -s <size>",
           _arg("-s", "--size", metavar="<size>", type=_size, help="device size"), extra=False),
    Action("find", do_find, "optional", option=_flag("-f", "--find", help="find a free device"), extra=False),
    Action("attr", do_attr, "one", "--attr <name>[=<value>] <device>",
           _arg("--attr", metavar="<name>[=<value>]",
                help="read or write any attribute of <device> (sysfs format)")),
    Action("writeback", do_writeback, "one",
           "--idle <age>|all | --compact | --writeback <mode> | --recompress <args> <device>",
           _arg("--writeback", metavar="<mode>",
                help="write pages back to the backing device (huge, idle, huge_idle, incompressible, ...)")),
    Action("idle", do_idle, "one", option=_arg(
        "--idle", metavar="<age>|all", help="mark pages idle: all, or those not accessed for <age> seconds")),
    Action("compact", do_compact, "one", option=_flag("--compact", help="compact the memory pool of <device>")),
    Action("recompress", do_recompress, "one", option=_arg(
        "--recompress", metavar="<args>", help="recompress pages with a secondary algorithm (e.g. 'type=huge')")),
    Action("debug", do_debug, "one", "--debug block_state|classes|histogram <device>",
           _arg("--debug", metavar="<name>",
                help="print a debugfs file of <device>: block_state (zram) or classes (zsmalloc); "
                     "histogram: the classes in use as text bars")),
    Action("hot_add", do_hot_add, "none", "--hot-add | --hot-remove <id>",
           _flag("--hot-add", help="add a new device and print its name")),
    Action("hot_remove", do_hot_remove, "none", option=_arg(
        "--hot-remove", metavar="<id>", help="remove a device (N, zramN or /dev/zramN)")),
    Action("metrics", do_metrics, "none", "--metrics", _flag(
        "--metrics", help="print every device's statistics and the NBD request metrics in Prometheus' text format")),
    Action("hardening", do_hardening, "none", "--hardening [--bytes]", _flag(
        "--hardening", help="print uzramd's memory measures in force (--swap) and its pool reserves' state: "
        "low_reserve while work that allocates is shed")),
)}

_EXTRA = tuple(a.dest for a in ACTIONS.values() if a.extra)
# zramctl's groups of options that cannot be combined, plus: each extra action
# excludes every other action and --output
_EXCLUSIVE = (
    ("find", "output", "reset"),
    ("output", "reset", "size"),
    ("output", "find") + _EXTRA,
    ("reset", "size") + _EXTRA,
)


def _fail(msg: str) -> NoReturn:
    raise Failure(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run uzramctl; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_intermixed_args(argv)
        act = _check_usage(parser, args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    path = args.control or default_control_path()
    try:
        try:
            client = Client(path)
        except DaemonNotRunning as e:
            _fail(f"{e}\n{PROG}: {e.hint()}")
        except OSError as e:
            _fail(f"cannot connect to uzramd at {path}: {e.strerror or e}")
        with client:
            return act.run(client, args) or 0
    except Failure as e:
        _warn(str(e))
        return 1
    except ProtocolError as e:
        _warn(f"{e} (is {path} uzramd's control socket, and may you use it?)")
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
