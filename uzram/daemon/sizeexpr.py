"""zram-generator's size expressions (``zram-size``, ``zram-resident-limit``),
evaluated in double precision the way the ``fasteval`` crate does: its
operator passes (``^`` right to left, then ``%``, ``/``, ``*`` (right to
left), ``-``, ``+`` (right to left), comparisons, ``&&``, ``||``), SI
suffixes on numbers, and ``min``, ``max``, ``int``, ``ceil``, ``floor``,
``round``, ``abs``, ``sign``, ``log``, ``e()``, ``pi()`` and the
trigonometric functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any


class ZramGenError(ValueError):
    """A configuration zram-generator itself would refuse, or one uzram cannot apply."""


# -- expressions ----------------------------------------------------------------------

_SUFFIX = {"k": 3, "K": 3, "M": 6, "G": 9, "T": 12, "m": -3, "u": -6, "µ": -6, "n": -9, "p": -12}
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<suffix>[kKMGTmuµnp](?![A-Za-z_0-9]))? |
    (?P<name>[A-Za-z_][A-Za-z_0-9]*) |
    (?P<op><=|>=|==|!=|&&|\|\||[-+*/%^<>()\[\],!]))""", re.VERBOSE)
_BINARY = ("^", "%", "/", "*", "-", "+", "<", "<=", "==", "!=", ">=", ">", "&&", "||")
# fasteval's passes over a flat operand/operator list: (operators, right-to-left?)
_PASSES = ((("^",), True), (("%",), False), (("/",), False), (("*",), True), (("-",), False),
           (("+",), True), (("<", "<=", "==", "!=", ">=", ">"), False), (("&&",), False),
           (("||",), False))
_EPS = 8.0 * 2.220446049250313e-16


def _feq(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= _EPS


def _div(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _mod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:
        return math.nan


def _pow(a: float, b: float) -> float:
    try:
        r = a ** b
    except OverflowError:
        return math.inf
    except ZeroDivisionError:
        return math.inf
    return math.nan if isinstance(r, complex) else float(r)


def _log(base: float, x: float) -> float:
    def ln(v: float) -> float:
        if v > 0:
            return math.log(v)
        return -math.inf if v == 0 else math.nan
    return _div(ln(x), ln(base)) if base != 10.0 else (math.log10(x) if x > 0 else ln(x))


_OPS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": _div, "%": _mod, "^": _pow,
    "<": lambda a, b: float(a < b), "<=": lambda a, b: float(a <= b),
    "==": lambda a, b: float(_feq(a, b)), "!=": lambda a, b: float(not _feq(a, b)),
    ">=": lambda a, b: float(a >= b), ">": lambda a, b: float(a > b),
    "&&": lambda a, b: a if _feq(a, 0.0) else b, "||": lambda a, b: b if _feq(a, 0.0) else a,
}


def _minmax(pick: Callable[[float, float], float]) -> Callable[..., float]:
    def f(*args: float) -> float:
        if not args:
            raise ZramGenError("min/max need at least one argument")
        if any(math.isnan(a) for a in args):
            return math.nan
        r = args[0]
        for a in args[1:]:
            r = pick(r, a)
        return r
    return f


def _one(fn: Callable[[float], float]) -> Callable[..., float]:
    def f(*args: float) -> float:
        if len(args) != 1:
            raise ZramGenError("function takes exactly one argument")
        try:
            return float(fn(args[0]))
        except (ValueError, OverflowError):
            return math.nan
    return f


def _round(*args: float) -> float:
    modulus, x = (1.0, args[0]) if len(args) == 1 else args
    q = _div(x, modulus)
    if math.isinf(q) or math.isnan(q):
        return q
    r = math.floor(abs(q) + 0.5) * math.copysign(1.0, q)  # half away from zero, as Rust's round
    return r * modulus


_FUNCS: dict[str, Callable[..., float]] = {
    "min": _minmax(min), "max": _minmax(max),
    "int": _one(math.trunc), "ceil": _one(math.ceil), "floor": _one(math.floor),
    "abs": _one(abs), "sign": _one(lambda v: math.copysign(1.0, v) if not math.isnan(v) else v),
    "log": lambda *a: _log(10.0, a[0]) if len(a) == 1 else _log(a[0], a[1]),
    "round": _round,
    "e": lambda: math.e, "pi": lambda: math.pi,
    "sin": _one(math.sin), "cos": _one(math.cos), "tan": _one(math.tan),
    "asin": _one(math.asin), "acos": _one(math.acos), "atan": _one(math.atan),
    "sinh": _one(math.sinh), "cosh": _one(math.cosh), "tanh": _one(math.tanh),
    "asinh": _one(math.asinh), "acosh": _one(math.acosh), "atanh": _one(math.atanh),
}


Node = tuple[Any, ...]
"""A parsed expression: ("const", x), ("var", name), ("unary", op, node),
("call", name, [node...]) or ("expr", [node...], [op...])."""


class Expression:
    """A parsed ``zram-size``-style expression; ``evaluate(vars)`` gives MiB as a float."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens = self._lex(text)
        self._pos = 0
        self._tree = self._expr()
        if self._pos != len(self._tokens):
            raise ZramGenError(f"cannot parse {text!r}: unexpected {self._tokens[self._pos][1]!r}")

    @staticmethod
    def _lex(text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ZramGenError(f"cannot parse {text!r} at {text[pos:]!r}")
            pos = m.end()
            if m.group("num") is not None:
                value = m.group("num")
                if m.group("suffix"):
                    value += f"e{_SUFFIX[m.group('suffix')]}"
                out.append(("num", value))
            elif m.group("name") is not None:
                out.append(("name", m.group("name")))
            else:
                out.append(("op", m.group("op")))
        return out

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise ZramGenError(f"cannot parse {self.text!r}: unexpected end")
        self._pos += 1
        return tok

    # An expression is a flat list: value (op value)*, as fasteval keeps it.
    def _expr(self) -> Node:
        values = [self._value()]
        ops: list[str] = []
        while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] in _BINARY:
            self._pos += 1
            ops.append(tok[1])
            values.append(self._value())
        return ("expr", values, ops)

    def _value(self) -> Node:
        kind, text = self._take()
        if kind == "num":
            return ("const", float(text))
        if kind == "op" and text in ("-", "+", "!"):
            return ("unary", text, self._value())
        if kind == "op" and text in ("(", "["):
            inner = self._expr()
            self._expect(")" if text == "(" else "]")
            return inner
        if kind == "name":
            tok = self._peek()
            if tok is not None and tok[1] in ("(", "["):
                close = ")" if tok[1] == "(" else "]"
                self._pos += 1
                args = []
                if (t := self._peek()) is not None and t[1] == close:
                    self._pos += 1
                else:
                    args.append(self._expr())
                    while (sep := self._take())[1] == ",":
                        args.append(self._expr())
                    if sep[1] != close:
                        raise ZramGenError(f"cannot parse {self.text!r}: expected {close!r}")
                return ("call", text, args)
            return ("var", text)
        raise ZramGenError(f"cannot parse {self.text!r}: unexpected {text!r}")

    def _expect(self, what: str) -> None:
        if self._take()[1] != what:
            raise ZramGenError(f"cannot parse {self.text!r}: expected {what!r}")

    def evaluate(self, variables: dict[str, float]) -> float:
        return self._eval(self._tree, variables)

    def _eval(self, node: Node, env: dict[str, float]) -> float:
        kind = node[0]
        if kind == "const":
            const: float = node[1]
            return const
        if kind == "var":
            if node[1] not in env:
                raise ZramGenError(f"{self.text!r}: undefined variable {node[1]!r}")
            return env[node[1]]
        if kind == "unary":
            v = self._eval(node[2], env)
            return -v if node[1] == "-" else (float(_feq(v, 0.0)) if node[1] == "!" else v)
        if kind == "call":
            fn = _FUNCS.get(node[1])
            if fn is None:
                raise ZramGenError(f"{self.text!r}: undefined function {node[1]!r}")
            return fn(*(self._eval(a, env) for a in node[2]))
        values = [self._eval(v, env) for v in node[1]]
        ops = list(node[2])
        for names, rtol in _PASSES:
            if rtol:
                for i in range(len(ops) - 1, -1, -1):
                    if i < len(ops) and ops[i] in names:
                        values[i:i + 2] = [_OPS[ops[i]](values[i], values[i + 1])]
                        del ops[i]
            else:
                i = 0
                while i < len(ops):
                    if ops[i] in names:
                        values[i:i + 2] = [_OPS[ops[i]](values[i], values[i + 1])]
                        del ops[i]
                    else:
                        i += 1
        return values[0]
