"""The text report: its sections, marks and shortened names."""

from __future__ import annotations

import pytest

from spfmilter.report import table
from spfmilter.report.tally import Tally
from tests.support.verdictlines import skip, verdict

UNRELATED = ["a.example", "b.example.org", "c.co.uk", "d.example.net", "e.example.com"]


def render(lines: list[str], capacity: int = 100) -> str:
    tally = Tally({"fail", "softfail"}, capacity)
    tally.feed(lines)
    return table.render(tally.summary(["mail.log", "mail.log.1.gz"]))


def test_sections() -> None:
    text = render(
        [
            verdict("a@x.example", "fail", "reject", dry_run="yes"),
            verdict("a@x.example", "fail", rescue="dkim", rescue_domain="x.example"),
            verdict("b@y.example", "softfail"),
            verdict("h@y.example", "fail", "reject", identity="helo"),
            skip("SASL authenticated as bob"),
            "postfix line",
            *(
                verdict(
                    f"u@{d}", "fail", "reject", client_ip="203.0.113.7", client_name="mx.f.example"
                )
                for d in UNRELATED
            ),
        ]
    )
    assert text.startswith("spfmilter report: 11 lines read from mail.log, mail.log.1.gz\n")
    assert "  verdicts     9  1 in dry run, counted as what would have been done\n" in text
    assert "Refusals with [policy] mailfrom_reject = fail, softfail\n" in text
    assert "  would refuse (MAIL FROM)                         8\n" in text
    assert "    rescued by DKIM                                1\n" in text
    assert "  would still refuse                               7\n" in text
    assert "  refused at HELO (whatever mailfrom_reject says)  1\n" in text
    assert "  SASL authenticated as ...  1\n" in text
    assert "  x.example            2        1\n" in text
    assert "  dkim    x.example        1\n" in text
    assert (
        "  203.0.113.7   mx.f.example        5        0          5        5             0\n" in text
    )
    assert "    [skip]\n    ptr_domains = mx.f.example\n" in text
    assert text.endswith("All counts are exact.\n")
    assert "unreadable" not in text


def test_no_forwarders_and_no_refusals() -> None:
    text = render([verdict()])
    assert "Likely forwarders\n  Clients refused for at least 5 unrelated sender domains" in text
    assert text.count("  none\n") == 1
    assert "by sender domain" not in text


def test_approximate_counts_are_marked() -> None:
    lines = [verdict(f"u@d{n}.example", "fail", client_ip=f"203.0.113.{n}") for n in range(30)]
    lines += [verdict("u@heavy.example", "fail")] * 10
    text = render(lines, capacity=4)
    assert "~" in text
    assert "Counts marked ~ are approximate: more than 8 sender domains" in text
    assert "  heavy.example      ~13        0\n" in text
    assert "Would refuse, by sender domain (7 most frequent)\n" in text
    assert max(len(line) for line in text.splitlines()) < 100


def test_long_and_hostile_names() -> None:
    long_domain = "x" * 60 + ".example"
    text = render(
        [
            verdict(f"a@{long_domain}", "fail"),
            verdict("a@\x1b]0;owned\x07.example", "fail"),
            "Dec  2 10:15:01 mx spfmilter[1]: 4X: verdict client_ip=1.2.3.4\x1b[2J "
            "sender=c@d.example identity=mailfrom result=fail action=reject",
        ]
    )
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;owned\\x07.example" in text
    assert "1.2.3.4\\x1b[2J" in text
    assert long_domain not in text and "x" * 37 + "..." in text
    assert "  unreadable" not in text


def test_rescue_deferrals_and_reasons() -> None:
    text = render(
        [
            verdict("a@x.example", "fail", "defer", rescue="temporary", rescue_reason="dns"),
            verdict("b@x.example", "fail", "reject", rescue="none", rescue_reason="no_signature"),
        ]
    )
    assert "    deferred: temporary error in rescue            1\n" in text
    assert "  would still refuse                               1\n" in text
    assert "Not rescued, by outcome and reason\n" in text
    assert "  temporary  dns               1\n" in text
    assert "  none       no_signature      1\n" in text


def test_the_section_to_paste_holds_only_the_forwarders_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table, "ROWS", 2)
    lines = [
        verdict(f"u@{d}", "fail", "reject", client_ip=f"203.0.113.{n}")
        for n in range(1, 5)
        for d in UNRELATED
    ]
    text = render(lines)
    shown = text[text.index("Likely forwarders") :]
    assert shown.count("trusted_relays = 203.0.113.") == 3  # two rows, one section line
    assert "    trusted_relays = 203.0.113.1/32, 203.0.113.2/32\n" in text
    assert "203.0.113.3/32" not in text


def test_a_long_forwarder_name_is_shortened_in_its_row_and_whole_in_the_section() -> None:
    name = "relay-" + "x" * 50 + ".example"
    text = render(
        [verdict(f"u@{d}", "fail", client_ip="203.0.113.9", client_name=name) for d in UNRELATED]
    )
    assert text.count(name) == 1
    assert f"    ptr_domains = {name}\n" in text
    assert f"  ptr_domains = relay-{'x' * 17}...\n" in text
