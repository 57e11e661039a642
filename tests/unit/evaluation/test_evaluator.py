"""The evaluator a process builds from [dns]: its resolver asking the
configured servers, its checker installed into pyspf with the void lookup
limit, and outcomes kept for reuse (against a DNS server on loopback)."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import spf

from spfmilter.config.orgdomain import PublicSuffixes
from spfmilter.config.schema import Config, DnsConfig, RescueConfig
from spfmilter.config.values import Nameserver
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Connection,
    Identity,
    Plan,
    RescueKind,
    SpfOutcome,
    SpfQuery,
    SpfResult,
)
from spfmilter.evaluation import evaluator
from spfmilter.evaluation.pool import IdlingPool
from spfmilter.evaluation.rescue import RESCUE_SECONDS
from spfmilter.evaluation.resolver import DnsLimitError, Resolver
from testkit import dkimkit
from testkit.daemon import wait_for
from testkit.dnsserver import DNSTestServer
from tests.support.pyspfstate import pyspf_restored

ZONE = {
    "pass.example": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}],
    # Its first include is the evaluation's own first lookup; the second is
    # asked ahead.
    "include.example": [{"TXT": "v=spf1 include:fail.example include:pass.example -all"}],
    "fail.example": [{"TXT": "v=spf1 -all"}],
    "mail.pass.example": [{"A": "198.51.100.7"}],
    "voids.example": [
        {"TXT": "v=spf1 a:none1.voids.example a:none2.voids.example a:none3.voids.example -all"}
    ],
}
CONN = Connection(ipaddress.ip_address("198.51.100.7"), "client.example", "mx", "[198.51.100.7]")


@pytest.fixture
def dns() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONE, ttl=300) as server:
        yield server


@pytest.fixture(autouse=True)
def _pyspf_globals() -> Iterator[None]:
    with pyspf_restored():
        yield


@pytest.fixture
def watch_lookups(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """Call it once the checker is installed: the list it returns fills with
    the name of the thread that made each of pyspf's DNS lookups."""

    def watch() -> list[str]:
        names: list[str] = []
        original = spf.DNSLookup

        def watching(*args: object) -> object:
            names.append(threading.current_thread().name)
            return original(*args)

        monkeypatch.setattr(spf, "DNSLookup", watching)
        return names

    return watch


def built(
    dns: DNSTestServer, void_lookup_limit: int = 2, **dns_config: Any
) -> tuple[evaluator.Evaluator, Metrics]:
    config = DnsConfig(
        nameservers=(Nameserver(dns.host, dns.port),),
        timeout=2.0,
        void_lookup_limit=void_lookup_limit,
        **dns_config,
    )
    metrics = Metrics()
    return evaluator.build(config, metrics), metrics


def test_the_built_evaluator_asks_the_configured_servers_and_keeps_results(
    dns: DNSTestServer,
) -> None:
    built_evaluator, metrics = built(dns)
    plan = Plan(helo=True, mail_from=True)
    for _ in range(2):
        outcomes = built_evaluator.evaluate(plan, CONN, "a@pass.example", None, 1)
        assert outcomes.helo is not None and outcomes.helo.result is SpfResult.NONE
        assert outcomes.mail_from is not None
        assert (outcomes.mail_from.identity, outcomes.mail_from.result) == (
            Identity.MAIL_FROM,
            SpfResult.PASS,
        )
    assert [query[:2] for query in dns.queries] == [("pass.example", "TXT")]
    assert metrics.value("spfmilter_result_cache_hits_total") == 1
    assert metrics.value("spfmilter_dns_queries_total", qtype="TXT", outcome="answer") == 1


@pytest.mark.parametrize(("limit", "result"), [(2, SpfResult.PERMERROR), (3, SpfResult.FAIL)])
def test_the_void_lookup_limit_of_the_config_is_pyspfs(
    dns: DNSTestServer, limit: int, result: SpfResult
) -> None:
    # Three a: mechanisms naming nothing: three void lookups (RFC 7208 4.6.4).
    built_evaluator, _ = built(dns, void_lookup_limit=limit)
    assert limit == spf.MAX_VOID_LOOKUPS
    outcomes = built_evaluator.evaluate(Plan(mail_from=True), CONN, "a@voids.example", None, 1)
    assert outcomes.mail_from is not None and outcomes.mail_from.result is result


def test_the_built_evaluator_evaluates_mail_from_beside_helo_in_its_own_threads(
    dns: DNSTestServer, watch_lookups: Callable[[], list[str]]
) -> None:
    built_evaluator, _ = built(dns)
    conn = Connection(CONN.client_ip, "client.example", "mx", "helo.pass.example")
    lookup_threads = watch_lookups()
    outcomes = built_evaluator.evaluate(
        Plan(helo=True, mail_from=True), conn, "a@pass.example", None, 1
    )
    assert outcomes.mail_from is not None and outcomes.mail_from.result is SpfResult.PASS
    assert "mailfrom" in lookup_threads


def test_the_built_evaluator_looks_up_skip_facts_with_its_resolver(dns: DNSTestServer) -> None:
    built_evaluator, _ = built(dns)
    plan = Plan(helo_name="mail.pass.example", helo=True, mail_from=True)
    outcomes = built_evaluator.evaluate(plan, CONN, "a@pass.example", None, 1)
    assert outcomes.facts.helo_confirmed and outcomes.helo is None


def test_a_helo_known_at_once_leaves_mail_from_in_the_callbacks_thread(
    dns: DNSTestServer, watch_lookups: Callable[[], list[str]]
) -> None:
    # An address literal HELO is "none" without DNS: nothing to overlap.
    built_evaluator, _ = built(dns)
    lookup_threads = watch_lookups()
    outcomes = built_evaluator.evaluate(
        Plan(helo=True, mail_from=True), CONN, "a@pass.example", None, 1
    )
    assert outcomes.mail_from is not None and outcomes.mail_from.result is SpfResult.PASS
    assert lookup_threads == [threading.current_thread().name]


def test_the_background_threads_end_when_idle(
    dns: DNSTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluator, "BACKGROUND_IDLE", 0.1)
    built_evaluator, _ = built(dns)
    conn = Connection(CONN.client_ip, "client.example", "mx", "helo.pass.example")
    built_evaluator.evaluate(Plan(helo=True, mail_from=True), conn, "a@pass.example", None, 1)
    wait_for(
        lambda: not any(t.name == "mailfrom" for t in threading.enumerate()),
        5,
        "the idle background threads to end",
    )


# The rescue at end of message, with its keys from a fake lookup.
ED_KEY = dkimkit.ed25519_key()
SUFFIXES = PublicSuffixes(frozenset({"org", "example"}))
WITH_RESCUE = Config(
    rescue=RescueConfig(dkim=True, arc_trusted_sealers=("lists.example",)), suffixes=SUFFIXES
)


def rescuing(zone: dkimkit.Zone, clock: Callable[[], float] = lambda: 0.0) -> evaluator.Evaluator:
    # A clock at 0: the rescue's deadline (RESCUE_SECONDS) is on this clock.
    def no_spf(query: SpfQuery, lookup_time: float) -> SpfOutcome:
        raise AssertionError("the rescue evaluates no SPF")

    return evaluator.Evaluator(no_spf, zone.lookup, Metrics(), lookup_time=5, clock=clock)


def test_the_rescue_aligns_with_the_configured_suffix_list() -> None:
    zone = dkimkit.Zone()
    zone.publish("sel", "example.org", ED_KEY.record)
    message = dkimkit.sign(dkimkit.MESSAGE, ED_KEY, domain="example.org")
    # The MAIL FROM domain is below the signer's: aligned by organization.
    result = rescuing(zone).rescue(message, "a@mail.example.org", CONN, WITH_RESCUE)
    assert (result.kind, result.domain) == (RescueKind.DKIM, "example.org")
    # Without a list loaded only the same name aligns: no rescue.
    unloaded = dataclasses.replace(WITH_RESCUE, suffixes=None)
    result = rescuing(zone).rescue(message, "a@mail.example.org", CONN, unloaded)
    assert (result.kind, result.reason) == (RescueKind.NONE, "unaligned")
    # A quoted local part may hold "@": the domain is after the last one.
    result = rescuing(zone).rescue(message, '"a@b"@example.org', CONN, unloaded)
    assert result.kind is RescueKind.DKIM


def test_the_rescue_by_arc_names_the_client_and_the_trusted_sealer(tmp_path: Path) -> None:
    key = dkimkit.rsa_key(1024, tmp_path)
    zone = dkimkit.Zone()
    zone.publish("arc", "lists.example", key.record)
    sealed = dkimkit.seal(
        dkimkit.sign(dkimkit.MESSAGE, ED_KEY, domain="example.org"),
        key,
        "lists.example",
        "dkim=pass header.d=example.org",
    )
    # The signer's key is gone since: only the chain can vouch.
    result = rescuing(zone).rescue(sealed, "a@example.org", CONN, WITH_RESCUE)
    assert (result.kind, result.domain) == (RescueKind.ARC, "lists.example")
    assert any(f"smtp.remote-ip={CONN.client_ip}" in resinfo for resinfo in result.resinfos)


def test_a_key_answer_over_the_dns_limits_is_a_refusal_not_a_crash() -> None:
    zone = dkimkit.Zone(errors={"sel._domainkey.example.org": DnsLimitError("too large")})
    message = dkimkit.sign(dkimkit.MESSAGE, ED_KEY, domain="example.org")
    result = rescuing(zone).rescue(message, "a@example.org", CONN, WITH_RESCUE)
    assert (result.kind, result.reason) == (RescueKind.NONE, "key_refused")


def test_the_rescue_deadline_is_on_the_evaluators_clock() -> None:
    zone = dkimkit.Zone()
    zone.publish("sel", "example.org", ED_KEY.record)
    message = dkimkit.sign(dkimkit.MESSAGE, ED_KEY, domain="example.org")
    result = rescuing(zone).rescue(message, "a@example.org", CONN, WITH_RESCUE)
    assert result.kind is RescueKind.DKIM
    late = iter([0.0, *[RESCUE_SECONDS + 1] * 100])
    result = rescuing(zone, lambda: next(late)).rescue(message, "a@example.org", CONN, WITH_RESCUE)
    assert (result.kind, result.reason) == (RescueKind.TEMPORARY, "deadline")


@pytest.fixture
def asked_ahead(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pool each question asked ahead is handed to (by name), as the
    evaluation reads a record: recorded when handed over, so that a prefetch
    thread slower than the evaluation itself cannot hide one."""
    pools: list[str] = []
    original = IdlingPool.submit

    def recording(self: IdlingPool, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "_ask":
            pools.append(self._name)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(IdlingPool, "submit", recording)
    return pools


def test_the_built_evaluator_asks_ahead_on_its_prefetch_threads(
    dns: DNSTestServer, asked_ahead: list[str]
) -> None:
    built_evaluator, _ = built(dns)
    outcomes = built_evaluator.evaluate(Plan(mail_from=True), CONN, "a@include.example", None, 1)
    assert outcomes.mail_from is not None and outcomes.mail_from.result is SpfResult.PASS
    assert asked_ahead == ["prefetch"]  # include:pass.example's record


@pytest.mark.parametrize("config", [{"prefetch": False}, {"cache_size": 0}])
def test_without_prefetch_or_without_a_cache_nothing_is_asked_ahead(
    dns: DNSTestServer, asked_ahead: list[str], config: dict[str, Any]
) -> None:
    built_evaluator, _ = built(dns, **config)
    outcomes = built_evaluator.evaluate(Plan(mail_from=True), CONN, "a@include.example", None, 1)
    assert outcomes.mail_from is not None and outcomes.mail_from.result is SpfResult.PASS
    assert asked_ahead == []


def test_the_dns_cache_and_the_result_cache_share_cache_size(
    dns: DNSTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    shares: list[int] = []
    original = Resolver.__init__

    def recording(self: Resolver, *args: Any, cache_bytes: int, **kwargs: Any) -> None:
        shares.append(cache_bytes)
        original(self, *args, cache_bytes=cache_bytes, **kwargs)

    monkeypatch.setattr(Resolver, "__init__", recording)
    built(dns, cache_size=4001)
    assert shares == [3001]  # a quarter of it, in whole bytes, for kept results
