"""The man pages in man/: generated parts current, options complete, clean markup.

spfmilter.cfg(5)'s KEYS section is spfmilter.config.docs's output, pasted
between two marker comments (regenerate it with the command the first marker
names); spfmilter(8) is written by hand and must name every option the
command line parsers take.  Both pages, the package's version and the newest
debian/changelog entry carry the same version.  groff and mandoc, where
installed, must find nothing to warn about, and the page as rendered shows every
key with its default.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spfmilter import __version__, cli
from spfmilter.config import docs as configdoc

REPO = Path(__file__).resolve().parents[2]
DAEMON_PAGE = REPO / "man" / "spfmilter.8"
CONFIG_PAGE = REPO / "man" / "spfmilter.cfg.5"
PAGES = (DAEMON_PAGE, CONFIG_PAGE)

KEYS_BEGIN = '.\\" BEGIN GENERATED KEYS: python -m spfmilter.config.docs man\n'
KEYS_END = '.\\" END GENERATED KEYS\n'


def plain(page: Path) -> str:
    """The page's source with man(7)'s escaped hyphens as plain ones."""
    return page.read_text().replace("\\-", "-")


# Replaces the lines between the markers with configdoc's output.
REGENERATE = (
    "python -m spfmilter.config.docs man > keys.man && sed -i"
    " -e '/^\\.\\\\\" BEGIN GENERATED KEYS/,/^\\.\\\\\" END GENERATED KEYS/{//!d}'"
    " -e '/^\\.\\\\\" BEGIN GENERATED KEYS/r keys.man' man/spfmilter.cfg.5 && rm keys.man"
)


def test_config_page_keys_are_configdoc_output() -> None:
    text = CONFIG_PAGE.read_text()
    assert text.count(KEYS_BEGIN) == 1 and text.count(KEYS_END) == 1
    generated = text[text.index(KEYS_BEGIN) + len(KEYS_BEGIN) : text.index(KEYS_END)]
    assert generated == configdoc.man_keys(), f"regenerate with: {REGENERATE}"


def example_defaults() -> list[tuple[str, str]]:
    """(key, default as written in the example file) of every key."""
    pairs = []
    for line in configdoc.example().splitlines():
        if line and not line.startswith(("#", "[")):
            name, _, value = line.partition(" =")
            pairs.append((name, value.strip()))
    return pairs


def test_config_page_shows_every_key_with_its_default() -> None:
    # As a reader sees the page: plain text, whitespace as one space.
    result = run_tool(["groff", "-man", "-Tascii", "-P-cbou", str(CONFIG_PAGE)])
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    missing = [
        f"{name} = {default or '(empty)'}"
        for name, default in example_defaults()
        if f" {name} = {default or '(empty)'} " not in shown
    ]
    assert missing == []


def help_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The long options that `spfmilter ARGV --help` lists (the report
    returns its status; argparse exits for the others)."""
    try:
        status: object = cli.main([*argv, "--help"])
    except SystemExit as stop:
        status = stop.code
    assert status == 0
    return set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))


@pytest.mark.parametrize("argv", [[], ["check"], ["report"]], ids=["daemon", "check", "report"])
def test_daemon_page_names_every_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    options = help_options(argv, capsys)
    assert ("--config" in options) == (argv != ["report"])  # the report reads no config
    page = plain(DAEMON_PAGE)
    assert [option for option in sorted(options) if option not in page] == []


def test_pages_and_package_carry_the_version() -> None:
    for page in PAGES:
        (title,) = [line for line in page.read_text().splitlines() if line.startswith(".TH ")]
        assert f'"spfmilter {__version__}"' in title, title
    changelog = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"spfmilter ({__version__}) "), changelog


def test_daemon_page_documents_the_unit_and_its_files() -> None:
    # The unit's Documentation= points here; the pages name what it uses.
    unit = (REPO / "systemd" / "spfmilter.service").read_text()
    assert "Documentation=man:spfmilter(8) man:spfmilter.cfg(5)\n" in unit
    page = plain(DAEMON_PAGE)
    for path in ("/etc/spfmilter/spfmilter.cfg", "/run/spfmilter/spfmilter.sock"):
        assert path in page
    for status in ("0", "1", "2", "78"):
        assert f".B {status}\n" in page
    assert ".SH THE REPORT COMMAND\n" in page


def run_tool(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_groff_finds_nothing_to_warn_about(page: Path) -> None:
    # -ww: every warning category; -z: no output, diagnostics only.
    result = run_tool(["groff", "-ww", "-z", "-man", str(page)])
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_mandoc_lint_finds_nothing_to_warn_about(page: Path) -> None:
    # -W warning: warnings and errors; the STYLE level below it asks for
    # input lines under 80 bytes, which the generated key texts are not.
    result = run_tool(["mandoc", "-T", "lint", "-W", "warning", str(page)])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_man_renders_the_page(page: Path) -> None:
    # As lintian runs it (its groff-message check), then as "man -l" shows
    # it: the whatis line under NAME.
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"}
    lint = run_tool(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)], env)
    assert (lint.returncode, lint.stderr) == (0, "")
    shown = run_tool(["man", "-E", "UTF-8", "-l", "-Tutf8", str(page)], env)
    assert shown.returncode == 0, shown.stderr
    text = re.sub(".\x08", "", shown.stdout)  # overstrikes: bold and underline
    name = page.name.rsplit(".", 1)[0]
    assert re.search(rf"^NAME\n\s+{re.escape(name)} - ", text, re.MULTILINE), text[:400]
