"""The openspf RFC 7208 test suite, run end to end through the real daemon.

Every case is one transaction over the milter protocol (client IP = host,
HELO = helo, MAIL FROM = mailfrom) against the daemon on a real socket,
which resolves through a DNS server on 127.0.0.1 serving that section's
zonedata.  The result is read back from the Received-SPF header the daemon
inserts.  Cases with an explanation are run again against a daemon that
rejects, and the reject reply must carry that explanation.
"""

from __future__ import annotations

import os
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


def settings(dns: DNSTestServer, policy: str) -> str:
    # No cache: each section's zonedata differs.  No skip networks: the
    # suite's hosts are only values in the milter protocol.  Short DNS
    # times: the TIMEOUT names must end in temperror quickly.
    return (
        f"[dns]\nnameservers = {dns.nameserver}\ntimeout = 0.4\nlookup_time = 2\n"
        f"cache_size = 0\n[skip]\nnetworks =\n[policy]\n{policy}"
    )


@dataclass
class Suite:
    dns: DNSTestServer
    dry_run: Daemon
    rejecting: Daemon


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    if not SUITE.exists():
        # .ci/run sets CI: there, the suite runs or fails.
        if os.environ.get("CI"):
            pytest.fail(f"conformance suite missing in CI: {SUITE}")
        pytest.skip(
            f"conformance suite not found at {SUITE} (a clone without ../shared); "
            "with CI set, as .ci/run sets it, this fails"
        )
    work = tmp_path_factory.mktemp("conformance")
    with DNSTestServer({}, ttl=0) as dns:
        # helo_check = no for the explanation runs: the reject must come
        # from the MAIL FROM identity the case is about.
        dry_run = Daemon(work / "dry", settings(dns, "dry_run = yes\n"))
        rejecting = Daemon(work / "reject", settings(dns, "helo_check = no\n"))
        with dry_run, rejecting:
            yield Suite(dns, dry_run, rejecting)
        for daemon in (dry_run, rejecting):
            # Unmatched mechanisms and bad records are the suite's subject;
            # the daemon must not have logged anything worse than warnings.
            assert [u for u in daemon.unexpected() if not u.startswith("WARNING")] == []


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
    cases = load_cases()
    failures = []
    current_section = None
    for case in cases:
        if case.section != current_section:
            # The suite's drivers serve each SPF (type 99) record as TXT
            # too (see the suite's header); the server does so only where a
            # name has no TXT entry of its own.
            suite.dns.set_zone(case.zone, spf_as_txt=True)
            current_section = case.section
        header, _ = run_case(suite.dry_run, case)
        got = header.split(None, 1)[0] if header else None
        if got not in case.results:
            failures.append(f"{case.section} / {case.name}: got {got}, want {case.results}")
            continue
        if case.explanation is not None:
            problem = check_explanation(suite, case)
            if problem:
                failures.append(f"{case.section} / {case.name}: {problem}")
    passed = len(cases) - len(failures)
    with capsys.disabled():
        print(f"\nRFC 7208 conformance through the milter: {passed}/{len(cases)} passed")
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
