"""A one-line progress bar for long stores (writeback), drawn from the
daemon's ``{"progress": {...}}`` lines."""

from __future__ import annotations

import shutil
from typing import TextIO


def bar_line(done: int, total: int, what: str, width: int) -> str:
    """``what [#####.....]  50% 5/10`` fitted into ``width`` columns."""
    frac = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    tail = f" {int(frac * 100):3d}% {done}/{total}" if total > 0 else f" {done}"
    head = f"{what} " if what else ""
    room = width - len(head) - len(tail) - 2
    if room < 10:
        return (head + tail.lstrip())[:width]
    filled = int(frac * room)
    return f"{head}[{'#' * filled}{'.' * (room - filled)}]{tail}"


class ProgressBar:
    """Redraws one line on ``out`` for each update; ``close`` ends the line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.drawn = False

    def __call__(self, done: int, total: int, what: str) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.out.write("\r" + bar_line(done, total, what, width) + "\x1b[K")
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False
