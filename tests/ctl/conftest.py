"""Fixtures for uzramctl: a real uzramd per test and the CLI run in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from uzram.ctl.__main__ import main

from ..daemon import Uzramd
from .harness import running_uzramd


@dataclass
class Result:
    rc: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def daemon(tmp_path) -> Iterator[Uzramd]:
    with running_uzramd(tmp_path / "d") as d:
        yield d


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory) -> Iterator[Uzramd]:
    """One daemon for a module's tests that only read."""
    with running_uzramd(tmp_path_factory.mktemp("shared")) as d:
        yield d


@pytest.fixture
def run_main(capsys) -> Run:
    """``run_main(*argv)``: uzramctl's main() in-process, output captured."""
    def run(*argv: str) -> Result:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return Result(rc, out, err)
    return run


@pytest.fixture
def ctl(daemon, run_main) -> Run:
    """``ctl(*argv)``: uzramctl against the test's daemon."""
    def run(*argv: str) -> Result:
        return run_main("--control", str(daemon.control_sock), *argv)
    return run


@pytest.fixture
def ctl_ro(shared_daemon, run_main) -> Run:
    """``ctl_ro(*argv)``: uzramctl against the shared daemon; must not change it."""
    def run(*argv: str) -> Result:
        return run_main("--control", str(shared_daemon.control_sock), *argv)
    return run
