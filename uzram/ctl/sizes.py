"""util-linux size syntax: ``strtosize()`` for input and
``size_to_human_string(SIZE_SUFFIX_1LETTER)`` for output.

Both follow util-linux's ``lib/strutils.c`` digit for digit, quirks included,
so that ``uzramctl -s`` configures the same byte count as ``zramctl -s`` and
the listing prints the same strings.
"""

from __future__ import annotations

UINTMAX_MAX = (1 << 64) - 1
_SUFFIXES = "KMGTPEZY"
_SPACE = " \t\n\v\f\r"
_LETTERS = "BKMGTPE"


class SizeError(ValueError):
    """The text is not a size (util-linux sets EINVAL or ERANGE)."""


def _strtoumax(s: str, start: int) -> tuple[int, int]:
    """C ``strtoumax(s + start, &end, 0)``: (value, end index); end == start if no digits."""
    n, i = len(s), start
    while i < n and s[i] in _SPACE:
        i += 1
    if i < n and s[i] in "+-":   # '-' was refused by the caller; '+' is allowed
        i += 1
    base = 10
    if s[i:i + 2].lower() == "0x" and i + 2 < n and s[i + 2] in "0123456789abcdefABCDEF":
        base, i = 16, i + 2
    elif s[i:i + 1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    j = i
    while j < n and s[j].lower() in digits:
        j += 1
    if j == i:
        return 0, start
    value = int(s[i:j], base)
    if value > UINTMAX_MAX:
        raise SizeError("Numerical result out of range")
    return value, j


def _scale(x: int, base: int, power: int) -> int:
    for _ in range(power):
        if UINTMAX_MAX // base < x:
            raise SizeError("Numerical result out of range")
        x *= base
    return x


def parse_size(text: str) -> int:
    """Bytes for ``text``: a number (``0x`` hex and ``0`` octal too) with an
    optional fraction and suffix: ``K``/``KiB`` = 1024, ``KB`` = 1000, and so on
    for M G T P E Z Y. Raises SizeError.

    Fractions are added digit by digit the way util-linux does it, so
    ``0.3K`` is 341 (not 307), exactly what zramctl would set.
    """
    s = text
    if not s:
        raise SizeError("Invalid argument")
    if s.lstrip(_SPACE).startswith("-"):
        raise SizeError("Invalid argument")
    x, end = _strtoumax(s, 0)
    if end == 0:
        raise SizeError("Invalid argument")
    n = len(s)
    if end == n:
        return x

    def at(k: int) -> str:
        return s[k] if k < n else ""

    base, frac, frac_zeros, p = 1024, 0, 0, end
    while True:   # util-linux's check_suffix label
        if at(p + 1) == "i" and at(p + 2) in ("B", "b") and p + 3 == n:
            base = 1024
        elif at(p + 1) in ("B", "b") and p + 2 == n:
            base = 1000
        elif at(p + 1):
            if frac == 0 and at(p) == ".":
                q = p + 1
                while at(q) == "0":
                    frac_zeros += 1
                    q += 1
                if at(q).isdigit():
                    frac, end = _strtoumax(s, q)
                    if end == q:
                        raise SizeError("Invalid argument")
                else:
                    end = q
                if end == n:
                    raise SizeError("Invalid argument")   # a fraction without a suffix
                p = end
                continue
            raise SizeError("Invalid argument")
        break
    if at(p) and at(p) in _SUFFIXES:
        power = _SUFFIXES.index(at(p)) + 1
    elif at(p) and at(p) in _SUFFIXES.lower():
        power = _SUFFIXES.lower().index(at(p)) + 1
    else:
        raise SizeError("Invalid argument")
    x = _scale(x, base, power)
    if frac:
        frac_base = _scale(1, base, power)
        frac_div, frac_poz = 10, 1
        while frac_div < frac:
            if frac_div <= UINTMAX_MAX // 10:
                frac_div *= 10
            else:
                frac //= 10
        for _ in range(frac_zeros):
            if frac_div <= UINTMAX_MAX // 10:
                frac_div *= 10
            else:
                frac //= 10
        while True:
            seg = frac % 10
            seg_div = frac_div // frac_poz
            frac //= 10
            frac_poz *= 10
            if seg and seg_div // seg:
                x = (x + frac_base // (seg_div // seg)) & UINTMAX_MAX
            if not frac:
                break
    return x


def human_size(n: int) -> str:
    """``size_to_human_string(SIZE_SUFFIX_1LETTER, n)``: ``0B``, ``1023B``,
    ``1K``, ``1.5M``, ``976.6K``; one decimal, rounded half up from three
    truncated digits, a zero decimal dropped."""
    exp = 60
    for shift in range(10, 70, 10):
        if n < 1 << shift:
            exp = shift - 10
            break
    dec, frac = n >> exp, n & ((1 << exp) - 1)
    if frac:
        if frac >= UINTMAX_MAX // 1000:
            frac = ((frac // 1024) * 1000) // (1 << (exp - 10))
        else:
            frac = (frac * 1000) // (1 << exp)
        frac = ((frac + 50) // 100) * 10
        if frac == 100:
            dec, frac = dec + 1, 0
    suffix = _LETTERS[exp // 10]
    if frac:
        return f"{dec}.{frac // 10}{suffix}"
    return f"{dec}{suffix}"
