"""ZramDevice: the zram core with its sysfs attribute ABI on top.

``ZramDevice("zram0")``, then ``store("disksize", "1G")``, ``write``,
``read``... The core (``core.py``, with ``readpath.py`` and
``writepath.py``) is zram_drv.c's device; ``attrs.py`` is its sysfs files.
"""

from __future__ import annotations

from . import attrs
from .core import ZramCore
from .readpath import Extent, PendingRead

__all__ = ["Extent", "PendingRead", "ZramDevice"]


class ZramDevice(ZramCore):
    """One zram device: ``ZramDevice("zram0")``, then ``store("disksize", "1G")``."""

    def show(self, name: str) -> str:
        return attrs.show(self, name)

    def store(self, name: str, value: str) -> None:
        attrs.store(self, name, value)
