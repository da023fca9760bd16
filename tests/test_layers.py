"""The package's layers, checked from the source: which package may import
which (``docs/design.md``'s map), and no import cycle between modules,
``TYPE_CHECKING`` imports and imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
PKG = TOP / "uzram"

# package -> project packages it may import (besides itself)
ALLOWED = {
    "uzram.zram": set(),
    "uzram.nbd": set(),
    "uzram.control": set(),
    # the histogram draws zsmalloc's size classes: a pure table, no device
    "uzram.ctl": {"uzram.control", "uzram.zram.sizeclass"},
    "uzram.daemon": {"uzram.zram", "uzram.nbd", "uzram.control"},
    # documents every option and attribute, so it reads them all
    "uzram.manpages": {"uzram.ctl", "uzram.daemon", "uzram.control", "uzram.zram"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(TOP).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
_KNOWN = set(MODULES)


def _imports(path: Path) -> set[str]:
    """Every uzram module ``path`` imports, wherever the import stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            found.update(subs)
            if not subs & _KNOWN:
                found.add(base)  # names taken from a module, not submodules
    return {m for m in found if m.startswith("uzram.") and not name.startswith(m + ".")}


GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _layer(module: str) -> str:
    return next((k for k in ALLOWED if module == k or module.startswith(k + ".")), module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers(module: str) -> None:
    own = _layer(module)
    if own not in ALLOWED:
        return  # the top-level package itself
    ok = ALLOWED[own] | {own}
    bad = {i for i in GRAPH[module] if _layer(i) not in ok and i not in ok}
    assert not bad, f"{module} ({own}) may not import {sorted(bad)}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
