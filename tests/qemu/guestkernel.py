"""A stock Debian kernel for the guest, fetched with apt and cached unpacked.

``apt-get download`` fetches ``linux-image-<version>-amd64`` (nothing is
installed on the host); ``dpkg-deb --fsys-tarfile`` is read as a tar stream
and only ``vmlinuz`` and the ``.ko`` files are kept. The package has no
``modules.dep`` (depmod makes it at install time), so dependencies come from
each module's own ``.modinfo`` ``depends=`` field. The cache keeps the kernel
and the dependency closure of :data:`WANTED_MODULES`, about 10 MB.
"""

from __future__ import annotations

import fcntl
import json
import lzma
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# every module any test mode loads (the dependencies are found automatically)
WANTED_MODULES = ("virtio_pci", "virtio_blk", "nbd", "9pnet_virtio", "9p", "zram", "lz4", "zstd")
KERNEL_PKG_ENV = "UZRAM_QEMU_KERNEL_PKG"


class KernelUnavailable(Exception):
    """The guest kernel cannot be obtained (no apt, no package, no cache)."""


@dataclass(frozen=True)
class GuestKernel:
    root: Path          # the cache directory of one kernel package
    package: str
    version: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    def module_path(self, name: str) -> Path:
        return self.root / "modules" / f"{name}.ko"

    def load_order(self, names: tuple[str, ...] | list[str]) -> list[str]:
        """``names`` and their dependencies, dependencies first (built-ins left out)."""
        meta = json.loads((self.root / "deps.json").read_text())
        deps: dict[str, list[str]] = meta["deps"]
        builtin = set(meta["builtin"])
        order: list[str] = []

        def visit(n: str) -> None:
            n = n.replace("-", "_")
            if n in order or n in builtin:
                return
            if n not in deps:
                raise KeyError(f"module {n} is not in the cached kernel {self.version}")
            for d in deps[n]:
                visit(d)
            order.append(n)

        for n in names:
            visit(n)
        return order


def modinfo(image: bytes) -> dict[str, str]:
    """The ``key=value`` strings of an ELF64 module's ``.modinfo`` section."""
    if image[:4] != b"\x7fELF" or image[4] != 2:
        raise ValueError("not an ELF64 file")
    end = "<" if image[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", image, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(end + "IIQQQQ", image, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        if image[stroff + name:image.index(b"\0", stroff + name)] == b".modinfo":
            info: dict[str, str] = {}
            for item in image[off:off + size].split(b"\0"):
                k, sep, v = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(k, v)
            return info
    return {}


def _decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _apt(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def resolve_package() -> str | None:
    """The versioned package ``linux-image-amd64`` depends on (or $UZRAM_QEMU_KERNEL_PKG)."""
    if os.environ.get(KERNEL_PKG_ENV):
        return os.environ[KERNEL_PKG_ENV]
    if shutil.which("apt-cache") is None:
        return None
    for attempt in range(2):
        p = _apt(["apt-cache", "depends", "linux-image-amd64"])
        for line in p.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "Depends:" and parts[1].startswith("linux-image-"):
                return parts[1]
        if attempt == 0 and os.geteuid() == 0:
            _apt(["apt-get", "update", "-qq"])   # empty package lists on a fresh machine
    return None


def _extract(deb: Path, dest: Path) -> str:
    """Unpack vmlinuz and the wanted modules' closure from ``deb`` into ``dest``."""
    scratch = Path(tempfile.mkdtemp(prefix="ko-", dir=dest.parent))
    try:
        deps: dict[str, list[str]] = {}
        files: dict[str, Path] = {}
        builtin: set[str] = set()
        version = ""
        try:
            dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        except FileNotFoundError as e:
            raise KernelUnavailable("dpkg-deb not found") from e
        with dpkg, tarfile.open(fileobj=dpkg.stdout, mode="r|") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                f = tar.extractfile(m)
                assert f is not None
                if "/boot/vmlinuz-" in m.name:
                    version = base[len("vmlinuz-"):]
                    (dest / "vmlinuz").write_bytes(f.read())
                elif base == "modules.builtin" and "/lib/modules/" in m.name:
                    builtin = {os.path.basename(line).split(".ko")[0].replace("-", "_")
                               for line in f.read().decode().split()}
                elif "/lib/modules/" in m.name and ".ko" in base:
                    image = _decompress(base, f.read())
                    name = base.split(".ko")[0].replace("-", "_")
                    info = modinfo(image)
                    deps[name] = [d.replace("-", "_") for d in info.get("depends", "").split(",") if d]
                    files[name] = scratch / f"{name}.ko"
                    files[name].write_bytes(image)
        if dpkg.returncode != 0 or not version:
            raise KernelUnavailable(f"cannot unpack {deb.name}")
        meta = {"deps": {n: d for n, d in deps.items() if n not in builtin}, "builtin": sorted(builtin)}
        (dest / "deps.json").write_text(json.dumps(meta))
        kernel = GuestKernel(dest, "", version)
        closure = kernel.load_order(WANTED_MODULES)
        (dest / "modules").mkdir()
        for n in closure:
            shutil.copyfile(files[n], kernel.module_path(n))
        # keep only what was copied: the cache stays small and self-consistent
        meta["deps"] = {n: meta["deps"][n] for n in closure}
        (dest / "deps.json").write_text(json.dumps(meta))
        return version
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch(cache: Path) -> GuestKernel:
    """The guest kernel, downloaded and unpacked into ``cache/kernel/<package>`` once."""
    kroot = cache / "kernel"
    with _locked(cache / "kernel.lock"):
        pkg = resolve_package()
        if pkg is None:
            # offline: any complete cached kernel will do
            cached = sorted(p for p in kroot.glob("*/package") if p.is_file()) if kroot.exists() else []
            if not cached:
                raise KernelUnavailable("cannot resolve linux-image-amd64 with apt-cache (no package lists?)")
            pkg = cached[-1].read_text().strip()
        dest = kroot / pkg
        if not (dest / "package").is_file() or not all(
                (dest / "modules" / f"{m}.ko").is_file() for m in WANTED_MODULES):
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            dl = Path(tempfile.mkdtemp(prefix="dl-", dir=cache))
            try:
                p = _apt(["apt-get", "download", pkg], cwd=dl)
                if p.returncode != 0 and os.geteuid() == 0:
                    _apt(["apt-get", "update", "-qq"])    # stale lists: the mirror moved on
                    p = _apt(["apt-get", "download", pkg], cwd=dl)
                debs = list(dl.glob("*.deb"))
                if p.returncode != 0 or not debs:
                    shutil.rmtree(dest, ignore_errors=True)
                    raise KernelUnavailable(f"apt-get download {pkg} failed: {p.stderr.strip()[-500:]}")
                version = _extract(debs[0], dest)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
            finally:
                shutil.rmtree(dl, ignore_errors=True)
            (dest / "version").write_text(version + "\n")
            (dest / "package").write_text(pkg + "\n")   # written last: marks the cache complete
        return GuestKernel(dest, pkg, (dest / "version").read_text().strip())
