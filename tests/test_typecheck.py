"""The type hints are checked, not decoration: ``mypy --strict`` (configured
in pyproject.toml) must be clean on the package and the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def test_mypy_strict_is_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "uzram", "bench"],
                       cwd=TOP, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout
