"""The block-export interface the NBD server serves.

Every data call returns its result directly (the fast path) or an awaitable
when it has to wait for I/O; the server tells them apart cheaply (``type(r) is
list`` / ``r is None``) and awaits only the latter, in a separate task, so the
connection keeps serving other requests meanwhile (out-of-order completion).

Contract:

* Errors are raised as ``OSError(errno, ...)``; the server maps them to the
  few NBD error values (EDQUOT/EFBIG -> ENOSPC, unknown -> EIO).
* ``write`` consumes ``data`` synchronously, before it returns, even when it
  returns an awaitable: ``data`` is a view into the connection's receive ring
  and is released as soon as the call returns.
* Buffers returned by ``read`` belong to the caller; their lengths add up to
  exactly ``length`` (byte-format buffers).  A read that returns an awaitable
  delivers the data as of the call: later requests, including writes to the
  same range, are not held back for it, so pin what it still needs.
* While a ``write``/``trim``/``write_zeroes`` awaitable is pending, the server
  holds back later requests touching the same blocks until it completes:
  ranges are widened to ``ordering_granularity`` bytes (a power of two; 1 if
  the export does not say), e.g. 4096 for an export that read-modify-writes
  whole 4 KiB pages.
* ``block_status`` returns ``(length, flags)`` extents covering a non-empty
  prefix of the range, flags being ``STATE_HOLE | STATE_ZERO`` bits.
* ``attach``/``detach`` bracket each connection that selected the export:
  ``detach`` is called exactly once per successful ``attach``, after every
  request of that connection has been answered.  ``attach`` may refuse with
  ``OSError(EBUSY | ENODEV | ESHUTDOWN | EPERM)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What ``read`` may return pieces of (``collections.abc.Buffer`` needs 3.12)."""

__all__ = ["BlockExport", "Buffer", "ExportRegistry", "StaticRegistry"]


@runtime_checkable
class BlockExport(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def ordering_granularity(self) -> int: ...

    def size(self) -> int:
        """Size in bytes; may change between connections (read at GO time)."""
        ...

    def attach(self) -> None: ...

    def detach(self) -> None: ...

    def read(self, offset: int, length: int) -> Sequence[Buffer] | Awaitable[Sequence[Buffer]]: ...

    def write(self, offset: int, data: memoryview, fua: bool) -> None | Awaitable[None]: ...

    def trim(self, offset: int, length: int) -> None | Awaitable[None]: ...

    def write_zeroes(self, offset: int, length: int, may_trim: bool) -> None | Awaitable[None]: ...

    def flush(self) -> None | Awaitable[None]: ...

    def cache(self, offset: int, length: int) -> None | Awaitable[None]: ...

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]: ...


class ExportRegistry(Protocol):
    def lookup(self, name: str) -> BlockExport | None:
        """The export called ``name``; the empty name means the default export."""
        ...

    def list(self) -> list[tuple[str, str]]:
        """``(name, description)`` of every export, for NBD_OPT_LIST."""
        ...


class StaticRegistry:
    """A fixed set of exports; the first one is the default."""

    def __init__(self, exports: list[BlockExport]) -> None:
        self._exports = {e.name: e for e in exports}
        self._default = exports[0] if exports else None

    def lookup(self, name: str) -> BlockExport | None:
        if name == "":
            return self._default
        return self._exports.get(name)

    def list(self) -> list[tuple[str, str]]:
        return [(e.name, e.description) for e in self._exports.values()]
