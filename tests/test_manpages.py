"""The man pages render with man(1), without warnings, and say what --help says."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from uzram import manpages
from uzram.ctl.__main__ import build_parser
from uzram.daemon import config
from uzram.daemon.main import parser as uzramd_parser


def render(path) -> str:
    r = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True,
                       env={**os.environ, "LC_ALL": "C", "MANWIDTH": "2000", "MANPAGER": "cat", "PAGER": "cat"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    return r.stdout


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    d = tmp_path_factory.mktemp("man")
    r = subprocess.run([sys.executable, "-m", "uzram.manpages", str(d)], capture_output=True, text=True, check=True)
    assert len(r.stdout.split()) == 3
    return {p.name: render(p) for p in (d / "man8/uzramd.8", d / "man8/uzramctl.8", d / "man5/uzramd.toml.5")}


@pytest.mark.parametrize("page,make_parser", [("uzramd.8", uzramd_parser), ("uzramctl.8", build_parser)])
def test_every_option_and_its_help(pages, page, make_parser):
    text = words(pages[page])
    p: argparse.ArgumentParser = make_parser()
    assert text.startswith(page.split(".")[0].upper())
    for action in p._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        for opt in action.option_strings:
            assert re.search(rf"(^|[\s,]){re.escape(opt)}([\s,]|$)", text), opt
        assert words(p._get_formatter()._expand_help(action)) in text, action.dest
    for line in p.format_usage().removeprefix("usage: ").splitlines():
        assert words(line) in text


def test_config_page_keys_are_the_configs(pages, tmp_path):
    text = pages["uzramd.toml.5"]
    section = text[text.index("\n[uzramd]\n"):text.index("\n[zramN]\n")]
    keys = re.findall(r"^ {7}(\w+)", section, re.M)
    assert set(keys) == set(config.DAEMON_KEYS)
    values = {"listen": '"unix:/l"', "control": '"/c"', "fuse": '"/f"', "metrics": '"tcp:2"', "log_level": '"info"',
              "tls": '"off"', "tls_certificates": '"/t"', "tls_verify_peer": "false", "max_buffer_memory": '"64M"',
              "max_connections": "8", "idle_timeout": "30", "shutdown_timeout": "5", "busy_poll": "50", "swap": "false",
              "reserve": '"0"', "process_per_device": "false", "dedup": "true"}
    # every key the file accepts is documented (dashed spellings are aliases)
    accepted = {k for k in [*config._TLS_KEYS, *config.LIMIT_KEYS] if "-" not in k}
    assert accepted <= set(keys)
    for key in keys:   # each key documented is one the file accepts
        f = tmp_path / "u.toml"
        f.write_text(f"[uzramd]\n{key} = {values[key]}\n")
        config.build(str(f), [], None, [])
    f.write_text("[uzramd]\nnot_documented = 1\n")
    with pytest.raises(config.ConfigError):
        config.build(str(f), [], None, [])
    assert "comp_algorithm" in text and "disksize" in text and "mm_stat" not in text


def test_pages_are_generated_not_stored():
    assert set(manpages.PAGES) == {"man8/uzramd.8", "man8/uzramctl.8", "man5/uzramd.toml.5"}
