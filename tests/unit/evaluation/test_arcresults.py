"""Reading a sealer's ARC-Authentication-Results and what vouches for a domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from spfmilter.config import orgdomain
from spfmilter.evaluation import arcresults

SUFFIXES = orgdomain.load(Path("/usr/share/publicsuffix/public_suffix_list.dat"))


def test_parse() -> None:
    read = arcresults.parse(
        'i=2; lists.example.org (comment; with "quotes") 1; spf=pass (ip (nested)) '
        "smtp.mailfrom=alice@Example.COM; dkim/1 = pass header.d=example.com "
        'header.b="ab;cd"; dmarc=none'
    )
    assert read is not None
    assert (read.instance, read.authserv_id) == (2, "lists.example.org")
    assert [(r.method, r.result) for r in read.results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dmarc", "none"),
    ]
    assert read.results[0].get("smtp.mailfrom") == "alice@Example.COM"
    assert read.results[1].get("header.b") == "ab;cd"


@pytest.mark.parametrize("value", ["", "lists.example.org; spf=pass", "i=x; id; spf=pass", "i=1;"])
def test_unreadable(value: str) -> None:
    assert arcresults.parse(value) is None


@pytest.mark.parametrize(
    ("results", "vouched"),
    [
        ("spf=pass smtp.mailfrom=example.com", "spf"),
        ("spf=pass smtp.mailfrom=bounce@EXAMPLE.com.", "spf"),
        ("spf=pass smtp.mailfrom=sub.example.com", None),
        ("spf=fail smtp.mailfrom=example.com", None),
        ("spf=pass smtp.helo=example.com", None),
        ('spf=pass reason="smtp.mailfrom=example.com" smtp.mailfrom=x.example', None),
        ("spf=pass (smtp.mailfrom=example.com) smtp.mailfrom=x.example", None),
        ("dkim=pass header.d=mail.example.com", "dkim"),
        ("dkim=pass header.i=@news.example.com", "dkim"),
        ("dkim=pass header.d=example.net", None),
        ("dkim=fail header.d=example.com", None),
        ("dkim=pass header.d=evilexample.com", None),
        ("garbage; =pass; spf=", None),
    ],
)
def test_vouches(results: str, vouched: str | None) -> None:
    read = arcresults.parse(f"i=1; lists.example.org; {results}")
    assert read is not None
    assert arcresults.vouches(read, "example.com", SUFFIXES) == vouched
