import os
import sys

if "--swap" in sys.argv[1:] and os.environ.get("PYTHONMALLOC") != "malloc":
    # before the heavy imports: under --swap Python allocates through glibc's
    # malloc, whose prefaulted heap is reused (see hardening.cushion);
    # same pid, so systemd's socket activation still holds
    os.execve(sys.executable, [sys.executable, "-m", "uzram.daemon", *sys.argv[1:]],
              {**os.environ, "PYTHONMALLOC": "malloc"})

from .main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
