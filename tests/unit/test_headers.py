"""Header and reply text, compared as exact strings."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from spfmilter.headers import (
    authentication_results,
    authserv_id_of,
    clean,
    quote_value,
    received_spf,
    reply_text,
)
from spfmilter.model import Identity, Skip, SkipReason, SpfOutcome, SpfResult

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
    assert authserv_id_of(value) == "mx.example.net"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("; spf=pass", ""),
        ("(unterminated mx.example.net; spf=pass", ""),
        ("mx.example.net.evil.example; spf=pass", "mx.example.net.evil.example"),
        ("evil.example mx.example.net; spf=pass", "evil.example"),
        ('"mx.example.net; spf=pass', "mx.example.net;"),  # unterminated: not ours
        ("other.example; spf=pass (mx.example.net)", "other.example"),
    ],
)
def test_other_authserv_ids(value: str, expected: str) -> None:
    assert authserv_id_of(value) == expected
