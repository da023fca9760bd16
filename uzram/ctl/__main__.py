"""uzramctl: set up and control uzram devices, the way zramctl(8) does for
the kernel's zram, through uzramd's control socket."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..control import default_control_path, runtime_dir
from .client import Client, ControlError, DaemonNotRunning, ProtocolError
from .devices import DeviceView, dev_path, device_id
from .histogram import render as render_histogram
from .progress import ProgressBar
from .sizes import SizeError, parse_size
from .table import COLUMNS, DEFAULT_COLUMNS, UnknownColumn, parse_columns, render

PROG = "uzramctl"

# uzramctl's actions beyond zramctl's (status, find, set-up, reset)
_EXTRA = ("attr", "writeback", "idle", "compact", "recompress", "hot_add", "hot_remove", "debug", "metrics")
# zramctl's groups of options that cannot be combined, plus: each extra action
# excludes every other action and --output
_EXCLUSIVE = (
    ("find", "output", "reset"),
    ("output", "reset", "size"),
    ("output", "find") + _EXTRA,
    ("reset", "size") + _EXTRA,
)


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
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=(f"{PROG} [options] [<device>]\n"
               f"       {PROG} -r <device>...\n"
               f"       {PROG} [options] -f | <device> -s <size>\n"
               f"       {PROG} --attr <name>[=<value>] <device>\n"
               f"       {PROG} --idle <age>|all | --compact | --writeback <mode> | --recompress <args> <device>\n"
               f"       {PROG} --debug block_state|classes|histogram <device>\n"
               f"       {PROG} --hot-add | --hot-remove <id>\n"
               f"       {PROG} --metrics"),
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
    a("--control", metavar="PATH", type=Path, help="uzramd's control socket")
    a("-a", "--algorithm", metavar="<alg>", action=_Ordered, help="compression algorithm to use")
    a("-b", "--bytes", action=_Ordered, flag=True,
      help="print sizes in bytes, not in human-readable form")
    a("-f", "--find", action=_Ordered, flag=True, help="find a free device")
    a("-n", "--noheadings", action=_Ordered, flag=True, help="don't print headings")
    a("-o", "--output", metavar="<list>", action=_Ordered, help="columns to use for status output")
    a("--output-all", action=_Ordered, flag=True, help="output all columns")
    a("-p", "--algorithm-params", metavar="<parameter>", action=_Ordered,
      help="parameters for the compression algorithm")
    a("-r", "--reset", action=_Ordered, flag=True, help="reset the specified zram devices")
    a("--raw", action=_Ordered, flag=True, help="use raw status output format")
    a("-s", "--size", metavar="<size>", type=_size, action=_Ordered, help="device size")
    a("-t", "--streams", metavar="<number>", type=_streams, action=_Ordered,
      help="number of compression streams (ignored: gone since Linux 6.15)")
    a("--attr", metavar="<name>[=<value>]", action=_Ordered,
      help="read or write any attribute of <device> (sysfs format)")
    a("--writeback", metavar="<mode>", action=_Ordered,
      help="write pages back to the backing device (huge, idle, huge_idle, incompressible, ...)")
    a("--idle", metavar="<age>|all", action=_Ordered,
      help="mark pages idle: all, or those not accessed for <age> seconds")
    a("--compact", action=_Ordered, flag=True, help="compact the memory pool of <device>")
    a("--recompress", metavar="<args>", action=_Ordered,
      help="recompress pages with a secondary algorithm (e.g. 'type=huge')")
    a("--debug", metavar="<name>", action=_Ordered,
      help="print a debugfs file of <device>: block_state (zram) or classes (zsmalloc); "
           "histogram: the classes in use as text bars")
    a("--hot-add", action=_Ordered, flag=True, help="add a new device and print its name")
    a("--hot-remove", metavar="<id>", action=_Ordered, help="remove a device (N, zramN or /dev/zramN)")
    a("--metrics", action=_Ordered, flag=True,
      help="print every device's statistics and the NBD request metrics in Prometheus' text format")
    a("-V", "--version", action="version", version=f"{PROG} from uzram {__version__}")
    a("devices", nargs="*", metavar="<device>", help=argparse.SUPPRESS)
    return p


def _check_usage(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
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
    if args.reset:
        act = "reset"
    elif args.size is not None:
        act = "create"
    elif args.find:
        act = "find"
    else:
        act = next((x for x in _EXTRA if getattr(args, x) not in (None, False)), "status")
    if act != "reset" and len(args.devices) > 1:
        p.error("only one <device> at a time is allowed")
    if act != "create" and (args.algorithm is not None or args.algorithm_params is not None
                            or args.streams):
        p.error("options --algorithm, --algorithm-params, and --streams must be combined with --size")
    needs_device = act in ("reset", "attr", "writeback", "idle", "compact", "recompress", "debug") or (
        act == "create" and not args.find)
    if needs_device and not args.devices:
        p.error("no device specified")
    if act in ("hot_add", "hot_remove", "metrics") and args.devices:
        p.error(f"{_opt(act)} does not take a <device>")
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


def run(client: Client, act: str, args: argparse.Namespace) -> int:
    if act == "status":
        do_status(client, args)
    elif act == "find":
        do_find(client, args)
    elif act == "create":
        do_create(client, args)
    elif act == "reset":
        return do_reset(client, args)
    elif act == "attr":
        do_attr(client, args)
    elif act == "writeback":
        _attr_store(client, args.devices[0], "writeback", args.writeback, progress=True)
    elif act == "idle":
        _attr_store(client, args.devices[0], "idle", args.idle)
    elif act == "compact":
        _attr_store(client, args.devices[0], "compact", "1")
    elif act == "recompress":
        _attr_store(client, args.devices[0], "recompress", args.recompress)
    elif act == "hot_add":
        do_hot_add(client, args)
    elif act == "hot_remove":
        do_hot_remove(client, args)
    elif act == "debug":
        do_debug(client, args)
    elif act == "metrics":
        try:
            sys.stdout.write(str(client.request("metrics")["value"]))
        except ControlError as e:
            raise Failure(f"metrics: {e.strerror} ({e.detail})") from None
    return 0


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
            return run(client, act, args)
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
