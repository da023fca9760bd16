"""Device names and the status rows zramctl prints for a device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..control import device_id
from .sizes import human_size

# mm_stat field index for each size column (zramctl's MM_* order)
_MM_FIELD = {"DATA": 0, "COMPR": 1, "TOTAL": 2, "MEM-LIMIT": 3, "MEM-USED": 4, "MIGRATED": 6}
_MM_ZERO_PAGES = 5
_MM_MIN_FIELDS = 7   # zramctl ignores an mm_stat with fewer fields


def dev_path(text: str) -> str:
    """How zramctl names a device in its output and messages: ``/dev/zramN``
    (or the argument unchanged if it is not a zram device name)."""
    n = device_id(text)
    return f"/dev/zram{n}" if n is not None else text


def algorithm(comp_algorithm: str) -> str:
    """The bracketed (selected) name in a ``comp_algorithm`` listing."""
    left, right = comp_algorithm.rfind("["), comp_algorithm.rfind("]")
    if left < 0 or right < 0 or right - left <= 1:
        return ""
    return comp_algorithm[left + 1:right]


def comp_ratio(data: int, total: int) -> str:
    """``printf("%.4f", (double) data / total)`` with glibc on x86-64,
    including its ``-nan`` for 0/0 and ``inf`` for x/0."""
    if total == 0:
        return "-nan" if data == 0 else "inf"
    return "%.4f" % (float(data) / float(total))


class DeviceView:
    """One device as the daemon's ``status`` reported it; attributes missing
    from the report are read with ``show`` (``fetch``), failures read as None."""

    def __init__(self, entry: dict[str, Any], fetch: Callable[[str, str], str | None]) -> None:
        self.name: str = entry["name"]
        self.clients: int = int(entry.get("clients", 0))
        self._attrs: dict[str, str] = dict(entry.get("attrs", {}))
        self._fetch = fetch

    def attr(self, name: str) -> str | None:
        if name not in self._attrs:
            value = self._fetch(self.name, name)
            if value is None:
                return None
            self._attrs[name] = value
        return self._attrs[name]

    def disksize(self) -> int:
        text = self.attr("disksize")
        try:
            return int(text) if text is not None else 0
        except ValueError:
            return 0

    def mm_stat(self) -> list[str] | None:
        text = self.attr("mm_stat")
        fields = text.split() if text else []
        return fields if len(fields) >= _MM_MIN_FIELDS else None

    def cell(self, column: str, inbytes: bool) -> str:
        """The text of one status column."""
        if column == "NAME":
            return dev_path(self.name)
        if column == "DISKSIZE":
            text = (self.attr("disksize") or "").rstrip("\n")
            if inbytes or not text.isdigit():
                return text
            return human_size(int(text))
        if column == "ALGORITHM":
            return algorithm(self.attr("comp_algorithm") or "")
        if column == "CLIENTS":
            return str(self.clients)
        if column in ("STREAMS", "MOUNTPOINT"):
            return ""   # no max_comp_streams since 6.15; no local block device to mount
        mm = self.mm_stat()
        if mm is None:
            return ""
        try:
            if column == "ZERO-PAGES":
                return mm[_MM_ZERO_PAGES]
            if column == "COMP-RATIO":
                return comp_ratio(int(mm[_MM_FIELD["DATA"]]), int(mm[_MM_FIELD["TOTAL"]]))
            field = mm[_MM_FIELD[column]]
            return field if inbytes else human_size(int(field))
        except ValueError:
            return ""
