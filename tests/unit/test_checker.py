"""The checker against an injected lookup (no network): pyspf wired right."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from spfmilter import checker
from spfmilter.dns import DnsTempError, Record
from spfmilter.model import Identity, SpfOutcome, SpfResult

ZONE: dict[tuple[str, str], list[Record]] = {
    ("example.org", "TXT"): [(("example.org", "TXT"), [b"v=spf1 ip4:198.51.100.0/24 -all"])],
    ("exp.example.org", "TXT"): [
        (("exp.example.org", "TXT"), [b"v=spf1 -all exp=why.example.org"])
    ],
    ("why.example.org", "TXT"): [(("why.example.org", "TXT"), [b"%{i} may not send"])],
    ("mail.example.org", "TXT"): [(("mail.example.org", "TXT"), [b"v=spf1 a -all"])],
    ("mail.example.org", "A"): [(("mail.example.org", "A"), "198.51.100.7")],
    ("broken.example.org", "TXT"): [(("broken.example.org", "TXT"), [b"v=spf1 moo -all"])],
}
asked: list[tuple[str, str]] = []


def fake_lookup(name: str, qtype: str, budget: float | None) -> list[Record]:
    asked.append((name, qtype))
    if name.startswith("slow."):
        raise DnsTempError(f"DNS timeout looking up {name} {qtype}")
    return ZONE.get((name, qtype), [])


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    checker.install(fake_lookup, 2)
    asked.clear()
    yield


def run(
    identity: Identity,
    mail_from: str = "",
    helo: str = "mail.example.org",
    ip: str = "198.51.100.7",
) -> SpfOutcome:
    return checker.check(
        identity,
        client_ip=ipaddress.ip_address(ip),
        helo=helo,
        mail_from=mail_from,
        receiver="mx.test.example",
        lookup_time=5,
    )


def test_pass_with_mechanism_and_domain() -> None:
    out = run(Identity.MAIL_FROM, "a@example.org")
    assert (out.result, out.domain, out.mechanism, out.sender) == (
        SpfResult.PASS,
        "example.org",
        "ip4:198.51.100.0/24",
        "a@example.org",
    )
    assert out.explanation is None and out.problem is None


def test_fail_keeps_only_the_domains_own_explanation() -> None:
    assert run(Identity.MAIL_FROM, "a@example.org", ip="203.0.113.5").explanation is None
    out = run(Identity.MAIL_FROM, "a@exp.example.org", ip="203.0.113.5")
    assert (out.result, out.explanation) == (SpfResult.FAIL, "203.0.113.5 may not send")


def test_helo_identity_uses_postmaster_at_helo() -> None:
    out = run(Identity.HELO)
    assert (out.result, out.sender, out.domain) == (
        SpfResult.PASS,
        "postmaster@mail.example.org",
        "mail.example.org",
    )


@pytest.mark.parametrize(
    "helo", ["[198.51.100.7]", "", "localhost", "bad..name", "x" * 70 + ".org"]
)
def test_helo_that_is_not_a_domain_is_none_without_dns(helo: str) -> None:
    out = run(Identity.HELO, helo=helo)
    assert out.result is SpfResult.NONE
    assert asked == []


def test_dns_trouble_is_temperror_and_syntax_is_permerror() -> None:
    out = run(Identity.MAIL_FROM, "a@slow.example.org")
    assert out.result is SpfResult.TEMPERROR
    assert "DNS timeout" in (out.problem or "")
    out = run(Identity.MAIL_FROM, "a@broken.example.org")
    assert out.result is SpfResult.PERMERROR
    assert "moo" in (out.problem or "")


def test_no_record_is_none() -> None:
    assert run(Identity.MAIL_FROM, "a@nothing.example").result is SpfResult.NONE
