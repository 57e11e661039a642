"""Authentication-Results resinfos and verdict fields of rescue outcomes."""

from __future__ import annotations

import ipaddress

import pytest

from spfmilter.evaluation.rescue import (
    ArcCheck,
    AuthResult,
    DkimCheck,
    Reason,
    RescueMethod,
    RescueOutcome,
    RescueStatus,
)
from spfmilter.evaluation.rescuetext import (
    arc_resinfo,
    dkim_resinfo,
    pvalue,
    resinfos,
    verdict_fields,
)

PASSED = DkimCheck("example.com", "sel", "abcd1234", AuthResult.PASS, Reason.DKIM, True)
BROKEN = DkimCheck("example.com", "old", "zzzz", AuthResult.FAIL, Reason.BODY_HASH, True)
UNALIGNED = DkimCheck("list.example", "s", "x", None, Reason.UNALIGNED, False)
CHAIN = ArcCheck(AuthResult.PASS, Reason.ARC, "lists.example.org", 2, 0, "spf")


def test_dkim_pass() -> None:
    assert dkim_resinfo(PASSED) == "dkim=pass header.d=example.com header.s=sel header.b=abcd1234"


def test_dkim_failure_says_why() -> None:
    assert dkim_resinfo(BROKEN) == (
        "dkim=fail (body_hash) header.d=example.com header.s=old header.b=zzzz"
    )


def test_arc_pass_with_the_registered_properties() -> None:
    ip = ipaddress.ip_address("2001:db8::1")
    assert arc_resinfo(CHAIN, ip) == (
        "arc=pass (sealed by lists.example.org) header.oldest-pass=0 smtp.remote-ip=2001:db8::1"
    )


def test_unverified_signatures_are_not_reported() -> None:
    outcome = RescueOutcome(
        RescueStatus.RESCUED,
        Reason.DKIM,
        RescueMethod.DKIM,
        "example.com",
        "sel",
        dkim=(UNALIGNED, BROKEN, PASSED),
    )
    assert resinfos(outcome) == (dkim_resinfo(BROKEN), dkim_resinfo(PASSED))


def test_an_arc_chain_not_validated_is_not_reported() -> None:
    outcome = RescueOutcome(
        RescueStatus.REFUSED,
        Reason.SEALER_UNTRUSTED,
        arc=ArcCheck(None, Reason.SEALER_UNTRUSTED, "evil.example", 1),
    )
    assert resinfos(outcome) == ()


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("example.com", "example.com"),
        ("a b", '"a b"'),
        ('x"y\\', '"x\\"y\\\\"'),
        ("evil\r\nX-Injected: 1", '"evilX-Injected: 1"'),
        ("bücher.example", '"b\\\\xfccher.example"'),
        ("a" * 1000, "a" * 255),
    ],
)
def test_values_are_made_safe(value: str, written: str) -> None:
    assert pvalue(value) == written


def test_hostile_values_stay_in_their_place() -> None:
    check = DkimCheck("ex;ample.com (x)", "s\nel", "b", AuthResult.PASS, Reason.DKIM, True)
    text = dkim_resinfo(check)
    assert "\n" not in text
    assert text == 'dkim=pass header.d="ex;ample.com (x)" header.s=sel header.b=b'
    sealer = ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, "a)b(c\\")
    assert arc_resinfo(sealer) == "arc=fail (chain_invalid; sealed by a\\)b\\(c\\\\)"


def test_verdict_fields() -> None:
    dkim = RescueOutcome(RescueStatus.RESCUED, Reason.DKIM, RescueMethod.DKIM, "example.com", "sel")
    assert verdict_fields(dkim) == {
        "rescue": "dkim",
        "rescue_domain": "example.com",
        "rescue_selector": "sel",
    }
    arc = RescueOutcome(
        RescueStatus.RESCUED,
        Reason.ARC,
        RescueMethod.ARC,
        "example.com",
        sealer="lists.example.org",
    )
    assert verdict_fields(arc) == {
        "rescue": "arc",
        "rescue_domain": "example.com",
        "rescue_sealer": "lists.example.org",
    }
    refused = RescueOutcome(RescueStatus.REFUSED, Reason.UNALIGNED)
    assert verdict_fields(refused) == {"rescue": "none", "rescue_reason": "unaligned"}
    deferred = RescueOutcome(RescueStatus.TEMPORARY, Reason.KEY_TEMPERROR)
    assert verdict_fields(deferred) == {"rescue": "temperror", "rescue_reason": "key_temperror"}
