"""A FUSE filesystem with one file whose I/O can be slowed down or made to
fail with a chosen errno: a real kernel path for backing-file errors.

Run as ``python -m tests.faultyfs MOUNTPOINT SIZE``; it serves ``backing``
(SIZE bytes, sparse) and ``ctl``. Writing ``ctl``: ``delay SECONDS``,
``fail ERRNO`` (every later write fails), ``failsync ERRNO`` (every later
fsync fails: the page cache's writeback error), ``ok``. Reading ``ctl``: counters.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PAGE = 4096


def main(mountpoint: str, size: int) -> None:
    import pyfuse3
    import trio

    BACKING, CTL = pyfuse3.ROOT_INODE + 1, pyfuse3.ROOT_INODE + 2
    names = {b"backing": BACKING, b"ctl": CTL}

    class FaultyFS(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.blocks: dict[int, bytes] = {}
            self.delay = 0.0
            self.fail = 0
            self.failsync = 0
            self.syncs = 0
            self.writes = self.failed = 0
            self.mtime = time.time_ns()

        def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            if inode == pyfuse3.ROOT_INODE:
                a.st_mode, a.st_size = stat.S_IFDIR | 0o755, 0
            elif inode == BACKING:
                a.st_mode, a.st_size = stat.S_IFREG | 0o600, size  # private, as uzramd requires
            else:
                a.st_mode, a.st_size = stat.S_IFREG | 0o644, 4096
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mtime
            a.st_blksize, a.st_blocks = 4096, len(self.blocks) * 8
            return a

        async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
            return self._attr(inode)

        async def lookup(self, parent, name, ctx=None):  # type: ignore[no-untyped-def]
            if parent != pyfuse3.ROOT_INODE or name not in names:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(names[name])

        async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
            return inode

        async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
            for i, (name, inode) in enumerate(names.items()):
                if i >= start_id and not pyfuse3.readdir_reply(token, name, self._attr(inode), i + 1):
                    return

        async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
            return self._attr(inode)

        async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return pyfuse3.FileInfo(fh=inode, direct_io=True)

        async def read(self, fh, off, length):  # type: ignore[no-untyped-def]
            if fh == CTL:
                text = (f"writes {self.writes}\nfailed {self.failed}\nblocks {len(self.blocks)}\n"
                        f"syncs {self.syncs}\n").encode()
                return text[off : off + length]
            if self.delay:
                await trio.sleep(self.delay)
            if self.fail:
                raise pyfuse3.FUSEError(self.fail)
            out = bytearray()
            pos = off
            end = min(off + length, size)
            while pos < end:
                b, o = divmod(pos, PAGE)
                n = min(PAGE - o, end - pos)
                out += self.blocks.get(b, bytes(PAGE))[o : o + n]
                pos += n
            return bytes(out)

        async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
            if fh == CTL:
                words = buf.decode().split()
                if words[:1] == ["delay"]:
                    self.delay = float(words[1])
                elif words[:1] == ["fail"]:
                    self.fail = int(words[1])
                elif words[:1] == ["failsync"]:
                    self.failsync = int(words[1])
                elif words[:1] == ["ok"]:
                    self.fail, self.failsync, self.delay = 0, 0, 0.0
                return len(buf)
            self.writes += 1
            if self.delay:
                await trio.sleep(self.delay)
            if self.fail:
                self.failed += 1
                raise pyfuse3.FUSEError(self.fail)
            if off + len(buf) > size:
                raise pyfuse3.FUSEError(errno.EFBIG)
            pos = 0
            while pos < len(buf):
                b, o = divmod(off + pos, PAGE)
                n = min(PAGE - o, len(buf) - pos)
                block = bytearray(self.blocks.get(b, bytes(PAGE)))
                block[o : o + n] = buf[pos : pos + n]
                self.blocks[b] = bytes(block)
                pos += n
            return len(buf)

        async def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
            self.syncs += 1
            if self.failsync:
                raise pyfuse3.FUSEError(self.failsync)

    fs = FaultyFS()
    options = set(pyfuse3.default_options) - {"default_permissions"}
    options |= {"fsname=uzram-faultyfs"}
    pyfuse3.init(fs, mountpoint, options)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            with trio.open_signal_receiver(2, 15) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)


class FaultyFile:
    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.path = mountpoint / "backing"

    def control(self, command: str) -> None:
        fd = os.open(self.mountpoint / "ctl", os.O_WRONLY)
        try:
            os.write(fd, command.encode())
        finally:
            os.close(fd)

    def counters(self) -> dict[str, int]:
        text = (self.mountpoint / "ctl").read_text()
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


@contextmanager
def faulty_file(workdir: Path, size: int) -> Iterator[FaultyFile]:
    """Mount the filesystem under ``workdir``; skips the test without FUSE."""
    import subprocess

    import pytest

    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs /dev/fuse and root to mount a FUSE filesystem")
    mnt = workdir / "faultyfs"
    mnt.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "tests.faultyfs", str(mnt), str(size)],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "backing").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("faultyfs did not come up")
            time.sleep(0.02)
        yield FaultyFile(mnt)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["umount", "-l", str(mnt)], check=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
