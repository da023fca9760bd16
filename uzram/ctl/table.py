"""zramctl's status columns and a renderer for libsmartcols' plain and raw
table formats (the subset zramctl uses: no trees, no wrapping)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    whint: float       # libsmartcols width hint: >= 1 absolute, < 1 fraction of the terminal
    right: bool
    help: str


COLUMNS: dict[str, Column] = {c.name: c for c in (
    Column("NAME", 0.25, False, "zram device name"),
    Column("DISKSIZE", 5, True, "limit on the uncompressed amount of data"),
    Column("DATA", 5, True, "uncompressed size of stored data"),
    Column("COMPR", 5, True, "compressed size of stored data"),
    Column("ALGORITHM", 3, False, "the selected compression algorithm"),
    Column("STREAMS", 3, True, "number of concurrent compress operations"),
    Column("ZERO-PAGES", 3, True, "empty pages with no allocated memory"),
    Column("TOTAL", 5, True, "all memory including allocator fragmentation and metadata overhead"),
    Column("MEM-LIMIT", 5, True, "memory limit used to store compressed data"),
    Column("MEM-USED", 5, True, "peak memory usage to store compressed data"),
    Column("MIGRATED", 5, True, "number of objects migrated by compaction"),
    Column("COMP-RATIO", 5, True, "compression ratio: DATA/TOTAL"),
    Column("MOUNTPOINT", 0.10, False, "where the device is mounted"),
    Column("CLIENTS", 3, True, "connected NBD clients (uzram)"),
)}

DEFAULT_COLUMNS = ("NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS", "MOUNTPOINT")


class UnknownColumn(ValueError):
    pass


def parse_columns(spec: str, current: Sequence[str]) -> list[str]:
    """``-o LIST``: comma-separated names, case-insensitive; a leading ``+``
    appends to ``current`` instead of replacing it."""
    base: list[str] = []
    if spec.startswith("+"):
        base, spec = list(current), spec[1:]
    names = spec.split(",")
    if not spec or any(not n for n in names):
        raise UnknownColumn(spec)
    for n in names:
        name = n.upper()
        if name not in COLUMNS:
            raise UnknownColumn(n)
        base.append(name)
    return base


def _safe(text: str) -> str:
    """libsmartcols' safe encoding: control characters as ``\\xNN``."""
    return "".join(f"\\x{ord(c):02x}" if not c.isprintable() else c for c in text)


def _raw(text: str) -> str:
    """``fputs_nonblank``: blanks, backslashes and non-printables as ``\\xNN``."""
    return "".join(f"\\x{ord(c):02x}" if c in " \t\\" or not c.isprintable() else c for c in text)


def _widths(cols: list[Column], rows: list[list[str]], headings: bool,
            term_width: int | None) -> list[int]:
    """libsmartcols' ``count_column_width``, then (on a terminal) its
    "enlarge to absolute hints" step. Narrow terminals are not reduced."""
    widths = []
    for i, col in enumerate(cols):
        width_min = len(col.name) if headings else 0
        width_min = max(width_min, 1)
        width_max = max((len(_safe(r[i])) for r in rows), default=0)
        width = width_max
        if width <= width_min:
            width = width_min
        elif col.whint >= 1 and width < col.whint and width_min < col.whint:
            width = int(col.whint)
        if width_max == 0 and not headings and width_min == 1 and width <= 1:
            width = 0
        widths.append(width)
    if term_width is not None:
        total = sum(widths) + len(widths) - 1
        changed = True
        while total < term_width and changed:
            changed = False
            for i in reversed(range(len(cols))):
                if cols[i].whint >= 1 and widths[i] < cols[i].whint:
                    widths[i] += 1
                    total += 1
                    changed = True
                    if total == term_width:
                        break
    return widths


def render(names: Sequence[str], rows: list[list[str]], *, headings: bool = True,
           raw: bool = False, term_width: int | None = None) -> str:
    """The table as zramctl prints it; nothing at all when there are no rows.
    ``term_width`` is the terminal's width when output goes to a terminal."""
    if not rows:
        return ""
    cols = [COLUMNS[n] for n in names]
    lines = ([list(names)] if headings else []) + rows
    if raw:
        return "".join(" ".join(_raw(c) for c in line) + "\n" for line in lines)
    widths = _widths(cols, rows, headings, term_width)
    out = []
    for line in lines:
        cells = []
        last = len(cols) - 1
        for i, (col, text) in enumerate(zip(cols, line)):
            text = _safe(text)
            pad = " " * max(widths[i] - len(text), 0)
            if i == last and (not col.right or not text):
                cells.append(text)      # the last column is not filled
            elif col.right:
                cells.append(pad + text if text else pad)
            else:
                cells.append(text + pad)
        out.append(" ".join(cells) + "\n")
    return "".join(out)
