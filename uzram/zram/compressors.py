"""Compression backends by their kernel names, with zram's per-algorithm params.

Only backends that really work here are offered; ``comp_algorithm`` lists
exactly these, in the kernel's order. Each ``Codec`` is used by one thread.

lzo and lzo-rle need the optional ``python-lzo`` binding (``pip install
uzram[lzo]``; it builds against liblzo2). Both run LZO1X-1, the kernel's lzo
compressor; the kernel's lzo-rle additionally encodes runs of zero bytes
with a short RLE instruction (LZO bitstream version 1). uzram serves
lzo-rle with plain LZO1X-1: pages never leave the process, so the format
need not match, and the few bytes the RLE saves on zero runs are measured
against the kernel in the README.
"""

from __future__ import annotations

import errno
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import lz4.block  # type: ignore[import-untyped]  # python-lz4 ships no type information
import zstandard

try:
    import lzo as _lzo  # type: ignore[import-not-found,import-untyped,unused-ignore]  # the optional [lzo] extra; no type information
except ImportError:  # pragma: no cover - depends on the installation
    _lzo = None

from .sizeclass import PAGE_SIZE

# The kernel's backend order (zcomp.c); uzram offers the ones it can run.
KERNEL_ORDER = ("lzo-rle", "lzo", "lz4", "lz4hc", "zstd", "deflate", "842")
DEFAULT_ALGORITHM = "lz4"
MAX_ALGO_NAME = 128  # ZRAM_MAX_ALGO_NAME_SZ: names this long or longer are E2BIG


@dataclass(frozen=True)
class CompParams:
    """What ``algorithm_params`` stores for one priority."""
    level: int | None = None
    dict_data: bytes | None = None
    deflate_winbits: int | None = None


class Codec:
    """A ready compressor/decompressor pair for one algorithm and its params."""

    __slots__ = ("name", "params", "compress", "decompress")

    def __init__(self, name: str, params: CompParams,
                 compress: Callable[[bytes | memoryview], bytes],
                 decompress: Callable[[bytes | memoryview, int], bytes]) -> None:
        self.name = name
        self.params = params
        self.compress = compress
        self.decompress = decompress  # (data, original length) -> bytes


def _lz4_positional() -> bool:
    """Whether python-lz4 takes ``store_size`` as the third positional
    argument of ``compress`` (its keyword parsing costs about a microsecond
    a page; the documented order differs between versions, so it is probed)."""
    probe = bytes(range(256)) * 16
    try:
        return bool(lz4.block.compress(probe, "default", False) == lz4.block.compress(probe, store_size=False)
                    and lz4.block.decompress(lz4.block.compress(probe, store_size=False), len(probe)) == probe)
    except (TypeError, ValueError, lz4.block.LZ4BlockError):
        return False


_LZ4_POSITIONAL = _lz4_positional()


def _lz4(params: CompParams, hc: bool) -> Codec:
    d = params.dict_data or b""
    compress_raw: Callable[..., bytes] = lz4.block.compress
    if hc:
        level = 9 if params.level is None else params.level
        def compress(src: bytes | memoryview) -> bytes:
            return compress_raw(src, mode="high_compression", compression=level, store_size=False, dict=d)
    elif params.level is None and not d and _LZ4_POSITIONAL:
        def compress(src: bytes | memoryview) -> bytes:
            return compress_raw(src, "default", False)
    elif params.level is None and not d:
        def compress(src: bytes | memoryview) -> bytes:
            return compress_raw(src, store_size=False)
    else:
        accel = max(1, params.level or 1)
        def compress(src: bytes | memoryview) -> bytes:
            return compress_raw(src, mode="fast", acceleration=accel, store_size=False, dict=d)
    decompress_raw: Callable[..., bytes] = lz4.block.decompress
    if d:
        def decompress(src: bytes | memoryview, size: int) -> bytes:
            return decompress_raw(src, uncompressed_size=size, dict=d)
    elif _LZ4_POSITIONAL:
        decompress = decompress_raw   # called as it is: no Python frame per page read
    else:
        def decompress(src: bytes | memoryview, size: int) -> bytes:
            return decompress_raw(src, uncompressed_size=size)
    return Codec("lz4hc" if hc else "lz4", params, compress, decompress)


def _zstd(params: CompParams) -> Codec:
    level = 3 if params.level is None else params.level  # zstd's default level, as the kernel uses
    zdict = zstandard.ZstdCompressionDict(params.dict_data) if params.dict_data else None
    cctx = zstandard.ZstdCompressor(level=level, dict_data=zdict, write_checksum=False,
                                    write_content_size=False, write_dict_id=False)
    dctx = zstandard.ZstdDecompressor(dict_data=zdict)
    c, dz = cctx.compress, dctx.decompress

    def decompress(src: bytes | memoryview, size: int) -> bytes:
        return dz(src, max_output_size=size)
    return Codec("zstd", params, c, decompress)


def _deflate(params: CompParams) -> Codec:
    level = -1 if params.level is None else params.level
    winbits = 11 if params.deflate_winbits is None else params.deflate_winbits  # DEFLATE_DEF_WINBITS
    if not 9 <= winbits <= 15 or not -1 <= level <= 9:
        raise OSError(errno.EINVAL, f"deflate: level {level} or winbits {winbits} out of range")
    wbits = -winbits

    def compress(src: bytes | memoryview) -> bytes:
        return zlib.compress(src, level, wbits)

    def decompress(src: bytes | memoryview, size: int) -> bytes:
        return zlib.decompress(src, wbits, size)
    return Codec("deflate", params, compress, decompress)


def _lzo1x(name: str, params: CompParams) -> Codec:
    """LZO1X-1, as the kernel's lzo (which ignores level and dictionary)."""
    compress_raw: Callable[..., bytes] = _lzo.compress
    decompress_raw: Callable[..., bytes] = _lzo.decompress

    def compress(src: bytes | memoryview) -> bytes:
        return compress_raw(src if type(src) is bytes else bytes(src), 1, False)

    def decompress(src: bytes | memoryview, size: int) -> bytes:
        return decompress_raw(src if type(src) is bytes else bytes(src), False, size)
    return Codec(name, params, compress, decompress)


_FACTORIES: dict[str, Callable[[CompParams], Codec]] = {
    "lz4": lambda p: _lz4(p, hc=False),
    "lz4hc": lambda p: _lz4(p, hc=True),
    "zstd": _zstd,
    "deflate": _deflate,
}
if _lzo is not None:
    _FACTORIES["lzo-rle"] = lambda p: _lzo1x("lzo-rle", p)
    _FACTORIES["lzo"] = lambda p: _lzo1x("lzo", p)
_ERRORS: tuple[type[Exception], ...] = (zstandard.ZstdError, lz4.block.LZ4BlockError, zlib.error, ValueError) + (
    (_lzo.error,) if _lzo is not None else ())

AVAILABLE: tuple[str, ...] = tuple(n for n in KERNEL_ORDER if n in _FACTORIES)


def create_codec(name: str, params: CompParams | None = None) -> Codec:
    """``zcomp_create``; raises OSError(EINVAL) for unknown names or bad params."""
    factory = _FACTORIES.get(name)
    if factory is None:
        if name in ("lzo", "lzo-rle"):
            raise OSError(errno.EINVAL, f"{name} needs python-lzo: pip install 'uzram[lzo]' "
                          "(it builds against liblzo2-dev)")
        raise OSError(errno.EINVAL, f"unknown compression algorithm {name!r}")
    params = params or CompParams()
    try:
        codec = factory(params)
        # Prove the settings work (bad levels or dictionaries fail here, not on I/O).
        probe = bytes(range(256)) * (PAGE_SIZE // 256)
        if codec.decompress(codec.compress(probe), PAGE_SIZE) != probe:
            raise OSError(errno.EINVAL, f"{name}: self-test failed")
    except _ERRORS as e:
        raise OSError(errno.EINVAL, f"{name}: {e}") from e
    return codec


def format_available(selected: str | None) -> str:
    """``zcomp_available_show``: every backend, the selected one in brackets."""
    return "".join(f"[{n}] " if n == selected else f"{n} " for n in AVAILABLE) + "\n"
