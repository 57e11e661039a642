"""The HTML page: self-contained, no script, nothing from outside, every
value escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from spfmilter.report import page
from spfmilter.report.tally import Tally
from tests.support import htmlcheck
from tests.support.verdictlines import skip, verdict

HOSTILE_SENDER = "<script>alert(1)</script>@x"
HOSTILE_DOMAIN = "a@<img src=//evil.example/x onerror=alert(2)>"
HOSTILE_NAME = '"><a href="https://evil.example/">x</a>'
UNRELATED = ["a.example", "b.example.org", "c.co.uk", "d.example.net", "e.example.com"]
# Attributes through which a page can fetch or lead anywhere.
URL_ATTRIBUTES = {
    "src", "href", "action", "formaction", "srcset", "poster", "data", "background",
    "cite", "longdesc", "manifest", "ping", "xlink:href", "codebase", "archive", "lowsrc",
}  # fmt: skip


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
        self.text.append(data)


def render(lines: list[str]) -> str:
    tally = Tally({"fail"})
    tally.feed(lines)
    return page.render(tally.summary(["mail.log<b>"]))


def parsed(html: str) -> Page:
    result = Page()
    result.feed(html)
    result.close()
    return result


LINES = [
    verdict(HOSTILE_SENDER, "fail", "reject"),
    verdict(HOSTILE_DOMAIN, "fail", "reject", rescue="dkim", rescue_domain="<i>d</i>"),
    verdict("a@x.example", "softfail"),
    verdict("h@y.example", "fail", "reject", identity="helo"),
    verdict("t@y.example", "fail", "defer", rescue="temporary", rescue_reason="<dns>"),
    verdict("n@y.example", "fail", "reject", rescue="none", rescue_reason="no_signature"),
    skip("SASL authenticated as <u>"),
    *(
        verdict(f"u@{d}", "fail", client_ip="203.0.113.7", client_name=HOSTILE_NAME)
        for d in UNRELATED
    ),
]


def test_self_contained_and_script_free() -> None:
    html = render(LINES)
    doc = parsed(html)
    assert html.startswith("<!DOCTYPE html>")
    assert "script" not in doc.tags
    for name, value in doc.attributes:
        assert not name.startswith("on"), name
        if name in URL_ATTRIBUTES:
            assert name == "href" and value is not None and value.startswith("#"), (name, value)
    assert "url(" not in html and "@import" not in html and "//" not in doc.style
    policy = [v for n, v in doc.attributes if n == "content" and v and "default-src" in v]
    assert policy == ["default-src 'none'; style-src 'unsafe-inline'"]
    # Every in-page link leads to a section of the page.
    ids = {value for name, value in doc.attributes if name == "id"}
    links = {value[1:] for name, value in doc.attributes if name == "href" and value}
    assert links <= ids


def test_values_are_text_not_markup() -> None:
    doc = parsed(render(LINES))
    assert doc.tags.count("img") == doc.tags.count("i") == doc.tags.count("u") == 0
    assert [t for t in doc.tags if t == "a"] == ["a"] * 5  # the page's own navigation
    text = "".join(doc.text)
    assert "<img src=//evil.example/x onerror=alert(2)>" in text
    assert HOSTILE_NAME in text
    assert "<i>d</i>" in text and "mail.log<b>" in text
    # The config line keeps the address: the name is no host name.
    assert "trusted_relays = 203.0.113.7/32" in text


def test_the_brief_s_sender_is_only_its_domain() -> None:
    doc = parsed(render([verdict("<script>alert(1)</script>@<script>x", "fail")]))
    assert "script" not in doc.tags
    assert "<script>x" in "".join(doc.text)


def test_bars_scale_to_the_largest() -> None:
    html = render([verdict("a@x.example", "fail")] * 3 + [verdict("b@y.example", "fail")])
    assert 'style="width:100.00%"' in html and 'style="width:33.33%"' in html
    empty = parsed(render([]))
    assert "script" not in empty.tags and "None." in "".join(empty.text)


def test_a_strict_parser_finds_nothing_wrong(tmp_path: Path) -> None:
    for lines in (LINES, []):
        assert htmlcheck.problems(render(lines), tmp_path) == []


def test_the_strict_check_sees_what_html_parser_forgives() -> None:
    good = render(LINES)
    assert htmlcheck.problems(good.replace("</table>", "", 1)) != []
    assert htmlcheck.problems(good.replace('class="n"', "class=n", 1)) != []
    assert htmlcheck.problems(good.replace("</h2>", "</h3>", 1)) != []


def test_rescue_deferrals_and_reasons_are_shown() -> None:
    text = "".join(parsed(render(LINES)).text)
    assert "deferred: temporary error in rescue" in text
    assert "Not rescued, by outcome and reason" in text and "<dns>" in text
