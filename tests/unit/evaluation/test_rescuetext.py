"""Authentication-Results resinfos and verdict fields of rescue outcomes."""

from __future__ import annotations

import ipaddress

import pytest

from spfmilter.core.model import RescueKind, RescueResult
from spfmilter.evaluation.rescue import (
    ArcCheck,
    AuthResult,
    DkimCheck,
    Reason,
    RescueOutcome,
)
from spfmilter.evaluation.rescuetext import (
    arc_resinfo,
    dkim_resinfo,
    pvalue,
    resinfos,
    summary,
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
        RescueKind.DKIM,
        Reason.DKIM,
        "example.com",
        "sel",
        dkim=(UNALIGNED, BROKEN, PASSED),
    )
    assert resinfos(outcome) == (dkim_resinfo(BROKEN), dkim_resinfo(PASSED))


def test_an_arc_chain_not_validated_is_not_reported() -> None:
    outcome = RescueOutcome(
        RescueKind.NONE,
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
        ("evil\r\nX-Injected: 1", '"evil X-Injected: 1"'),
        ("bücher.example", '"b\\\\xfccher.example"'),
        ("a" * 1000, '"' + "a" * 252 + '..."'),
    ],
)
def test_values_are_made_safe(value: str, written: str) -> None:
    assert pvalue(value) == written


def test_hostile_values_stay_in_their_place() -> None:
    check = DkimCheck("ex;ample.com (x)", "s\nel", "b", AuthResult.PASS, Reason.DKIM, True)
    text = dkim_resinfo(check)
    assert "\n" not in text
    assert text == 'dkim=pass header.d="ex;ample.com (x)" header.s="s el" header.b=b'
    sealer = ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, "a)b(c\\")
    assert arc_resinfo(sealer) == "arc=fail (chain_invalid; sealed by a\\)b\\(c\\\\)"


def test_summary() -> None:
    dkim = RescueOutcome(RescueKind.DKIM, Reason.DKIM, "example.com", "sel", dkim=(PASSED,))
    assert summary(dkim) == RescueResult(
        RescueKind.DKIM, "example.com", "", (dkim_resinfo(PASSED),)
    )
    arc = RescueOutcome(
        RescueKind.ARC,
        Reason.ARC,
        "example.com",
        sealer="lists.example.org",
        arc=CHAIN,
    )
    ip = ipaddress.ip_address("192.0.2.7")
    assert summary(arc, ip) == RescueResult(
        RescueKind.ARC, "lists.example.org", "", (arc_resinfo(CHAIN, ip),)
    )
    # Not rescued: the signatures verified still go into the field.
    refused = RescueOutcome(RescueKind.NONE, Reason.UNALIGNED, dkim=(PASSED,))
    assert summary(refused) == RescueResult(
        RescueKind.NONE, "", "unaligned", (dkim_resinfo(PASSED),)
    )
    deferred = RescueOutcome(RescueKind.TEMPORARY, Reason.KEY_TEMPERROR)
    assert summary(deferred) == RescueResult(RescueKind.TEMPORARY, "", "key_temperror")
    assert not summary(deferred).rescued and summary(dkim).rescued
