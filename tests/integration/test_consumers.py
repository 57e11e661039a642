"""spfmilter's headers as the real consumers read them: OpenDMARC and SpamAssassin.

One stack for the module: a DNS server on port 53 of a loopback address of
its own (the test zone plus DMARC records), the real daemon, OpenDMARC 1.4
as the second milter of a private Postfix (``smtpd_milters = spfmilter,
opendmarc``), and Debian's SpamAssassin 4.0 run on each delivered message.
Each test reloads the daemon (SIGUSR1) with one header type, sends one message
posing as a client our HELO name authorizes, and checks what both consumers
concluded: OpenDMARC's own Authentication-Results and the SPF result it
recorded for its aggregate reports, SpamAssassin's SPF rules and the header
each result came from.

In every case the HELO passes.  Beside a MAIL FROM fail or none
(CVE-2019-20790) a consumer must conclude the MAIL FROM result and never
credit the HELO pass to the sender's domain; for the null sender the HELO
result is the one result, and it must reach the consumers as the HELO's.
A client's Authentication-Results that claims our authserv-id, however
spelled, reaches neither OpenDMARC nor SpamAssassin's AuthRes plugin (which
trusts that id too).
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from testkit import dkimkit
from testkit.daemon import Daemon, config_text, free_port
from testkit.dnsserver import ZONES, DNSTestServer, ZoneData, load_zone_file
from tests.support.consumers import (
    AUTHRES_SPF_PASS,
    DmarcRecord,
    DmarcVerdict,
    PrivateOpenDMARC,
    SpamAssassin,
    SpamReport,
    start_port53_dns,
)
from tests.support.postfix import PrivatePostfix
from tests.support.stack import DNS_TROUBLE, PASS_IP, RCPT

AUTHSERV_ID = "mx.test.example"  # spfmilter's, trusted by OpenDMARC
OPENDMARC_ID = "opendmarc.test.example"
# Authorizes PASS_IP: the HELO passes in every case.
HELO = "helo-pass.example.org"
HEADER_TYPES = ("received-spf", "authentication-results", "both")
# Where SpamAssassin may take spfmilter's result from, per header type.
SA_SOURCES = {
    "received-spf": {"Received-SPF"},
    "authentication-results": {"Authentication-Results"},
    "both": {"Received-SPF", "Authentication-Results"},
}
REJECT = [{"TXT": "v=DMARC1; p=reject"}]
DMARC_RECORDS = {
    "_dmarc.spf-pass.example.org": REJECT,
    "_dmarc.spf-fail-noexp.example.org": REJECT,
    "_dmarc.spf-none.example.org": REJECT,
    "_dmarc.helo-pass.example.org": REJECT,
}
# A key of the domain whose SPF fails: its signature rescues a forwarded
# message when [rescue] dkim is on.
FAIL_DOMAIN = "spf-fail-noexp.example.org"
FAIL_KEY = dkimkit.ed25519_key()
DKIM_RECORDS = {f"sel._domainkey.{FAIL_DOMAIN}": [{"TXT": FAIL_KEY.record.decode()}]}


@dataclass
class Consumers:
    dns: DNSTestServer
    daemon: Daemon
    postfix: PrivatePostfix
    opendmarc: PrivateOpenDMARC
    spamassassin: SpamAssassin


@dataclass(frozen=True)
class Delivered:
    queue_id: str
    message: Message
    raw: bytes


@dataclass(frozen=True)
class Conclusions:
    """spfmilter's headers and what each consumer made of them."""

    received_spf: list[str]
    authentication_results: list[str]
    dmarc_input: list[str]  # every Authentication-Results field, unfolded
    dmarc: DmarcVerdict
    record: DmarcRecord
    spam: SpamReport

    @property
    def sa_results(self) -> list[tuple[str, str]]:
        """(identity, result) of each SPF result SpamAssassin took from a header."""
        return [(identity, result) for identity, _, result in self.spam.reused]


def spfmilter_config(dns: DNSTestServer, header_type: str, rescue: bool = False) -> str:
    # No MAIL FROM result rejects, unless a rescue is to accept the fail: a
    # fail must reach the consumers.
    sections: dict[str, dict[str, str]] = {
        "headers": {"type": header_type, "authserv_id": AUTHSERV_ID},
        "policy": {"mailfrom_reject": ""},
    }
    if rescue:
        sections["policy"] = {}
        sections["rescue"] = {"dkim": "yes"}
    return config_text(dns, sections)


@pytest.fixture(scope="module")
def consumers() -> Iterator[Consumers]:
    # Not pytest's tmp_path: Postfix's delivery agent must reach the Maildir.
    work = Path(tempfile.mkdtemp(prefix="spfmilter-consumers-"))
    work.chmod(0o755)
    with ExitStack() as cleanup:
        zone: ZoneData = {**load_zone_file(ZONES / "core.yaml"), **DMARC_RECORDS, **DKIM_RECORDS}
        dns = start_port53_dns(zone)
        cleanup.callback(dns.stop)
        opendmarc = PrivateOpenDMARC(
            work / "opendmarc",
            port=free_port(),
            nameserver=dns.host,
            authserv_id=OPENDMARC_ID,
            trusted_authserv_ids=[AUTHSERV_ID],
        )
        cleanup.enter_context(opendmarc)
        spamassassin = SpamAssassin(
            work / "spamassassin", nameserver=dns.host, authres_trusted=[AUTHSERV_ID]
        )
        spamassassin.prepare()
        # No header until a test reloads it with the header type it checks.
        daemon = cleanup.enter_context(Daemon(work / "milter", spfmilter_config(dns, "none")))
        milters = f"{daemon.postfix_socket}, {opendmarc.postfix_socket}"
        postfix = cleanup.enter_context(PrivatePostfix(work / "postfix", milters))
        yield Consumers(dns, daemon, postfix, opendmarc, spamassassin)
    assert daemon.unexpected(DNS_TROUBLE) == [], daemon.log_text()
    assert [w for w in postfix.warnings() if "milter" in w] == []
    assert opendmarc.unexpected() == [], opendmarc.log_text()
    shutil.rmtree(work)


def deliver(
    consumers: Consumers,
    sender: str,
    from_address: str,
    extra: str = "",
    sign: Callable[[bytes], bytes] | None = None,
) -> Delivered:
    """One message from PASS_IP/HELO with MAIL FROM `sender` and From:
    `from_address`; `extra` is header text put above the others; `sign`
    signs the message."""
    smtp = consumers.postfix.connect(PASS_IP, HELO)
    marker = f"<{uuid.uuid4()}@test.example>"
    text = (
        f"{extra}From: {from_address}\r\nTo: {RCPT}\r\nMessage-ID: {marker}\r\n"
        "Subject: consumers\r\n\r\nhi\r\n"
    ).encode()
    try:
        assert smtp.mail(sender)[0] == 250
        assert smtp.rcpt(RCPT)[0] == 250
        code, reply = smtp.data(sign(text) if sign else text)
    finally:
        smtp.quit()
    assert code == 250, reply
    match = re.search(rb"queued as (\w+)", reply)
    assert match is not None, reply
    raw = consumers.postfix.raw_message(marker)
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    return Delivered(match.group(1).decode(), message, raw)


def conclude(
    consumers: Consumers,
    header_type: str,
    sender: str,
    from_address: str,
    extra: str = "",
    *,
    rescue: bool = False,
    sign: Callable[[bytes], bytes] | None = None,
) -> Conclusions:
    """Reload spfmilter with `header_type` (and the DKIM rescue on, with
    `rescue`), deliver, ask both consumers."""
    config = spfmilter_config(consumers.dns, header_type, rescue)
    consumers.daemon.config_path.write_text(config)
    assert "configuration reloaded" in consumers.daemon.reload()
    delivered = deliver(consumers, sender, from_address, extra, sign)
    message = delivered.message
    # SpamAssassin must not look anything up: no query reaches the server
    # its namespace's resolver names while it runs.
    queries_before = len(consumers.dns.queries)
    spam = consumers.spamassassin.check(delivered.raw)
    assert consumers.dns.queries[queries_before:] == []
    return Conclusions(
        received_spf=[" ".join(v.split()) for v in message.get_all("Received-SPF") or []],
        authentication_results=[
            " ".join(v.split())
            for v in message.get_all("Authentication-Results") or []
            if v.strip().startswith(f"{AUTHSERV_ID};")
        ],
        dmarc_input=[" ".join(v.split()) for v in message.get_all("Authentication-Results") or []],
        dmarc=consumers.opendmarc.verdict(message),
        record=consumers.opendmarc.record(delivered.queue_id),
        spam=spam,
    )


def assert_one_header_of_type(seen: Conclusions, header_type: str) -> None:
    expected = {"received-spf": (1, 0), "authentication-results": (0, 1), "both": (1, 1)}
    assert (len(seen.received_spf), len(seen.authentication_results)) == expected[header_type]
    assert {source for _, source, _ in seen.spam.reused} <= SA_SOURCES[header_type]


@pytest.mark.parametrize("header_type", HEADER_TYPES)
def test_aligned_pass(consumers: Consumers, header_type: str) -> None:
    sender = "alice@spf-pass.example.org"
    seen = conclude(consumers, header_type, sender, sender)
    assert_one_header_of_type(seen, header_type)
    # OpenDMARC took the SPF pass from our header (it evaluates no SPF
    # itself here) and the From: domain's p=reject policy from DNS.
    assert (seen.dmarc.result, seen.dmarc.header_from) == ("pass", "spf-pass.example.org")
    assert (seen.record.spf, seen.record.align_spf) == ("pass", "pass")
    assert ("_dmarc.spf-pass.example.org", "TXT") in {q[:2] for q in consumers.dns.queries}
    assert seen.spam.spf_tests == {"SPF_PASS"}
    assert seen.sa_results == [("mfrom", "pass")]


@pytest.mark.parametrize("header_type", HEADER_TYPES)
def test_mail_from_fail_beside_a_helo_pass(consumers: Consumers, header_type: str) -> None:
    sender = "mallory@spf-fail-noexp.example.org"
    seen = conclude(consumers, header_type, sender, sender)
    assert_one_header_of_type(seen, header_type)
    assert (seen.dmarc.result, seen.dmarc.header_from) == ("fail", "spf-fail-noexp.example.org")
    # The SPF result OpenDMARC reports to the domain owner is the sender's
    # fail, not the HELO's pass.
    assert (seen.record.spf, seen.record.align_spf) == ("fail", "fail")
    assert seen.spam.spf_tests == {"SPF_FAIL"}
    assert seen.sa_results == [("mfrom", "fail")]


@pytest.mark.parametrize("header_type", HEADER_TYPES)
def test_helo_pass_is_not_the_senders_pass(consumers: Consumers, header_type: str) -> None:
    # CVE-2019-20790: the attacker's HELO passes, the victim's domain has no
    # SPF record at all; the sender's result is none.
    sender = "ceo@spf-none.example.org"
    seen = conclude(consumers, header_type, sender, sender)
    assert_one_header_of_type(seen, header_type)
    assert (seen.dmarc.result, seen.dmarc.header_from) == ("fail", "spf-none.example.org")
    assert (seen.record.spf, seen.record.align_spf) == ("none", "fail")
    assert seen.spam.spf_tests == {"SPF_NONE"}
    assert seen.sa_results == [("mfrom", "none")]


@pytest.mark.parametrize("header_type", HEADER_TYPES)
def test_null_sender_reports_the_helo(consumers: Consumers, header_type: str) -> None:
    # For <> the HELO result is the one result (RFC 7208 section 2.4), and it
    # reaches the consumers as the HELO's.  OpenDMARC gives no SPF credit
    # for <>, even to a From: in the HELO's own domain.
    seen = conclude(consumers, header_type, "", "postmaster@helo-pass.example.org")
    assert_one_header_of_type(seen, header_type)
    assert (seen.dmarc.result, seen.dmarc.header_from) == ("fail", "helo-pass.example.org")
    assert seen.record.align_spf == "fail"
    assert seen.spam.spf_tests == {"SPF_HELO_PASS"}
    assert seen.sa_results == [("helo", "pass")]


# A few of tests/integration/test_forged_ar.py's spellings, through Postfix:
# RFC 8601's, then OpenDMARC's tokenizer's (a ")" outside a comment is
# dropped, a token that starts with "(" however written is a comment), then
# SpamAssassin's (it counts a comment's parentheses without quoted-pairs).
FORGED_IDS = [
    "(fw) mx.test.example",
    "mx.test.example(fw)",
    '"mx.test.example"',
    "mx.test.example.",
    "MX.Test.Example",
    "mx . test . example",
    "mx.test.example)",
    "\\( mx.test.example",
    '"(" mx.test.example',
    "\\(abc(def)mx.test.example",
    "m)x.test.example",
    "mx.test.example (\\().x) ",
]


@pytest.mark.parametrize("forged_id", FORGED_IDS)
def test_forged_authentication_results_never_reach_opendmarc(
    consumers: Consumers, forged_id: str
) -> None:
    # The client brings an A-R claiming our authserv-id and an SPF pass for
    # a domain without SPF; spfmilter must delete it (RFC 8601 section 5)
    # whatever its spelling, so OpenDMARC records spfmilter's none.
    sender = "ceo@spf-none.example.org"
    forged = f"Authentication-Results: {forged_id}; spf=pass smtp.mailfrom=spf-none.example.org\r\n"
    seen = conclude(consumers, "authentication-results", sender, sender, forged)
    remaining = [v for v in seen.dmarc_input if "spf=pass" in v and "opendmarc" not in v.lower()]
    assert remaining == []
    assert (seen.record.spf, seen.record.align_spf) == ("none", "fail")
    assert seen.dmarc.result == "fail"
    # SpamAssassin's AuthRes plugin, trusting our id, took no pass either.
    assert AUTHRES_SPF_PASS not in seen.spam.tests


def test_a_rescued_fail_reaches_the_consumers_as_a_fail_and_a_dkim_pass(
    consumers: Consumers,
) -> None:
    # A forwarded message whose MAIL FROM domain fails SPF but signed it:
    # the rescue accepts it, and our one header says both results.  OpenDMARC
    # (trusting our id) finds the aligned DKIM pass there and concludes
    # pass; the SPF fail still goes into its report.  SpamAssassin takes the
    # fail as the MAIL FROM's.
    sender = f"user@{FAIL_DOMAIN}"

    def sign(text: bytes) -> bytes:
        return dkimkit.sign(text, FAIL_KEY, FAIL_DOMAIN, "sel")

    seen = conclude(consumers, "authentication-results", sender, sender, rescue=True, sign=sign)
    (ours,) = seen.authentication_results
    assert ours.startswith(f"{AUTHSERV_ID}; spf=fail (")
    assert f" smtp.mailfrom={FAIL_DOMAIN}; dkim=pass" in ours
    assert f"dkim=pass header.d={FAIL_DOMAIN} header.s=sel" in ours
    assert (seen.dmarc.result, seen.dmarc.header_from) == ("pass", FAIL_DOMAIN)
    assert (seen.record.spf, seen.record.align_spf) == ("fail", "fail")
    assert seen.record.fields["dkim"][-1].startswith(FAIL_DOMAIN)
    assert ("mfrom", "fail") in seen.sa_results
