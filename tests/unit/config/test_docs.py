"""The texts generated from the declarations: the shipped example file, the
reference table in docs/configuration.md, the man page's key list, and the
command that prints them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spfmilter.config import docs as configdoc
from spfmilter.config.loading import load_config, parse_config, render
from spfmilter.config.schema import SECTIONS, Config, keys

REPO = Path(__file__).resolve().parents[3]


def test_shipped_example_is_valid_and_equals_the_defaults() -> None:
    config = load_config(REPO / "spfmilter.cfg")
    assert config.source == str(REPO / "spfmilter.cfg")
    assert config.warnings == ()
    assert render(config).splitlines()[1:] == render(Config()).splitlines()[1:]


def test_shipped_example_is_generated_from_the_declarations() -> None:
    # Regenerate with: python -m spfmilter.config.docs example > spfmilter.cfg
    assert (REPO / "spfmilter.cfg").read_text() == configdoc.example()


def test_reference_table_is_generated_from_the_declarations() -> None:
    readme = (REPO / "docs" / "configuration.md").read_text()
    start = (
        "<!-- generated from spfmilter/config/schema.py: "
        "python -m spfmilter.config.docs table -->\n"
    )
    end = "<!-- end of generated table -->\n"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == configdoc.table()


@pytest.mark.parametrize(
    ("section", "name"),
    [(section, f.name) for section, schema in SECTIONS.items() for f in keys(schema)],
)
def test_every_key_is_declared_whole(section: str, name: str) -> None:
    (declaration,) = [f for f in keys(SECTIONS[section]) if f.name == name]
    for item in ("parse", "render", "summary", "doc"):
        assert declaration.metadata[item], item
    # The default written out reads back as itself.
    default = getattr(SECTIONS[section](), name)
    written = declaration.metadata["render"](default)
    config = parse_config(f"[{section}]\n{name} = {written}\n")
    assert getattr(getattr(config, section), name) == default
    assert f"\n{name} =" in configdoc.example()
    assert f"| `{name}` |" in configdoc.table()
    assert f".BR {name} " in configdoc.man_keys()


def test_man_page_markup_is_escaped() -> None:
    text = configdoc.man_keys()
    assert ".SS [milter]\nWhere the daemon listens and as whom it runs." in text
    assert "\\-" in text  # hyphens are escaped
    requests = {line.split()[0] for line in text.splitlines() if line.startswith(".")}
    assert requests == {".SS", ".TP", ".BR"}


def test_configdoc_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert configdoc.main(["table"]) == 0
    assert capsys.readouterr().out == configdoc.table()
    assert configdoc.main(["nonsense"]) == 2


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["example"], configdoc.example),
        (["table"], configdoc.table),
        (["man"], configdoc.man_keys),
    ],
)
def test_configdoc_command_prints_each_text(
    argv: list[str], text: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert configdoc.main(argv) == 0
    assert capsys.readouterr() == (text(), "")


def test_configdoc_command_reads_its_command_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["docs.py", "man"])
    assert configdoc.main() == 0
    assert capsys.readouterr().out == configdoc.man_keys()


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["man", "table"]])
def test_configdoc_command_says_its_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert configdoc.main(argv) == 2
    assert capsys.readouterr() == (
        "",
        "usage: python -m spfmilter.config.docs example|table|man\n",
    )


def test_man_page_markup_escapes_what_roff_would_read_as_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No declaration holds these today; the page must stay right when one does.
    def declarations() -> Iterator[tuple[str, str | None, str, str, str, str]]:
        yield ("x", ".starts with a dot", "a", 'say "hi"', "", "'starts with a quote")
        yield ("x", None, "b", "C:\\dir", "", "back\\slash; a-b")
        yield ("x", None, "c", "", "", "x.y 'z'")

    monkeypatch.setattr(configdoc, "_defaults", declarations)
    assert configdoc.man_keys() == (
        ".SS [x]\n\\&.starts with a dot\n"
        '.TP\n.BR a " = " "say \\(dqhi\\(dq"\n\\&\'starts with a quote\n'
        '.TP\n.BR b " = " "C:\\edir"\nback\\eslash; a\\-b\n'
        '.TP\n.BR c " = " "(empty)"\nx.y \'z\'\n'
    )
