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


def test_a_sealer_that_recorded_no_results() -> None:
    assert arcresults.parse("i=1; lists.example.org") == arcresults.SealerResults(
        1, "lists.example.org", ()
    )


@pytest.mark.parametrize(
    "value",
    [
        "i=1; (sealer) lists.example.org; spf=pass",
        "i=1; lists.example.org(sealer); spf=pass",
        'i=1; "lists.example.org"; spf=pass',
    ],
)
def test_comments_and_quotes_around_the_authserv_id(value: str) -> None:
    read = arcresults.parse(value)
    assert read is not None
    assert read.authserv_id == "lists.example.org"


def test_quoted_values() -> None:
    read = arcresults.parse(
        'i=1; id; dkim=pass header.d="ex\\ample.com" header.b="x\\";y"; spf=pass smtp.mailfrom=""'
    )
    assert read is not None
    dkim, spf = read.results
    # A quoted-pair stands for its character (RFC 5322 section 3.2.4), and a
    # quoted ";" ends nothing.
    assert (dkim.get("header.d"), dkim.get("header.b")) == ("example.com", 'x";y')
    assert spf.get("smtp.mailfrom") == ""


def test_a_backslash_outside_a_quoted_string_quotes_nothing() -> None:
    # RFC 5322 has quoted-pairs only in quoted strings and comments.
    read = arcresults.parse("i=1; lists.example.org\\; spf=pass")
    assert read is not None
    assert [(r.method, r.result) for r in read.results] == [("spf", "pass")]


def test_a_dkim_pass_vouches_by_the_domain_of_its_auid() -> None:
    # RFC 6376 section 3.5 i=: [local-part] "@" domain.
    read = arcresults.parse("i=1; id; dkim=pass header.i=bounce@example.com")
    assert read is not None
    assert arcresults.vouches(read, "example.com", SUFFIXES) == "dkim"


def test_the_domain_of_an_auid_is_after_its_last_at_sign() -> None:
    # A quoted local-part may hold "@" (RFC 5322 section 3.4.1).
    read = arcresults.parse('i=1; id; dkim=pass header.i="\\"a@b\\"@example.com"')
    assert read is not None
    assert read.results[0].get("header.i") == '"a@b"@example.com'
    assert arcresults.vouches(read, "example.com", SUFFIXES) == "dkim"
