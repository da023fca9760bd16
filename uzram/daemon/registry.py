"""The device registry: zram devices by id, zram-control's hot_add/hot_remove,
and the NBD export registry over them."""

from __future__ import annotations

import errno

from ..control import device_id
from ..zram import ZramDevice
from ..zram.kparse import kstrtoint
from .export import ZramExport


def parse_device_name(name: str) -> int:
    """``zram3`` or ``/dev/zram3`` (as uzramctl and zramctl name devices) -> 3;
    anything else, ``zram03`` or ``zram3\\n`` included, is ENODEV."""
    dev_id = device_id(name)
    if dev_id is None:
        raise OSError(errno.ENODEV, f"no such device {name[:64]!r} (expected zramN)")
    return dev_id


def parse_export_name(name: str) -> int | None:
    """An NBD export name's device id: exactly ``zramN``; the empty name is
    zram0; anything else (``/dev/zram1``, ``zram0\\n``) is None."""
    return 0 if name == "" else device_id(name, dev_prefix=False)


class DeviceRegistry:
    def __init__(self, dedup: bool = False) -> None:
        self._exports: dict[int, ZramExport] = {}
        self.dedup = dedup   # devices share the objects of re-swapped pages (zram/reswap.py)

    # -- devices ---------------------------------------------------------------

    def add(self, dev_id: int | None = None) -> ZramDevice:
        """Create ``zram<id>`` (the lowest free id by default, as hot_add does)."""
        if dev_id is None:
            dev_id = next(i for i in range(len(self._exports) + 1) if i not in self._exports)
        elif dev_id in self._exports:
            raise OSError(errno.EEXIST, f"zram{dev_id} already exists")
        dev = ZramDevice(f"zram{dev_id}")
        dev.async_backing_reads = True  # reads of written-back pages go to a worker thread
        dev.dedup = self.dedup
        self._exports[dev_id] = ZramExport(dev)
        return dev

    def get(self, name: str) -> ZramDevice:
        return self.export(name).dev

    def export(self, name: str) -> ZramExport:
        """The device's block export, which every front end serving its
        bytes goes through (NBD, FUSE ``dev/zramN``)."""
        export = self._exports.get(parse_device_name(name))
        if export is None:
            raise OSError(errno.ENODEV, f"no such device {name!r}")
        return export

    def devices(self) -> list[ZramDevice]:
        return [self._exports[i].dev for i in sorted(self._exports)]

    def hot_add(self) -> str:
        """Reading zram-control/hot_add: a new device; returns its id."""
        return f"{self.add().name[4:]}\n"

    def hot_remove(self, value: str) -> None:
        """Writing zram-control/hot_remove: reset and delete the device."""
        dev_id = kstrtoint(value)
        if dev_id < 0:
            raise OSError(errno.EINVAL, "device id must not be negative")
        export = self._exports.get(dev_id)
        if export is None:
            raise OSError(errno.ENODEV, f"no such device zram{dev_id}")
        export.dev.reset()  # EBUSY while clients are attached
        del self._exports[dev_id]

    # -- uzram.nbd.export.ExportRegistry ----------------------------------------

    def lookup(self, name: str) -> ZramExport | None:
        """NBD export by device name; the empty name means zram0."""
        dev_id = parse_export_name(name)
        return None if dev_id is None else self._exports.get(dev_id)

    def list(self) -> list[tuple[str, str]]:
        return [(self._exports[i].name, self._exports[i].description) for i in sorted(self._exports)]
