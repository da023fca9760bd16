"""A text histogram of zsmalloc's size classes (``uzramctl --debug histogram``):
one bar per class in use, its length the class's stored objects."""

from __future__ import annotations

from ..zram.sizeclass import PAGE_SIZE


def parse_classes(text: str) -> list[dict[str, int]]:
    """Rows of the ``classes`` debugfs file, by column name."""
    lines = text.strip().splitlines()
    if not lines:
        return []
    header = lines[0].split()
    return [dict(zip(header, (int(x) for x in line.split()))) for line in lines[1:]
            if line.split() and line.split()[0].isdigit()]  # not the Total line


def render(text: str, width: int = 80, bar: str = "#") -> str:
    """Classes that hold objects: size, bar of obj_used, objects, pages, fill."""
    rows = [r for r in parse_classes(text) if r.get("obj_used", 0) > 0]
    if not rows:
        return "no objects stored\n"
    most = max(r["obj_used"] for r in rows)
    room = max(10, width - 44)
    out = [f"{'size':>5}  {'objects':<{room}}  {'used':>8} {'pages':>6} {'fill':>5}"]
    for r in rows:
        n = r["obj_used"]
        length = max(1, round(n * room / most))
        fill = n * r["size"] / max(r["pages_used"] * PAGE_SIZE, 1)
        out.append(f"{r['size']:>5}  {bar * length:<{room}}  {n:>8} {r['pages_used']:>6} {fill:>5.0%}")
    total_objs = sum(r["obj_used"] for r in rows)
    total_pages = sum(r["pages_used"] for r in rows)
    out.append(f"{len(rows)} classes in use, {total_objs} objects in {total_pages} pages")
    return "\n".join(out) + "\n"
