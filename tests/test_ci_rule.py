"""The suite's CI rule (tests/conftest.py), checked on a small inner suite."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import pytest

@pytest.fixture
def tool():
    pytest.skip("frobnicate is not installed")

def test_uses_tool(tool):
    pass

def test_passes():
    pass
'''


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_subprocess("-ra", "-p", "no:cacheprovider", "-p", "no:trio")


def test_a_missing_tool_fails_in_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_uses_tool: skipped in CI*frobnicate is not installed*"])


def test_a_missing_tool_skips_with_its_reason_elsewhere(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*test_inner.py::test_uses_tool: frobnicate is not installed"])
