"""An uncompressed initramfs (cpio ``newc``) written directly from Python.

Writing the archive ourselves needs neither root nor the cpio tool, and lets
it hold a ``/dev/console`` node so the guest's PID 1 starts with a console.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Initramfs:
    """Entries in the order added; parent directories are created implicitly."""

    entries: list[tuple[str, int, bytes, int]] = field(default_factory=list)  # path, mode, data, rdev
    _dirs: set[str] = field(default_factory=set)

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        if path and path not in self._dirs:
            self._parents(path)
            self._dirs.add(path)
            self.entries.append((path, stat.S_IFDIR | mode, b"", 0))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries.append((path, stat.S_IFREG | mode, data, 0))

    def copy(self, path: str, src: Path, mode: int | None = None) -> None:
        self.file(path, src.read_bytes(), mode if mode is not None else src.stat().st_mode & 0o7777)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries.append((path, stat.S_IFLNK | 0o777, target.encode(), 0))

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries.append((path, stat.S_IFCHR | mode, b"", (major << 8) | minor))

    def build(self) -> bytes:
        """The archive: every entry owned by root, then the trailer."""
        out = bytearray()

        def put(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
            raw = name.encode() + b"\0"
            fields = (ino, mode, 0, 0, 1 if not stat.S_ISDIR(mode) else 2, 0, len(data),
                      0, 0, rdev >> 8, rdev & 0xFF, len(raw), 0)
            out.extend(b"070701" + b"".join(b"%08X" % v for v in fields))
            out.extend(raw)
            out.extend(b"\0" * (-len(out) % 4))
            out.extend(data)
            out.extend(b"\0" * (-len(out) % 4))

        for ino, (name, mode, data, rdev) in enumerate(self.entries, 1):
            put(name, mode, data, rdev, ino)
        put("TRAILER!!!", 0, b"", 0, 0)
        out.extend(b"\0" * (-len(out) % 512))
        return bytes(out)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.build())
        return path
