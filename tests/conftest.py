"""Suite-wide rules.

In CI (``CI=true``) a green run must mean that the real NBD clients, FUSE,
loop devices, the host's zram and QEMU really ran: every test skipped at run
time because a tool, package or privilege is missing is turned into a
failure that names what was missing.  Elsewhere such tests skip, and the
summary (``-ra``) prints each reason with the test's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report.longrepr)
    if IN_CI:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: skipped in CI, where every prerequisite must be "
                           f"present: {reason}")
    elif isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, line, _ = report.longrepr
        report.longrepr = (path, line, f"{item.nodeid}: {reason}")


def _reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
        return text.removeprefix("Skipped: ")
    return str(longrepr)
