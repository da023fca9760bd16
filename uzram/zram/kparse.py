"""The kernel's sysfs input parsers, reproduced with their exact errors.

Every function raises ``OSError`` with the errno the kernel would return, so
attribute stores can let them propagate unchanged.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_SUFFIX_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
U64_MAX = (1 << 64) - 1


def _err(code: int) -> OSError:
    return OSError(code, errno.errorcode.get(code, str(code)))


def _strip_newline(s: str) -> str:
    return s[:-1] if s.endswith("\n") else s


_DIGITS = {8: re.compile(r"[0-7]*"), 10: re.compile(r"[0-9]*"), 16: re.compile(r"[0-9a-fA-F]*")}
_DEC_CHUNK = 18  # decimal digits folded in per step: 10**18 < 2**64


def _wrap64(digits: str, base: int) -> int:
    """The value of a digit string modulo 2**64 (C's unsigned overflow), in
    time linear in its length (``int()`` of a long string is quadratic)."""
    if base == 16:
        return int(digits[-16:] or "0", 16)
    if base == 8:
        return int(digits[-22:] or "0", 8) & U64_MAX   # 8**22 is a multiple of 2**64
    value = 0
    scale = 10 ** _DEC_CHUNK
    head = len(digits) % _DEC_CHUNK
    if head:
        value = int(digits[:head])
    for i in range(head, len(digits), _DEC_CHUNK):
        value = (value * scale + int(digits[i : i + _DEC_CHUNK])) & U64_MAX
    return value


def _parse_prefix(s: str, base: int) -> tuple[int, int]:
    """``simple_strtoull``: the longest valid numeric prefix and its length.

    With base 0 the base follows the C convention (``0x`` hex, ``0`` octal).
    Returns (value, characters consumed); consumed is 0 if nothing parsed.
    The value wraps modulo 2**64 as the kernel's does.
    """
    i = 0
    if base == 0:
        if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
            base, i = 16, 2
        elif s[:1] == "0":
            base = 8
        else:
            base = 10
    elif base == 16 and s[:2].lower() == "0x":
        i = 2
    m = _DIGITS[base].match(s, i)
    assert m is not None, "a starred pattern always matches"
    end = m.end()
    if end == i:
        return 0, 0
    return _wrap64(s[i:end], base), end


def memparse(s: str) -> tuple[int, int]:
    """``memparse``: a number with auto base and an optional K/M/G/T/P/E suffix.

    Returns (value, characters consumed). Parsing stops at the first other
    character; nothing parsed gives (0, 0).
    """
    value, n = _parse_prefix(s, 0)
    if n and n < len(s) and s[n].lower() in _SUFFIX_SHIFT:
        value = (value << _SUFFIX_SHIFT[s[n].lower()]) & U64_MAX
        n += 1
    return value, n


def kstrtoull(s: str, base: int = 10, maximum: int = U64_MAX) -> int:
    """``kstrtoull`` and friends: the whole string (one trailing newline allowed)
    must be an unsigned number; otherwise EINVAL, and ERANGE above ``maximum``."""
    body = _strip_newline(s)
    if body.startswith("+"):
        body = body[1:]
    if base == 16 and body[:2].lower() == "0x":
        body = body[2:]
    if base == 0:
        if body[:2].lower() == "0x":
            base, body = 16, body[2:]
        elif body[:1] == "0" and len(body) > 1:
            base, body = 8, body[1:]
        else:
            base = 10
    if not body:
        raise _err(errno.EINVAL)
    m = _DIGITS[base].match(body)
    assert m is not None, "a starred pattern always matches"
    n = m.end()
    if n == 0:
        raise _err(errno.EINVAL)
    digits = body[:n].lstrip("0")
    # U64_MAX has 20 decimal, 16 hex or 22 octal digits: longer overflows
    if len(digits) > {8: 22, 10: 20, 16: 16}[base] or int(digits or "0", base) > U64_MAX:
        raise _err(errno.ERANGE)
    if n < len(body):
        raise _err(errno.EINVAL)
    value = int(digits or "0", base)
    if value > maximum:
        raise _err(errno.ERANGE)
    return value


def kstrtouint(s: str, base: int = 10) -> int:
    return kstrtoull(s, base, (1 << 32) - 1)


def kstrtou16(s: str, base: int = 10) -> int:
    return kstrtoull(s, base, (1 << 16) - 1)


def kstrtoint(s: str, base: int = 10) -> int:
    """``kstrtoint``: a signed 32-bit number."""
    body = _strip_newline(s)
    if body.startswith("-"):
        magnitude = kstrtoull(body[1:], base)
        if magnitude > 1 << 31:
            raise _err(errno.ERANGE)
        return -magnitude
    value = kstrtoull(body, base)
    if value >= 1 << 31:
        raise _err(errno.ERANGE)
    return value


def kstrtobool(s: str) -> bool:
    """``kstrtobool``: y/Y/1/t/T, n/N/0/f/F, on/off; anything else is EINVAL."""
    if not s:
        raise _err(errno.EINVAL)
    c = s[0]
    if c in "yY1tT":
        return True
    if c in "nN0fF":
        return False
    if c in "oO" and len(s) > 1:
        if s[1] in "nN":
            return True
        if s[1] in "fF":
            return False
    raise _err(errno.EINVAL)


def sysfs_streq(s: str, word: str) -> bool:
    """``sysfs_streq``: equal, ignoring one trailing newline on either side."""
    return _strip_newline(s) == _strip_newline(word)


def next_args(s: str) -> Iterator[tuple[str, str | None]]:
    """``next_arg`` over a whole buffer: whitespace-separated ``key[=value]``.

    Values may be double-quoted (the quotes are removed). A token without ``=``
    yields a value of None; ``key=`` yields an empty string.
    """
    i, n = 0, len(s)
    while True:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            return
        quoted = False
        if s[i] == '"':
            quoted = True
            i += 1
        start = i
        equals = -1
        in_quote = quoted
        while i < n:
            c = s[i]
            if c.isspace() and not in_quote:
                break
            if c == "=" and equals < 0 and i > start:
                equals = i
            if c == '"':
                in_quote = not in_quote
            i += 1
        token = s[start:i]
        if equals < 0:
            key, value = token, None
        else:
            key, value = token[: equals - start], token[equals - start + 1 :]
        if quoted and key.endswith('"'):
            key = key[:-1]
        if value is not None and value.startswith('"'):
            value = value[1:]
            if value.endswith('"'):
                value = value[:-1]
        elif value is not None and value.endswith('"') and quoted:
            value = value[:-1]
        yield key, value


Convert = Callable[[str], Any]
"""A value parser of a schema: returns the value or raises OSError."""


def iter_args(s: str, schema: Mapping[str, Convert], *, bare: bool = False) -> Iterator[tuple[str, Any]]:
    """``next_arg`` with a schema: each ``key=value`` whose key is in
    ``schema`` as ``(key, schema[key](value))``, in order and lazily (a bad
    value raises when reached, as the kernel's loops do). Unknown keys are
    skipped, as the kernel's stores skip them. A token without a value
    (``key`` or ``key=``) is EINVAL, or with ``bare`` yields ``(key, None)``."""
    for key, value in next_args(s):
        if not value:
            if not bare:
                raise OSError(errno.EINVAL, f"{key}: expected key=value")
            yield key, None
            continue
        convert = schema.get(key)
        if convert is not None:
            yield key, convert(value)


def parse_args(s: str, schema: Mapping[str, Convert]) -> dict[str, Any]:
    """``iter_args`` folded into a dict: the last value of each key wins."""
    return dict(iter_args(s, schema))


def text(value: str) -> str:
    """A schema entry for a string value, taken as it is."""
    return value
