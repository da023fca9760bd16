import os
import sys


def _swap_asked(argv: list[str]) -> bool:
    """``--swap``, or ``swap = true`` in the ``[uzramd]`` table of ``--config``
    (a file that cannot be read here is reported by main())."""
    if "--swap" in argv:
        return True
    path = ""
    for i, arg in enumerate(argv):       # the last one counts, as for argparse
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
    if not path:
        return False
    import tomllib
    try:
        with open(path, "rb") as f:
            raw = f.read((1 << 20) + 1)     # config.MAX_CONFIG_BYTES: main() refuses larger
        if len(raw) > 1 << 20:
            return False
        table = tomllib.loads(raw.decode()).get("uzramd")
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(table, dict) and table.get("swap") is True


if os.environ.get("PYTHONMALLOC") != "malloc" and _swap_asked(sys.argv[1:]):
    # before the heavy imports: under --swap Python allocates through glibc's
    # malloc, whose prefaulted heap is reused (see hardening.cushion);
    # same pid, so systemd's socket activation still holds
    os.execve(sys.executable, [sys.executable, "-m", "uzram.daemon", *sys.argv[1:]],
              {**os.environ, "PYTHONMALLOC": "malloc"})

from .main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
