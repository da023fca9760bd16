"""Man pages uzramd(8), uzramctl(8) and uzramd.toml(5), generated from the
argument parsers (so they cannot drift from ``--help``) and from the
attribute table (for the configuration file's keys).

    python -m uzram.manpages DIR     # writes DIR/man8/uzramd.8, DIR/man8/uzramctl.8, DIR/man5/uzramd.toml.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

SOURCE = f"uzram {__version__}"


def _esc(text: str) -> str:
    """Text safe for roff: backslashes, hyphens in options, leading dots/quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n"))


def _header(name: str, section: int, title: str) -> list[str]:
    return [f'.TH {_esc(name.upper())} {section} "" "{SOURCE}" "uzram"', ".SH NAME",
            f"{_esc(name)} \\- {_esc(title)}"]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = [".SH OPTIONS"]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(f"\\fB{_esc(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0:
            names += f" \\fI{_esc(str(action.metavar or action.dest.upper()))}\\fR"
        help_text = parser._get_formatter()._expand_help(action)
        out += [".TP", names, _esc(help_text)]
    return out


def _synopsis(parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    return [".SH SYNOPSIS", ".nf"] + [_esc(line.strip()) for line in usage.splitlines()] + [".fi"]


def _text(title: str, body: str) -> list[str]:
    out = [f".SH {title}"]
    for para in body.strip("\n").split("\n\n"):
        para = para.strip("\n")
        if not para:
            continue
        if para.startswith("    ") or "\n " in para:
            out += [".PP", ".nf"] + [_esc(line) for line in para.splitlines()] + [".fi"]
        else:
            out += [".PP", _esc(" ".join(line.strip() for line in para.splitlines()))]
    return out


UZRAMD_TEXT = """
uzramd keeps compressed RAM block devices (zram0, zram1, ...) that behave as
Linux's zram does, attribute for attribute, and serves each over NBD under
its name (the empty export name is zram0). uzramctl(8) controls it through
its control socket; --fuse mounts a sysfs-like tree of the attributes.

With neither --device nor a configuration file, zram0 is created with
zram-generator's default size, min(RAM / 2, 4 GiB), and lz4.

A configuration file is uzramd.toml(5), or zram-generator.conf(5): a file
given with --config is read as the latter when it has zram-generator's
keys. Keys uzramd cannot apply are explained on standard error: fs-type and
mount-point (the NBD client formats and mounts the device), global
recompression parameters (run uzramctl --recompress). swap-priority,
options and fs-type are written to NAME.swap beside the control socket for
the uzram-swap script of the uzram-swap@.service unit.

SIGTERM or SIGINT stop accepting, answer the requests in flight and exit 0.
systemd socket activation (LISTEN_FDS; the control socket is named
"control") and sd_notify are supported.
"""

UZRAMD_TAIL = """
.SH EXIT STATUS
0 after a clean stop, 1 on a runtime error (e.g. a socket that cannot be
bound), 2 on a configuration error.
.SH ENVIRONMENT
.TP
\\fBUZRAM_CONTROL\\fR
the control socket's path, when \\-\\-control is not given.
.TP
\\fBXDG_RUNTIME_DIR\\fR
where the sockets go when not running as root.
.SH EXAMPLES
.nf
uzramd \\-\\-device zram0:comp_algorithm=zstd,disksize=4G \\-\\-metrics tcp:9101
uzramd \\-\\-zram\\-generator\\-config /etc/systemd/zram\\-generator.conf
nbd\\-client \\-unix /run/uzram/nbd.sock /dev/nbd0 \\-N zram0 \\-b 4096
.fi
.SH SEE ALSO
uzramctl(8), uzramd.toml(5), zram\\-generator.conf(5), zramctl(8), nbd\\-client(8)
"""

UZRAMCTL_TEXT = """
uzramctl sets up and controls the devices of uzramd(8) the way zramctl(8)
does for the kernel's zram, with the same options, columns and messages,
plus actions for the attributes zramctl does not reach (writeback,
recompression, idle marking, compaction, hot add and remove, debugfs files)
and --metrics. Without options it lists the devices in use.
"""

UZRAMCTL_TAIL = """
.SH EXIT STATUS
0 on success, 1 on failure (the errno's message is printed), 2 on a usage error.
.SH SEE ALSO
uzramd(8), uzramd.toml(5), zramctl(8)
"""


def uzramd_page() -> str:
    from .daemon.main import parser
    p = parser()
    lines = _header("uzramd", 8, "zram devices emulated in userspace, served over NBD")
    lines += _synopsis(p) + _text("DESCRIPTION", (p.description or "") + "\n\n" + UZRAMD_TEXT)
    lines += _options(p)
    return "\n".join(lines) + UZRAMD_TAIL


def uzramctl_page() -> str:
    from .ctl.__main__ import build_parser
    p = build_parser()
    lines = _header("uzramctl", 8, "set up and control uzram devices")
    lines += _synopsis(p) + _text("DESCRIPTION", (p.description or "") + "\n\n" + UZRAMCTL_TEXT)
    lines += _options(p)
    lines += [".SH NOTES", ".nf"] + [_esc(line) for line in (p.epilog or "").splitlines()] + [".fi"]
    return "\n".join(lines) + UZRAMCTL_TAIL


def toml_page() -> str:
    from .zram import attrs
    writable = [n for n in attrs.names() if attrs.MODES[n] & 0o200]
    lines = _header("uzramd.toml", 5, "configuration of uzramd")
    lines += [".SH SYNOPSIS", "/etc/uzram/uzramd.toml (as given to \\fBuzramd \\-\\-config\\fR)"]
    lines += _text("DESCRIPTION", """
A TOML file with one [uzramd] table for the daemon and one [zramN] table per
device to create at start. Command-line options add to it (listeners,
devices) or override it (control socket, FUSE directory, metrics).
""")
    lines += [".SH [uzramd]"]
    from .daemon.config import DAEMON_KEYS
    for key, what in DAEMON_KEYS.items():
        lines += [".TP", f"\\fB{_esc(key)}\\fR", _esc(what)]
    lines += _text("[zramN]", """
Each key is a zram attribute, stored in the order written, with the
kernel's syntax and errors (storing comp_algorithm after disksize is EBUSY).
Values may be strings, integers or booleans (stored as 1 or 0). The
attributes that can be written are:
""")
    lines += [".PP", ".nf"] + [f"\\fB{_esc(n)}\\fR" for n in writable] + [".fi"]
    lines += _text("EXAMPLE", """
    [uzramd]
    listen = ["unix:/run/uzram/nbd.sock", "tcp:10809"]
    metrics = "tcp:9101"

    [zram0]
    comp_algorithm = "zstd"
    algorithm_params = "level=1"
    backing_dev = "/var/lib/uzram/zram0.img"
    disksize = "4G"
""")
    lines += _text("ZRAM-GENERATOR", """
A zram-generator.conf(5) given as the configuration file is recognised by
its keys and read as zram-generator reads it; see uzramd(8).
""")
    lines += [".SH SEE ALSO", "uzramd(8), uzramctl(8), zram\\-generator.conf(5)"]
    return "\n".join(lines) + "\n"


PAGES = {"man8/uzramd.8": uzramd_page, "man8/uzramctl.8": uzramctl_page, "man5/uzramd.toml.5": toml_page}


def write_all(directory: Path) -> list[Path]:
    written = []
    for rel, page in PAGES.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uzram.manpages", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path, help="man directory, e.g. /usr/local/share/man")
    args = ap.parse_args(argv)
    for path in write_all(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
