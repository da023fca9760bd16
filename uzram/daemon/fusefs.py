"""The sysfs-like FUSE tree: zram's attributes as files, plus each device's
contents as a file a loop device can sit on.

    MOUNT/zram-control/hot_add      read: add a device, prints its id
    MOUNT/zram-control/hot_remove   write an id: reset and remove it
    MOUNT/zramN/<attribute>         the attribute ABI (show on read, store on write)
    MOUNT/dev/zramN                 the device's bytes (open = a client, as a block device)

Attribute files behave like sysfs: the text is produced at the first read of
an open file, each write(2) is one store, errors are the kernel's errnos, and
reading a write-only (writing a read-only) attribute is EACCES.

``dev/zramN`` goes through the device's block export (``ZramExport``), the
object NBD connections use: an open file is a client (``attach``/``detach``),
and reads and writes are the export's calls, awaited when they return an
awaitable (written-back pages, sub-page writes into them).
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any, TypeVar

import pyfuse3
import trio

from ..zram import ZramDevice, attrs
from .export import ZramExport
from .logs import event

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("uzram.fuse")

ROOT = pyfuse3.ROOT_INODE
CONTROL, HOT_ADD, HOT_REMOVE, DEVDIR = ROOT + 1, ROOT + 2, ROOT + 3, ROOT + 4
DEV_BASE = 1 << 20          # zramN's directory is DEV_BASE * (N + 1)
DATA_FILE = DEV_BASE - 1    # offset of dev/zramN inside its range
ATTR_NAMES = attrs.names()
T = TypeVar("T")


class _Handle:
    __slots__ = ("inode", "text", "export")

    def __init__(self, inode: int, export: ZramExport | None = None) -> None:
        self.inode = inode
        self.text: bytes | None = None
        self.export = export   # dev/zramN: attached while the file is open


def _errno_replies(cls: type[T]) -> type[T]:
    """Every operation answers with an errno instead of raising: an exception
    that is not a FUSEError (a bug, an OSError from a device) would otherwise
    leave pyfuse3.main() and stop the daemon. Unexpected ones are logged and
    become EIO for that request only."""
    def wrap(name: str, op: Any) -> Any:
        @functools.wraps(op)
        async def guarded(self: Any, *args: Any) -> Any:
            try:
                return await op(self, *args)
            except pyfuse3.FUSEError:
                raise
            except OSError as e:
                event(log, logging.DEBUG, "operation failed", op=name, errno=e.errno)
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
            except Exception as e:
                event(log, logging.ERROR, "operation failed unexpectedly", op=name, error=repr(e))
                log.debug("traceback", exc_info=True)
                raise pyfuse3.FUSEError(errno.EIO) from None
        return guarded

    for name, op in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(op):
            setattr(cls, name, wrap(name, op))
    return cls


@_errno_replies
class SysfsTree(pyfuse3.Operations):
    def __init__(self, daemon: Daemon) -> None:
        super().__init__()
        self.daemon = daemon
        self.mtime = time.time_ns()
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1

    # -- naming ---------------------------------------------------------------------

    def _device_ids(self) -> list[int]:
        return [int(d.name[4:]) for d in self.daemon.registry.devices()]

    def _device(self, dev_id: int) -> ZramDevice:
        return self._export(dev_id).dev

    def _export(self, dev_id: int) -> ZramExport:
        try:
            return self.daemon.registry.export(f"zram{dev_id}")
        except OSError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _resolve(self, inode: int) -> tuple[str, int, str]:
        """(kind, device id, attribute) of an inode; kind is root, control,
        hot_add, hot_remove, devdir, devfile, dir or attr."""
        fixed = {ROOT: "root", CONTROL: "control", HOT_ADD: "hot_add", HOT_REMOVE: "hot_remove", DEVDIR: "devdir"}
        if inode in fixed:
            return fixed[inode], -1, ""
        dev_id, rest = divmod(inode, DEV_BASE)
        dev_id -= 1
        if dev_id < 0 or dev_id not in self._device_ids():
            raise pyfuse3.FUSEError(errno.ENOENT)
        if rest == 0:
            return "dir", dev_id, ""
        if rest == DATA_FILE:
            return "devfile", dev_id, ""
        if 1 <= rest <= len(ATTR_NAMES):
            return "attr", dev_id, ATTR_NAMES[rest - 1]
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        kind, dev_id, name = self._resolve(inode)
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_nlink = 1
        a.st_uid, a.st_gid = os.geteuid(), os.getegid()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mtime
        a.st_blksize = 4096
        a.entry_timeout = a.attr_timeout = 0
        if kind in ("root", "control", "devdir", "dir"):
            a.st_mode, a.st_size, a.st_nlink = stat.S_IFDIR | 0o755, 0, 2
        elif kind == "hot_add":
            a.st_mode, a.st_size = stat.S_IFREG | 0o400, 4096
        elif kind == "hot_remove":
            a.st_mode, a.st_size = stat.S_IFREG | 0o200, 4096
        elif kind == "devfile":
            a.st_mode, a.st_size = stat.S_IFREG | 0o660, self._device(dev_id).disksize
        else:
            a.st_mode, a.st_size = stat.S_IFREG | attrs.MODES[name], 4096
        return a

    def _children(self, inode: int) -> list[tuple[bytes, int]]:
        kind, dev_id, _ = self._resolve(inode)
        if kind == "root":
            return [(b"zram-control", CONTROL), (b"dev", DEVDIR)] + [
                (f"zram{i}".encode(), DEV_BASE * (i + 1)) for i in sorted(self._device_ids())]
        if kind == "control":
            return [(b"hot_add", HOT_ADD), (b"hot_remove", HOT_REMOVE)]
        if kind == "devdir":
            return [(f"zram{i}".encode(), DEV_BASE * (i + 1) + DATA_FILE) for i in sorted(self._device_ids())]
        if kind == "dir":
            base = DEV_BASE * (dev_id + 1)
            return [(n.encode(), base + 1 + k) for k, n in enumerate(ATTR_NAMES)]
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    # -- directory operations ------------------------------------------------------------

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        for child, inode in self._children(parent_inode):
            if child == name:
                return self._attr(inode)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: Any) -> int:
        self._children(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for i, (name, inode) in enumerate(self._children(fh)):
            if i < start_id:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(inode), i + 1):
                return

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        """Nothing here can change owner, mode or times: EPERM rather than a
        success that did nothing. A size is ignored on an attribute (sysfs
        ignores it, and ``echo 1 > attr`` opens with O_TRUNC); on dev/zramN it
        is EINVAL, as truncate(2) on a block device, unless it is the size
        the device has."""
        kind, dev_id, _ = self._resolve(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_atime or fields.update_mtime or fields.update_ctime:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size:
            if kind == "devfile":
                if attr.st_size != self._device(dev_id).disksize:
                    raise pyfuse3.FUSEError(errno.EINVAL)
            elif kind not in ("attr", "hot_add", "hot_remove"):
                raise pyfuse3.FUSEError(errno.EISDIR)
        return self._attr(inode)

    # -- files ----------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        kind, dev_id, name = self._resolve(inode)
        acc = flags & os.O_ACCMODE
        reading = acc in (os.O_RDONLY, os.O_RDWR)
        writing = acc in (os.O_WRONLY, os.O_RDWR)
        export = None
        if kind == "attr":
            mode = attrs.MODES[name]
            if (reading and not mode & 0o444) or (writing and not mode & 0o222):
                raise pyfuse3.FUSEError(errno.EACCES)
        elif kind == "hot_add" and writing or kind == "hot_remove" and reading:
            raise pyfuse3.FUSEError(errno.EACCES)
        elif kind == "devfile":
            export = self._export(dev_id)
            try:
                export.attach()  # a client, as an NBD connection is: EBUSY while resetting, EIO if unclean
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        elif kind not in ("attr", "hot_add", "hot_remove"):
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(inode, export)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is not None and h.export is not None:
            h.export.detach()

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles[fh]
        kind, dev_id, name = self._resolve(h.inode)
        try:
            if h.export is not None:
                return await self._read_data(h.export, off, size)
            if h.text is None:
                if kind == "hot_add":
                    h.text = self.daemon.hot_add().encode()
                else:
                    h.text = self._device(dev_id).show(name).encode()
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return h.text[off : off + size]

    async def _read_data(self, export: ZramExport, off: int, size: int) -> bytes:
        size = max(0, min(size, export.size() - off))
        if not size:
            return b""
        chunks = export.read(off, size)
        if not isinstance(chunks, list):
            chunks = await chunks
        return b"".join(chunks)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles[fh]
        kind, dev_id, name = self._resolve(h.inode)
        try:
            if h.export is not None:
                if off + len(buf) > h.export.size():
                    raise OSError(errno.ENOSPC, "write beyond the end of the device")
                pending = h.export.write(off, memoryview(buf), False)
                if pending is not None:
                    await pending
            elif kind == "hot_remove":
                await self.daemon.hot_remove(buf.decode(errors="replace"))
            else:
                await self.daemon.store(self._device(dev_id), name, buf.decode(errors="replace"), None)
        except OSError as e:
            event(log, logging.DEBUG, "store failed", inode=h.inode, errno=e.errno)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    async def flush(self, fh: int) -> None:
        return None




async def serve(daemon: Daemon, mountpoint: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Mount the tree and serve it until cancelled; always unmounts."""
    os.makedirs(mountpoint, exist_ok=True)
    # The kernel checks modes against the caller (others may read what sysfs
    # lets them read); open() adds EACCES for root on the wrong direction.
    options = set(pyfuse3.default_options) | {"fsname=uzram", "allow_other", "default_permissions"}
    pyfuse3.init(SysfsTree(daemon), mountpoint, options)
    event(log, logging.INFO, "mounted", path=mountpoint)
    try:
        task_status.started()
        await pyfuse3.main()
    finally:
        pyfuse3.close(unmount=True)
        event(log, logging.INFO, "unmounted", path=mountpoint)
