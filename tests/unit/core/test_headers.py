"""Header and reply text, compared as exact strings."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from spfmilter.core.headers import (
    Lexeme,
    authentication_results,
    authserv_id_key,
    claimed_authserv_ids,
    clean,
    lexemes,
    quote_value,
    received_spf,
    reply_text,
)
from spfmilter.core.model import Identity, Skip, SkipReason, SpfOutcome, SpfResult

IP = ipaddress.ip_address("192.0.2.10")


def unfold(value: str) -> str:
    return value.replace("\n\t", " ")


def mailfrom(
    result: SpfResult, mechanism: str | None = None, problem: str | None = None
) -> SpfOutcome:
    return SpfOutcome(
        Identity.MAIL_FROM, result, "example.com", "a@example.com", mechanism, None, problem
    )


def test_received_spf_pass_matches_the_classic_layout() -> None:
    value = received_spf(
        mailfrom(SpfResult.PASS, "ip4:192.0.2.0/24"),
        client_ip=IP,
        helo="mail.example.com",
        receiver="mx.example.net",
    )
    assert unfold(value) == (
        "pass (example.com: 192.0.2.10 is authorized to use 'a@example.com' in 'mfrom' "
        "identity (mechanism 'ip4:192.0.2.0/24' matched)) receiver=mx.example.net; "
        'identity=mailfrom; envelope-from="a@example.com"; helo=mail.example.com; '
        "client-ip=192.0.2.10"
    )
    assert all(len(line) <= 78 for line in ("Received-SPF: " + value).split("\n"))


@pytest.mark.parametrize(
    ("result", "mechanism", "problem", "comment"),
    [
        (
            SpfResult.FAIL,
            "-all",
            None,
            "example.com: 192.0.2.10 is not authorized to use 'a@example.com' in 'mfrom' "
            "identity (mechanism '-all' matched)",
        ),
        (
            SpfResult.SOFTFAIL,
            "~all",
            None,
            "example.com: Sender is not authorized by default to use 'a@example.com' in 'mfrom' "
            "identity, however domain is not currently prepared for false failures "
            "(mechanism '~all' matched)",
        ),
        (
            SpfResult.NEUTRAL,
            "?all",
            None,
            "example.com: Domain does not state whether sender is authorized to use "
            "'a@example.com' in 'mfrom' identity (mechanism '?all' matched)",
        ),
        (SpfResult.NONE, None, None, "example.com: No applicable sender policy available"),
        (
            SpfResult.PERMERROR,
            None,
            "SPF Permanent Error: Unknown mechanism found: moo",
            "example.com: SPF Permanent Error: Unknown mechanism found: moo",
        ),
        (
            SpfResult.TEMPERROR,
            None,
            "SPF Temporary Error: DNS timeout",
            "example.com: SPF Temporary Error: DNS timeout",
        ),
    ],
)
def test_comment_per_result(
    result: SpfResult, mechanism: str | None, problem: str | None, comment: str
) -> None:
    value = unfold(
        received_spf(
            mailfrom(result, mechanism, problem), client_ip=IP, helo="h.example", receiver=None
        )
    )
    assert value == (
        f"{result.value} ({comment}) identity=mailfrom; "
        'envelope-from="a@example.com"; helo=h.example; client-ip=192.0.2.10'
    )


def test_helo_identity_omits_envelope_from_and_quotes_ipv6() -> None:
    helo = SpfOutcome(
        Identity.HELO, SpfResult.PASS, "mail.example.com", "postmaster@mail.example.com", "a"
    )
    value = unfold(
        received_spf(
            helo,
            client_ip=ipaddress.ip_address("2001:db8::1"),
            helo="mail.example.com",
            receiver="mx.example.net",
        )
    )
    assert value == (
        "pass (mail.example.com: 2001:db8::1 is authorized to use "
        "'postmaster@mail.example.com' in 'helo' identity (mechanism 'a' matched)) "
        'receiver=mx.example.net; identity=helo; helo=mail.example.com; client-ip="2001:db8::1"'
    )


def test_hostile_text_cannot_break_the_header() -> None:
    evil = SpfOutcome(
        Identity.MAIL_FROM,
        SpfResult.PERMERROR,
        "x.example",
        'a"b\\c@x.example',
        None,
        None,
        "bad\r\nX-Injected: 1 (paren)",
    )
    value = received_spf(evil, client_ip=IP, helo="evil\r\nX-Bad: 1", receiver="mx")
    assert "\r" not in value
    assert all(not line or line[0] == "\t" for line in value.split("\n")[1:])
    assert 'envelope-from="a\\"b\\\\c@x.example"' in unfold(value)
    assert "\\(paren\\)" in value


def test_authentication_results_reports_mail_from_alone() -> None:
    # The CVE-2019-20790 shape: the HELO passes, the sender's domain has no
    # policy.  The header must carry the MAIL FROM result and nothing else.
    mf = mailfrom(SpfResult.NONE)
    value = unfold(authentication_results("mx.example.net", mf, client_ip=IP))
    assert value == (
        "mx.example.net; spf=none (example.com: No applicable sender policy available) "
        "smtp.mailfrom=example.com"
    )


def test_authentication_results_names_a_u_label_domain_by_its_a_labels() -> None:
    # What a DMARC verifier compares with the From domain: the escaped
    # U-label would match nothing.  Received-SPF keeps the sender as given.
    mf = SpfOutcome(Identity.MAIL_FROM, SpfResult.PASS, "bücher.example", "a@bücher.example")
    value = unfold(authentication_results("mx.example.net", mf, client_ip=IP))
    assert value.endswith(" smtp.mailfrom=xn--bcher-kva.example"), value
    assert 'envelope-from="a@b\\\\xfccher.example"' in unfold(
        received_spf(mf, client_ip=IP, helo="h.example", receiver="mx")
    )
    # A name IDNA cannot encode (an empty label) stays escaped.
    odd = dataclasses.replace(mf, domain="bücher..example")
    value = unfold(authentication_results("mx.example.net", odd, client_ip=IP))
    assert value.endswith(' smtp.mailfrom="b\\\\xfccher..example"'), value


def test_authentication_results_for_the_null_sender_reports_helo() -> None:
    helo = SpfOutcome(
        Identity.HELO, SpfResult.PASS, "mail.example.com", "postmaster@mail.example.com"
    )
    value = unfold(authentication_results("mx.example.net", helo, client_ip=IP))
    assert value == (
        "mx.example.net; spf=pass (mail.example.com: 192.0.2.10 is authorized to "
        "use 'postmaster@mail.example.com' in 'helo' identity) smtp.helo=mail.example.com"
    )


def test_authentication_results_for_a_skip() -> None:
    value = unfold(
        authentication_results(
            "mx.example.net",
            None,
            client_ip=IP,
            skip=Skip(SkipReason.AUTHENTICATED, "b(o)b"),
        )
    )
    assert value == "mx.example.net; none (SPF not checked: SASL authenticated as b\\(o\\)b)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mail.example.com", "mail.example.com"),
        ("a@b.example", '"a@b.example"'),
        ("", '""'),
        ("abc..def", '"abc..def"'),
        ('x"y', '"x\\"y"'),
    ],
)
def test_quote_value(value: str, expected: str) -> None:
    assert quote_value(value) == expected


def test_clean_and_reply_text() -> None:
    assert clean("a\r\nb\x00c\x7f") == "a b c"
    assert clean("é") == "\\xe9"
    assert len(clean("x" * 1000)) == 255
    assert reply_text("100% sure, l=~jack%26jill") == "100%% sure, l=~jack%%26jill"


@pytest.mark.parametrize(
    "value",
    [
        "mx.example.net; spf=pass smtp.mailfrom=x",
        "MX.Example.NET; spf=pass",
        "mx.example.net 1; none",
        "(fw) mx.example.net; spf=pass",
        "mx.example.net(fw); spf=pass",
        "mx.example.net (a (nested) comment) 1 ; spf=pass",
        '"mx.example.net"; spf=pass',
        '"mx.example.net" 1; spf=pass',
        "mx.example.net.; spf=pass",
        "mx . example . net ; spf=pass",
        "\r\n\tmx.example.net\r\n\t; spf=pass",
        "mx.exa\\mple.net; spf=pass",
        "(;) mx.example.net; spf=pass",
        'mx."example".net; spf=pass',
    ],
)
def test_every_spelling_of_an_authserv_id_is_recognised(value: str) -> None:
    assert "mx.example.net" in claimed_authserv_ids(value)


# OpenDMARC 1.4 trusts each of these as mx.example.net (the issue that made
# the readings a union; tests/integration/test_forged_ar.py runs it on them).
@pytest.mark.parametrize(
    "value",
    [
        # A ")" outside a comment is dropped ...
        "mx.example.net); spf=pass",
        "m)x.example.net; spf=pass",
        "(c)m)x.example.net; spf=pass",
        # ... and any token whose first character is "(" is a comment: an
        # escaped one, a quoted one, one after an empty quoted string.
        "\\( mx.example.net; spf=pass",
        "\\(junk mx.example.net; spf=pass",
        '"(" mx.example.net; spf=pass',
        '"(junk; more" mx.example.net; spf=pass',
        '""(c)mx.example.net; spf=pass',
        "\\(abc(def)mx.example.net; spf=pass",
        "\\(a((b)c)mx.example.net; spf=pass",
        # An escaped dot is part of the label token.
        "mx\\.example\\.net; spf=pass",
        # With AuthservIDWithJobID, "id/job" is read as id.
        "mx.example.net/4XkQ2b1mFz; spf=pass",
    ],
)
def test_spellings_opendmarc_reads_as_the_authserv_id(value: str) -> None:
    assert "mx.example.net" in claimed_authserv_ids(value)


def test_spamassassin_reads_the_leading_token_with_its_own_comments() -> None:
    # AuthRes counts a comment's parentheses without quoted-pairs: "(\()"
    # and ".x)" are two comments to RFC 5322 and to OpenDMARC, one to it.
    value = "mx.example.net (\\().x) ; spf=pass"
    assert claimed_authserv_ids(value) >= {"mx.example.net", "mx.example.net.x"}
    # It wants nothing but CFWS, a version and ";" after the token.
    assert claimed_authserv_ids("mx.example.net (c) . evil; spf=pass") == {"mx.example.net.evil"}


@pytest.mark.parametrize(
    ("value", "claimed"),
    [
        ("", set()),
        ("; spf=pass", set()),
        ("(unterminated mx.example.net; spf=pass", set()),
        ("mx.example.net.evil.example; spf=pass", {"mx.example.net.evil.example"}),
        ("other.example; spf=pass (mx.example.net)", {"other.example"}),
        ("other.example; spf=pass smtp.helo=mx.example.net", {"other.example"}),
        ("other.example (via mx.example.net); spf=pass", {"other.example"}),
        ('"mx.example.net; spf=pass', {"mx.example.net;", "mx.example.net; spf=pass", "spf=pass"}),
        ("mx.example.net-1; spf=pass", {"mx.example.net-1"}),
    ],
)
def test_other_authserv_ids(value: str, claimed: set[str]) -> None:
    assert claimed_authserv_ids(value) == claimed


def test_names_put_before_the_authserv_id_do_not_hide_it() -> None:
    # No reader here takes a second name for the id, but RFC 8601 has no
    # place for the first: a lenient reader may take either.
    value = "evil.example mx.example.net; spf=pass"
    assert claimed_authserv_ids(value) == {"evil.example", "mx.example.net"}


def test_authserv_id_key() -> None:
    assert authserv_id_key("MX.Example.NET.") == "mx.example.net"
    assert authserv_id_key("mx.example.net..") == "mx.example.net"


def test_lexemes_are_the_pieces_of_rfc_5322_section_3_2() -> None:
    value = 'id (a (b) \\) c) "q(\\"" \\x)'
    assert list(lexemes(value)) == [
        (Lexeme.TEXT, "i"),
        (Lexeme.TEXT, "d"),
        (Lexeme.TEXT, " "),
        # One comment, nested and with a quoted ")" inside (section 3.2.2).
        (Lexeme.COMMENT, "(a (b) \\) c)"),
        (Lexeme.TEXT, " "),
        # In a quoted string "(" is text, and a quoted-pair is its
        # character (section 3.2.4).
        (Lexeme.DQUOTE, '"'),
        (Lexeme.QTEXT, "q"),
        (Lexeme.QTEXT, "("),
        (Lexeme.QUOTED_PAIR, '\\"'),
        (Lexeme.DQUOTE, '"'),
        (Lexeme.TEXT, " "),
        (Lexeme.QUOTED_PAIR, "\\x"),
        # A ")" that closes nothing is text.
        (Lexeme.TEXT, ")"),
    ]


@pytest.mark.parametrize(
    ("value", "pieces"),
    [
        # What is left open runs to the end.
        ("a(b(c)", [(Lexeme.TEXT, "a"), (Lexeme.COMMENT, "(b(c)")]),
        ("(b\\)", [(Lexeme.COMMENT, "(b\\)")]),
        ('"b(', [(Lexeme.DQUOTE, '"'), (Lexeme.QTEXT, "b"), (Lexeme.QTEXT, "(")]),
        # A backslash that ends the value quotes nothing.
        ("a\\", [(Lexeme.TEXT, "a"), (Lexeme.QUOTED_PAIR, "\\")]),
        # Double quotes in a comment are its text.
        ('(")"x', [(Lexeme.COMMENT, '(")'), (Lexeme.DQUOTE, '"'), (Lexeme.QTEXT, "x")]),
        ("", []),
    ],
)
def test_lexemes_of_malformed_values(value: str, pieces: list[tuple[Lexeme, str]]) -> None:
    assert list(lexemes(value)) == pieces


@pytest.mark.parametrize(
    ("value", "claimed"),
    [
        # A last word of digits after the id is the version (RFC 8601
        # section 2.2): it claims nothing ...
        ("mx.example.net 1; spf=pass", {"mx.example.net"}),
        ("bücher.example 1; spf=pass", {"bücher.example"}),
        ("evil.example bücher.example 1; spf=pass", {"evil.example", "bücher.example"}),
        # ... but a word of digits alone is the id, as OpenDMARC reads it.
        ("(c) 1234; spf=pass", {"1234"}),
        # An escaped trailing dot stays in OpenDMARC's token, so the version
        # after it is not joined to the id as a last label.
        ("(c) mx\\.example\\.net\\. 1; spf=pass", {"mx.example.net"}),
        # Every one of these is a name of no host.
        (". ; spf=pass", set()),
    ],
)
def test_the_version_after_the_authserv_id_claims_nothing(value: str, claimed: set[str]) -> None:
    assert claimed_authserv_ids(value) == claimed


def test_of_id_and_job_the_id_is_what_comes_before_the_first_slash() -> None:
    # OpenDMARC's AuthservIDWithJobID: a job id may itself hold a "/".
    assert claimed_authserv_ids("mx.example.net/a/b; spf=pass") == {
        "mx.example.net/a/b",
        "mx.example.net",
    }


@pytest.mark.parametrize(
    ("value", "claimed"),
    [
        # A comment that touches the id is part of OpenDMARC's token ...
        ("mx.example.net(fw); spf=pass", {"mx.example.net", "mx.example.net(fw)"}),
        # ... and one that never closes runs to the end of it.
        (
            "mx.example.net(fw; spf=pass",
            {"mx.example.net", "mx.example.net(fw; spf=pass"},
        ),
    ],
)
def test_opendmarc_takes_a_comment_touching_the_id_into_it(value: str, claimed: set[str]) -> None:
    assert claimed_authserv_ids(value) == claimed


# SpamAssassin takes a backslash for a character of its token, where RFC
# 5322 and OpenDMARC read a quoted-pair: "mx.exa\mple.net" tells its
# reading apart from theirs (mx.example.net).
@pytest.mark.parametrize(
    ("value", "claimed"),
    [
        # Folding white space before the id, a version after it ...
        ("\r\n\tmx.exa\\mple.net 1; spf=pass", {"mx.example.net", "mx.exa\\mple.net"}),
        # ... with a comment on either side of the version.
        ("mx.exa\\mple.net (a) 1 (b) ; spf=pass", {"mx.example.net", "mx.exa\\mple.net"}),
        # Its white space is ASCII only (Perl's \s on the header's bytes):
        # after a no-break space it finds no token at the start.
        ("\xa0mx.exa\\mple.net; spf=pass", {"mx.example.net", "\xa0mx.example.net"}),
        # Counted without quoted-pairs, "(\()" opens two comments and closes
        # one: the comment never ends, so it reads no id, even with a ";"
        # last.
        ("mx.exa\\mple.net (\\();", {"mx.example.net"}),
    ],
)
def test_what_spamassassin_alone_reads(value: str, claimed: set[str]) -> None:
    assert claimed_authserv_ids(value) == claimed
