"""zsmalloc's size-class table, computed the way mm/zsmalloc.c computes it."""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SIZE = 4096
PAGE_SHIFT = 12
ZS_HANDLE_SIZE = 8
ZS_MIN_ALLOC_SIZE = 32
ZS_MAX_ALLOC_SIZE = PAGE_SIZE
ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> 8
ZS_SIZE_CLASSES = -(-(ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA) + 1
CHAIN_SIZE_MIN = 4
CHAIN_SIZE_MAX = 16
CHAIN_SIZE_DEFAULT = 8


@dataclass(frozen=True)
class ClassSpec:
    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int

    @property
    def huge(self) -> bool:
        """One object filling one page: stored without the inline header."""
        return self.pages_per_zspage == 1 and self.objs_per_zspage == 1


def zspage_chain_size(class_size: int, chain_size: int) -> int:
    """``calculate_zspage_chain_size``: pages per zspage with the least tail waste."""
    if class_size & (class_size - 1) == 0:
        return 1
    best, min_waste = 1, None
    for i in range(1, chain_size + 1):
        waste = (i * PAGE_SIZE) % class_size
        if min_waste is None or waste < min_waste:
            best, min_waste = i, waste
    return best


def class_index(size: int) -> int:
    """``get_size_class_index`` for a request already grown by the handle size."""
    if size <= ZS_MIN_ALLOC_SIZE:
        return 0
    return min(ZS_SIZE_CLASSES - 1, -(-(size - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA))


@dataclass(frozen=True)
class ClassTable:
    chain_size: int
    specs: tuple[ClassSpec, ...]      # the distinct (non-merged) classes, ascending
    index_map: tuple[int, ...]        # every class index -> the index of the class serving it
    huge_class_size: int              # zram stores compressed lengths >= this raw

    def for_request(self, size: int) -> int:
        """The distinct class index serving a ``zs_malloc(size)``."""
        return self.index_map[class_index(size + ZS_HANDLE_SIZE)]


def build_class_table(chain_size: int = CHAIN_SIZE_DEFAULT) -> ClassTable:
    """Build classes from the largest down, merging a class into the next larger
    one when both have the same pages and objects per zspage."""
    if not CHAIN_SIZE_MIN <= chain_size <= CHAIN_SIZE_MAX:
        raise ValueError(f"chain size must be {CHAIN_SIZE_MIN}..{CHAIN_SIZE_MAX}")
    index_map = [0] * ZS_SIZE_CLASSES
    specs: list[ClassSpec] = []
    prev: ClassSpec | None = None
    huge_class_size = 0
    for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
        size = min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, ZS_MAX_ALLOC_SIZE)
        ppz = zspage_chain_size(size, chain_size)
        opz = ppz * PAGE_SIZE // size
        if ppz != 1 and opz != 1 and not huge_class_size:
            huge_class_size = size - (ZS_HANDLE_SIZE - 1)
        if prev is not None and prev.pages_per_zspage == ppz and prev.objs_per_zspage == opz:
            index_map[i] = prev.index
            continue
        prev = ClassSpec(i, size, ppz, opz)
        specs.append(prev)
        index_map[i] = i
    specs.reverse()
    return ClassTable(chain_size, tuple(specs), tuple(index_map), huge_class_size)
