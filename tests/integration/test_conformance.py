"""The openspf RFC 7208 test suite, run end to end through the real daemon.

Every case is one transaction over the milter protocol (client IP = host,
HELO = helo, MAIL FROM = mailfrom) against the daemon on a real socket,
which resolves through a DNS server on 127.0.0.1 serving that section's
zonedata.  The result is read back from the Received-SPF header the daemon
inserts.  Cases with an explanation are run again against a daemon that
rejects, and the reject reply must carry that explanation.

The suite runs twice: without a cache (so without the prefetch, which only
warms it), and with a cache and the prefetch, the daemons then started
afresh for each section, whose zone data differs from the others'.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from spfmilter.core.headers import reply_text
from testkit.daemon import Daemon
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import MilterClient
from tests.support.environment import unavailable

SUITE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "rfc7208-tests.yml"
RECEIVER = "mx.test.example"


@dataclass(frozen=True)
class Case:
    section: str
    name: str
    zone: dict[str, Any]
    host: str
    helo: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None


def load_cases() -> list[Case]:
    cases = []
    with SUITE.open() as stream:
        for doc in yaml.safe_load_all(stream):
            for name, test in doc["tests"].items():
                result = test["result"]
                cases.append(
                    Case(
                        section=doc["description"],
                        name=name,
                        zone=doc["zonedata"],
                        host=str(test["host"]),
                        helo=str(test["helo"]),
                        mailfrom=str(test.get("mailfrom") or ""),
                        results=tuple(result) if isinstance(result, list) else (result,),
                        explanation=test.get("explanation"),
                    )
                )
    return cases


def settings(dns: DNSTestServer, policy: str, cache: str = "cache_size = 0\n") -> str:
    # No cache: each section's zonedata differs.  No skip networks: the
    # suite's hosts are only values in the milter protocol.  Short DNS
    # times: the TIMEOUT names must end in temperror quickly.
    return (
        f"[dns]\nnameservers = {dns.nameserver}\ntimeout = 0.4\nlookup_time = 2\n"
        f"{cache}[skip]\nnetworks =\n[policy]\n{policy}"
    )


PREFETCH = "cache_size = 1M\nprefetch = yes\n"


@dataclass
class Suite:
    dns: DNSTestServer
    dry_run: Daemon
    rejecting: Daemon


def need_suite() -> None:
    if not SUITE.exists():
        unavailable(f"conformance suite not found at {SUITE} (a clone without ../shared)")


def assert_quiet(*daemons: Daemon) -> None:
    for daemon in daemons:
        # Unmatched mechanisms and bad records are the suite's subject;
        # the daemon must not have logged anything worse than warnings.
        assert [u for u in daemon.unexpected() if not u.startswith("WARNING")] == []


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    need_suite()
    work = tmp_path_factory.mktemp("conformance")
    with DNSTestServer({}, ttl=0) as dns:
        # helo_check = no for the explanation runs: the reject must come
        # from the MAIL FROM identity the case is about.
        dry_run = Daemon(work / "dry", settings(dns, "dry_run = yes\n"))
        rejecting = Daemon(work / "reject", settings(dns, "helo_check = no\n"))
        with dry_run, rejecting:
            yield Suite(dns, dry_run, rejecting)
        assert_quiet(dry_run, rejecting)


def run_case(daemon: Daemon, case: Case) -> tuple[str | None, str | None]:
    """One transaction; returns (Received-SPF value or None, RCPT reply text)."""
    with MilterClient(daemon.socket, timeout=30) as client:
        client.negotiate()
        client.macros("C", {"j": RECEIVER})
        client.connect("unknown", case.host)
        client.helo(case.helo)
        result = client.transaction(f"<{case.mailfrom}>", ["<user@example.net>"])
    rcpt_reply = result.rcpts[0][1].text if result.rcpts else result.mail.text
    header = None
    if result.eom is not None:
        for mod in result.eom.modifications:
            if mod.name == "Received-SPF":
                header = mod.value
    return header, rcpt_reply


def test_rfc7208_suite(suite: Suite, capsys: pytest.CaptureFixture[str]) -> None:
    failures = []
    current_section = None
    cases = load_cases()
    for case in cases:
        if case.section != current_section:
            # The suite's drivers serve each SPF (type 99) record as TXT
            # too (see the suite's header); the server does so only where a
            # name has no TXT entry of its own.
            suite.dns.set_zone(case.zone, spf_as_txt=True)
            current_section = case.section
        failures += check_case(suite, case)
    report(cases, failures, "", capsys)


def test_rfc7208_suite_with_prefetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_suite()
    cases = load_cases()
    sections: dict[str, list[Case]] = {}
    for case in cases:
        sections.setdefault(case.section, []).append(case)
    failures = []
    with DNSTestServer({}, ttl=300) as dns:
        for number, section_cases in enumerate(sections.values()):
            dns.set_zone(section_cases[0].zone, spf_as_txt=True)
            dry_run = Daemon(tmp_path / f"dry{number}", settings(dns, "dry_run = yes\n", PREFETCH))
            rejecting = Daemon(
                tmp_path / f"reject{number}", settings(dns, "helo_check = no\n", PREFETCH)
            )
            with dry_run, rejecting:
                for case in section_cases:
                    failures += check_case(Suite(dns, dry_run, rejecting), case)
            assert_quiet(dry_run, rejecting)
    report(cases, failures, " with prefetch", capsys)


def check_case(suite: Suite, case: Case) -> list[str]:
    header, _ = run_case(suite.dry_run, case)
    got = header.split(None, 1)[0] if header else None
    if got not in case.results:
        return [f"{case.section} / {case.name}: got {got}, want {case.results}"]
    if case.explanation is not None:
        problem = check_explanation(suite, case)
        if problem:
            return [f"{case.section} / {case.name}: {problem}"]
    return []


def report(
    cases: list[Case], failures: list[str], how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    passed = len(cases) - len(failures)
    with capsys.disabled():
        print(f"\nRFC 7208 conformance through the milter{how}: {passed}/{len(cases)} passed")
    assert len(cases) == 203
    assert failures == []


def check_explanation(suite: Suite, case: Case) -> str | None:
    """The reject reply carries the case's explanation (sanitised)."""
    _, reply = run_case(suite.rejecting, case)
    if reply is None or not reply.startswith("550 "):
        return f"expected a 550 reject carrying the explanation, got {reply!r}"
    sender = case.mailfrom or f"postmaster@{case.helo}"
    stock = f"550 5.7.23 SPF MAIL FROM check for {reply_text(sender)}: fail"
    if case.explanation == "DEFAULT":
        # No exp= text: the reply says what happened and nothing more.
        return None if reply == stock else f"expected {stock!r}, got {reply!r}"
    expected = f"{stock}: {reply_text(case.explanation or '')}"
    return None if reply == expected else f"expected {expected!r}, got {reply!r}"
