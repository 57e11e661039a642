"""A strict reading of the report's HTML page, for its tests.

Python's html.parser forgives what a browser would repair; this check does
not: every element that is not void is closed, in the order opened; no end
tag is stray; attribute values are quoted and ids unique; entity references
are known.  Where libxml2's xmllint is installed, its HTML parser reads the
page too and must report nothing but its not knowing HTML5's elements (it
parses HTML 4).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.entities import name2codepoint
from html.parser import HTMLParser
from pathlib import Path

# HTML Living Standard, "void elements": no end tag.
VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
    "source", "track", "wbr",
}  # fmt: skip
# Elements libxml2's HTML 4 parser calls invalid although HTML5 has them.
HTML5_ONLY = {"nav", "main", "section", "header", "footer", "article"}
_ATTRIBUTE = re.compile(r"""\s([a-z-]+)(=("[^"]*"|'[^']*'|[^\s"'>]+))?""")


class _Strict(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.problems: list[str] = []
        self.open: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or ""
        for name, equals, value in _ATTRIBUTE.findall(raw):
            if equals and not value.startswith(('"', "'")):
                self.problems.append(f"unquoted value of {name} in {raw!r}")
        for name, value in attrs:
            if name == "id":
                if value in self.ids:
                    self.problems.append(f"id {value!r} twice")
                self.ids.add(value or "")
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.problems.append(f"end tag of void element {tag}")
        elif not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_entityref(self, name: str) -> None:
        if name not in name2codepoint:
            self.problems.append(f"unknown entity &{name};")


def problems(html: str, tmp_path: Path | None = None) -> list[str]:
    """What is wrong with `html`: [] for a well-formed page."""
    if not html.startswith("<!DOCTYPE html>\n"):
        return ["no <!DOCTYPE html> first"]
    parser = _Strict()
    parser.feed(html)
    parser.close()
    found = parser.problems + [f"<{tag}> never closed" for tag in parser.open]
    if tmp_path is not None and shutil.which("xmllint"):
        page = tmp_path / "report.html"
        page.write_text(html, encoding="utf-8")
        result = subprocess.run(
            ["xmllint", "--html", "--noout", str(page)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found += [
            line
            for line in result.stderr.splitlines()
            if "parser error" in line
            and not any(f"Tag {tag} invalid" in line for tag in HTML5_ONLY)
        ]
        if result.returncode:
            found.append(f"xmllint exited with {result.returncode}")
    return found
