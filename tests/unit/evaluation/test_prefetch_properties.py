"""Properties of the prefetch over generated SPF trees: results are the same
with and without it, and what it asks beyond the evaluation stays within
one worst-case evaluation (RFC 7208 section 4.6.4)."""

from __future__ import annotations

import dataclasses
import ipaddress
from concurrent.futures import Executor, ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spfmilter.core.model import Identity, SpfOutcome, SpfQuery
from spfmilter.evaluation.dnswire import RR, Reply
from spfmilter.evaluation.prefetch import MX_LIMIT, TERM_LIMIT, Prefetcher
from spfmilter.evaluation.pyspf import Checker, spf_text
from tests.support.fakedns import FakeDns, Inline, make
from tests.support.pyspfstate import pyspf_restored

DOMAINS = [f"d{n}.example" for n in range(5)]
HOSTS = [f"h{n}.example" for n in range(3)]
CLIENTS = ["192.0.2.1", "198.51.100.1", "2001:db8::1", "::ffff:192.0.2.1"]
ADDRESSES = {1: ["192.0.2.1", "192.0.2.2", "203.0.113.9"], 28: ["2001:db8::1", "2001:db8::2"]}
SERVER = "192.0.2.53"

_domain = st.sampled_from(DOMAINS)
_qualifier = st.sampled_from(["", "+", "-", "~", "?"])
_term = st.one_of(
    st.builds(lambda q, d: f"{q}include:{d}", _qualifier, _domain),
    st.builds(
        lambda q, d, c: f"{q}a{d}{c}",
        _qualifier,
        st.sampled_from(["", *(":" + d for d in DOMAINS + HOSTS)]),
        st.sampled_from(["", "/24", "//64", "/24//48"]),
    ),
    st.builds(
        lambda q, d: f"{q}mx{d}", _qualifier, st.sampled_from(["", *(":" + d for d in DOMAINS)])
    ),
    st.builds(lambda q, d: f"{q}exists:{d}", _qualifier, st.sampled_from(DOMAINS + HOSTS)),
    st.sampled_from(
        [
            "ptr",
            "ip4:192.0.2.0/24",
            "ip6:2001:db8::/32",
            "exists:%{i}.d0.example",
            "a:%{d}",
            "include:%{o}",
            "moo",
            "exp=d1.example",
            "-all",
            "?all",
        ]
    ),
)
_record = st.builds(
    lambda terms, redirect: " ".join(["v=spf1", *terms, *redirect]),
    st.lists(_term, max_size=14),
    st.lists(st.builds(lambda d: f"redirect={d}", _domain), max_size=1),
)


@st.composite
def zones(draw: st.DrawFn) -> dict[tuple[str, int], Reply]:
    """Answers by (name, type code): SPF records, A/AAAA and MX; empty
    answers carry the zone's SOA, so they are kept (RFC 2308)."""
    table: dict[tuple[str, int], Reply] = {}

    def reply(*answer: RR) -> Reply:
        return Reply(0, answer, (RR("example", 6, 300, 300),), 100)

    for name in DOMAINS + HOSTS:
        records = draw(st.lists(_record, max_size=2)) if name in DOMAINS else []
        texts = [RR(name, 16, 300, (text.encode(),)) for text in records]
        texts += draw(st.lists(st.just(RR(name, 16, 300, (b"not spf",))), max_size=1))
        table[name, 16] = reply(*texts)
        for code, pool in ADDRESSES.items():
            table[name, code] = reply(
                *(
                    RR(name, code, 300, a)
                    for a in draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))
                )
            )
        exchanges = draw(st.lists(st.sampled_from(HOSTS + DOMAINS), max_size=MX_LIMIT + 2))
        table[name, 15] = reply(*(RR(name, 15, 300, (n, x)) for n, x in enumerate(exchanges)))
    return table


def evaluate(
    table: dict[tuple[str, int], Reply], client: str, sender: str, executor: Executor | None
) -> tuple[SpfOutcome, FakeDns]:
    resolver, fake, _, _ = make((SERVER,))
    fake.table = {(SERVER, name, code): answer for (name, code), answer in table.items()}
    prefetcher = (
        Prefetcher(resolver.prefetch, resolver.cached, spf_text, executor, void_lookup_limit=2)
        if executor is not None
        else None
    )
    checker = Checker(resolver.answer, prefetcher=prefetcher)
    with pyspf_restored():
        checker.install(2)
        query = SpfQuery(
            Identity.MAIL_FROM, ipaddress.ip_address(client), "helo.example", sender, "mx.test"
        )
        outcome = checker.check(query, 20)
    return dataclasses.replace(outcome, lookup_seconds=0.0), fake


def questions(fake: FakeDns) -> set[tuple[str, int]]:
    return {(name, code) for _, name, code in fake.asked}


# One worst-case evaluation: 10 DNS terms, each one question and, for mx,
# one per exchange (at most 10); the records the terms name are among them.
WORST_CASE = TERM_LIMIT * (1 + MX_LIMIT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zones(), st.sampled_from(CLIENTS), _domain)
def test_results_are_the_same_with_and_without_prefetch(
    table: dict[tuple[str, int], Reply], client: str, domain: str
) -> None:
    plain, plain_dns = evaluate(table, client, f"alice@{domain}", None)
    ahead, ahead_dns = evaluate(table, client, f"alice@{domain}", Inline())
    assert ahead == plain
    # Each question once (asked ahead, the evaluation finds it cached), and
    # what was asked beyond the evaluation's own within one worst case.
    assert len(ahead_dns.asked) == len(questions(ahead_dns))
    assert len(questions(ahead_dns) - questions(plain_dns)) <= WORST_CASE


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zones(), st.sampled_from(CLIENTS), _domain)
def test_results_are_the_same_with_prefetch_in_threads(
    table: dict[tuple[str, int], Reply], client: str, domain: str
) -> None:
    plain, _ = evaluate(table, client, f"alice@{domain}", None)
    with _pool() as pool:
        ahead, ahead_dns = evaluate(table, client, f"alice@{domain}", pool)
    assert ahead == plain
    assert len(ahead_dns.asked) == len(questions(ahead_dns))  # in flight: waited for


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(4, thread_name_prefix="prefetch-test")
