"""The skip facts: forward-confirmed HELO and PTR names, listed domains on
label boundaries, forwarders, and what a lookup that fails means."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spfmilter.core.model import (
    Identity,
    Plan,
    SkipFacts,
    SpfOutcome,
    SpfResult,
)
from spfmilter.evaluation.clientfacts import (
    confirmed_ptr_names,
    gather,
    in_domains,
    resolves_to,
)
from spfmilter.evaluation.resolver import DnsLimitError, DnsTempError, Record
from tests.support.strategies import SETTINGS, domain_lists, domains, hostnames, texts

CLIENT = ipaddress.ip_address("198.51.100.7")
PTR = CLIENT.reverse_pointer


def table_lookup(table: dict[tuple[str, str], list[Record]]) -> Callable[[str, str], list[Record]]:
    def lookup(name: str, qtype: str) -> list[Record]:
        if name == "broken.example":
            raise DnsTempError("SERVFAIL")
        return table.get((name.lower(), qtype), [])

    return lookup


def test_resolves_to_and_confirmed_ptr_names() -> None:
    table: dict[tuple[str, str], list[Record]] = {
        ("7.100.51.198.in-addr.arpa", "PTR"): [
            (("7.100.51.198.in-addr.arpa", "PTR"), "Mail.Example.org"),
            (("7.100.51.198.in-addr.arpa", "PTR"), "liar.example"),
            (("7.100.51.198.in-addr.arpa", "PTR"), "broken.example"),
        ],
        ("mail.example.org", "A"): [(("mail.example.org", "A"), "198.51.100.7")],
        ("liar.example", "A"): [(("liar.example", "A"), "198.51.100.8"), (("x", "A"), "junk")],
    }

    def lookup(name: str, qtype: str) -> list[Record]:
        if name == "broken.example":
            raise DnsTempError("SERVFAIL")
        return table.get((name.lower(), qtype), [])

    assert resolves_to(lookup, "mail.example.org", CLIENT)
    assert not resolves_to(lookup, "liar.example", CLIENT)
    assert confirmed_ptr_names(lookup, CLIENT) == ("mail.example.org",)


def test_an_ipv6_client_is_confirmed_by_an_aaaa_record() -> None:
    table: dict[tuple[str, str], list[Record]] = {
        ("v6.example", "AAAA"): [(("v6.example", "AAAA"), "2001:db8::7")],
        ("v6.example", "A"): [(("v6.example", "A"), "192.0.2.7")],
    }

    def lookup(name: str, qtype: str) -> list[Record]:
        return table.get((name, qtype), [])

    assert resolves_to(lookup, "v6.example", ipaddress.ip_address("2001:db8::7"))
    assert not resolves_to(lookup, "v6.example", ipaddress.ip_address("2001:db8::8"))


def test_a_ptr_name_that_fails_to_resolve_does_not_hide_the_next() -> None:
    table: dict[tuple[str, str], list[Record]] = {
        (PTR, "PTR"): [((PTR, "PTR"), "broken.example"), ((PTR, "PTR"), "mail.example.org")],
        ("mail.example.org", "A"): [(("mail.example.org", "A"), "198.51.100.7")],
    }

    def lookup(name: str, qtype: str) -> list[Record]:
        if name == "broken.example":
            raise DnsLimitError("too many records")
        return table.get((name, qtype), [])

    assert confirmed_ptr_names(lookup, CLIENT) == ("mail.example.org",)


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("mail.example.com", "example.com"),
        ("example.com.", "example.com"),
        ("MX.Example.COM", "example.com"),
        ("evilexample.com", None),
        ("example.com.evil.test", None),
    ],
)
def test_in_domains_matches_on_label_boundaries(name: str, domain: str | None) -> None:
    assert in_domains(name, ("example.com",)) == domain


def confirmed(*names: str) -> dict[tuple[str, str], list[Record]]:
    """A zone in which the client's PTR names all resolve back to it."""
    table: dict[tuple[str, str], list[Record]] = {
        (PTR, "PTR"): [((PTR, "PTR"), name) for name in names]
    }
    for name in names:
        table[name, "A"] = [((name, "A"), str(CLIENT))]
    return table


def no_spf(mail_from: str) -> SpfOutcome:
    raise AssertionError(f"unexpected evaluation of {mail_from}")


@pytest.mark.parametrize(
    ("names", "ptr"),
    [
        (("evilrelay.example", "mx.relay.example"), ("mx.relay.example", "relay.example")),
        (("evilrelay.example",), None),
    ],
)
def test_only_a_ptr_name_in_a_listed_domain_is_a_fact(
    names: tuple[str, ...], ptr: tuple[str, str] | None
) -> None:
    lookup = table_lookup(confirmed(*names))
    facts = gather(Plan(ptr_domains=("relay.example",)), CLIENT, lookup, no_spf)
    assert facts == SkipFacts(ptr=ptr)
    assert facts.found is (ptr is not None)


def test_facts_are_looked_for_only_as_the_plan_lists_them() -> None:
    asked: list[tuple[str, str]] = []

    def lookup(name: str, qtype: str) -> list[Record]:
        asked.append((name, qtype))
        return confirmed("mail.example.org").get((name, qtype), [])

    passes = {"postmaster@fwd.example": SpfResult.PASS}

    def mail_from(address: str) -> SpfOutcome:
        result = passes.get(address, SpfResult.FAIL)
        return SpfOutcome(Identity.MAIL_FROM, result, address.partition("@")[2], address)

    assert gather(Plan(), CLIENT, lookup, mail_from) == SkipFacts()
    assert asked == []
    plan = Plan(helo_name="mail.example.org", forwarder_domains=("other.example", "fwd.example"))
    facts = gather(plan, CLIENT, lookup, mail_from)
    assert facts == SkipFacts(helo_confirmed=True, forwarder="fwd.example")
    assert asked == [("mail.example.org", "A")]


@SETTINGS
@given(st.one_of(texts, domains, st.builds("{}.{}".format, hostnames, domains)), domain_lists)
def test_in_domains_finds_the_first_listed_domain_on_label_boundaries(
    name: str, listed: tuple[str, ...]
) -> None:
    found = in_domains(name, listed)
    name = name.lower().rstrip(".")
    below = [d for d in listed if name == d or name.endswith("." + d)]
    assert found == (below[0] if below else None)
