"""The rescue of forwarded mail, end to end: real Postfix instances, the real
daemon, a real DNS server on loopback holding the SPF records and the DKIM
and ARC keys.

The author's domain rescue.example.org allows 198.51.100.0/24 only.  Its
mail reaches the Postfix in front of spfmilter through a forwarder (a second
private Postfix whose alias keeps the MAIL FROM, relaying from 127.0.0.2),
or through a mailing list that rewrites the Subject and ARC-seals the
message (dkimpy, as the list's software would), or straight from a posed
client: every way, SPF says fail, and the signatures decide.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spfmilter.config.loading import PUBLIC_SUFFIX_LIST
from spfmilter.report import main as report_main
from testkit import dkimkit
from testkit.daemon import Sections, config_text
from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file
from testkit.milterclient import MilterClient
from tests.support.postfix import PrivatePostfix
from tests.support.stack import RCPT, Stack, postfix_stack

pytestmark = pytest.mark.skipif(
    not Path(PUBLIC_SUFFIX_LIST).exists(), reason="needs the publicsuffix package"
)

AUTHOR = "rescue.example.org"
SENDER = f"alice@{AUTHOR}"
LIST = "lists.test"
ROGUE_LIST = "rogue-list.test"
UNRELATED = "unrelated.test"
LIST_IP = "203.0.113.20"
HELO = "helo-none.example.org"
FORWARDER_IP = "127.0.0.2"
SMTP_REFUSAL = "5.7.23 SPF MAIL FROM check for alice@rescue.example.org: fail"

RESCUE: Sections = {
    # Loopback is checked here: the forwarder relays from 127.0.0.2.
    "skip": {"networks": "::1/128"},
    "headers": {"type": "both"},
    "policy": {"exempt_recipients": "postmaster@"},
    "rescue": {"dkim": "yes", "arc_trusted_sealers": LIST},
}


@dataclass
class Keys:
    """The signers of the test zone: the author (a key made by OpenDKIM's
    opendkim-genkey), an unrelated domain, a trusted and a rogue list."""

    author: dkimkit.KeyPair
    unrelated: dkimkit.KeyPair
    lists: dkimkit.KeyPair


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    return Keys(
        dkimkit.opendkim_key(directory, AUTHOR, "mail"),
        dkimkit.ed25519_key(),
        dkimkit.rsa_key(1024, directory),
    )


@pytest.fixture(scope="module")
def dns(keys: Keys) -> Iterator[DNSTestServer]:
    zone = load_zone_file(ZONES / "core.yaml")
    zone.update(
        {
            AUTHOR: [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}],
            f"mail._domainkey.{AUTHOR}": [{"TXT": keys.author.record.decode()}],
            f"s._domainkey.{UNRELATED}": [{"TXT": keys.unrelated.record.decode()}],
            f"arc._domainkey.{LIST}": [{"TXT": keys.lists.record.decode()}],
            f"arc._domainkey.{ROGUE_LIST}": [{"TXT": keys.lists.record.decode()}],
            # 60,000 bytes: the most one TCP answer holds, with room to spare.
            f"big._domainkey.{AUTHOR}": [{"TXT": "v=DKIM1; k=rsa; n=" + "x" * 60_000 + "; p=AAAA"}],
        }
    )
    with DNSTestServer(zone, ttl=60) as server:
        yield server


@pytest.fixture(scope="module")
def stack(dns: DNSTestServer) -> Iterator[Stack]:
    with postfix_stack(config_text(dns, RESCUE)) as stack:
        yield stack


def message(subject: str = "Lunch", body: bytes = b"Shall we meet at noon?\r\n") -> bytes:
    marker = f"<{uuid.uuid4()}@{AUTHOR}>"
    return (
        f"From: Alice <{SENDER}>\r\n"
        "To: bob@example.net\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: {marker}\r\n"
        "\r\n"
    ).encode() + body


def signed(keys: Keys, text: bytes | None = None) -> bytes:
    return dkimkit.sign(text or message(), keys.author, AUTHOR, "mail")


def marker_of(raw: bytes) -> str:
    start = raw.index(b"Message-ID: ") + len(b"Message-ID: ")
    return raw[start : raw.index(b"\r\n", start)].decode()


@dataclass
class Replies:
    """Postfix's replies to one transaction, and what it delivered."""

    rcpts: list[tuple[int, str]]
    data: tuple[int, str] | None
    delivered: bytes = b""


def deliver(
    stack: Stack,
    raw: bytes,
    ip: str = LIST_IP,
    rcpts: tuple[str, ...] = (RCPT,),
    sender: str = SENDER,
) -> Replies:
    """`raw` sent to the front Postfix by a client posing as `ip`."""
    smtp = stack.postfix.connect(ip, HELO)
    try:
        code, text = smtp.mail(sender)
        assert code == 250, text
        answers = [smtp.rcpt(rcpt) for rcpt in rcpts]
        replies = Replies([(code, text.decode()) for code, text in answers], None)
        if not any(code == 250 for code, _ in replies.rcpts):
            smtp.rset()
            return replies
        code, text = smtp.data(raw)
        replies.data = (code, text.decode())
    finally:
        smtp.quit()
    if replies.data[0] == 250:
        replies.delivered = stack.postfix.raw_message(marker_of(raw))
    return replies


def header(raw: bytes, name: str) -> str:
    """The first field `name` of a delivered message, unfolded."""
    head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n").decode()
    for field in head.replace("\n\t", " ").replace("\n ", " ").split("\n"):
        if field.lower().startswith(name.lower() + ":"):
            return " ".join(field.split(":", 1)[1].split())
    raise AssertionError(f"no {name} in {raw!r}")


def verdict(stack: Stack, needle: str) -> str:
    """The one verdict line that mentions `needle` (a queue id, a sender)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in stack.daemon.verdicts() if needle in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (line,) = lines
    return line


def queue_id(raw: bytes) -> str:
    """The queue id the front Postfix gave a delivered message (its own
    Received field, the first one)."""
    received = header(raw, "Received")
    return received.split(" id ", 1)[1].split()[0].rstrip(";")


# --- rescued ------------------------------------------------------------------


def through_forwarder(stack: Stack, raw: bytes) -> bytes:
    """`raw` sent to an alias at a forwarder (a second Postfix), which
    relays it to the front Postfix from its own loopback address with the
    MAIL FROM unchanged; the message as delivered."""
    work = Path(tempfile.mkdtemp(prefix="spfmilter-forwarder-"))
    work.chmod(0o755)
    forwarder = PrivatePostfix(
        work,
        None,
        myhostname="forwarder.test",
        extra={
            "virtual_mailbox_domains": "mailbox.forwarder.test",
            "virtual_alias_domains": "forward.test",
            "virtual_alias_maps": f"inline:{{ alias@forward.test={RCPT} }}",
            "relayhost": f"[127.0.0.1]:{stack.postfix.smtp_port}",
            "default_transport": "smtp",
            "smtp_bind_address": FORWARDER_IP,
        },
    )
    try:
        forwarder.start()
        with smtplib.SMTP("127.0.0.1", forwarder.smtp_port, timeout=30) as smtp:
            smtp.ehlo("author.example")
            smtp.sendmail(SENDER, ["alias@forward.test"], raw)
        delivered = stack.postfix.raw_message(marker_of(raw), timeout=30)
    finally:
        forwarder.stop()
    shutil.rmtree(work)
    return delivered


def test_a_forwarded_message_signed_by_its_author_is_rescued(
    stack: Stack, keys: Keys, dns: DNSTestServer
) -> None:
    delivered = through_forwarder(stack, signed(keys))
    assert header(delivered, "Received-SPF").startswith(f"fail ({AUTHOR}: {FORWARDER_IP} ")
    results = header(delivered, "Authentication-Results")
    assert results.startswith("mx.test.example; spf=fail ")
    assert f"dkim=pass header.d={AUTHOR} header.s=mail header.b=" in results
    line = verdict(stack, queue_id(delivered))
    assert f"client_ip={FORWARDER_IP} client_name=" in line
    assert "result=fail" in line and "action=accept" in line
    assert f"rescue=dkim rescue_domain={AUTHOR}" in line
    assert any(query[0] == f"mail._domainkey.{AUTHOR}" for query in dns.queries)


def test_header_fields_reach_the_rescue_byte_for_byte(stack: Stack, keys: Keys) -> None:
    """Simple canonicalization (RFC 6376 section 3.4.1) signs the header
    fields exactly as written, folding and spacing included: the daemon
    rebuilds them from what Postfix passes (SMFIP_HDR_LEADSPC)."""
    text = message().replace(
        b"Subject: Lunch\r\n",
        b"Subject:   Lunch,\r\n\tthen a walk\r\n  by the river\r\nX-Empty:\r\n",
    )
    raw = dkimkit.sign(
        text,
        keys.author,
        AUTHOR,
        "mail",
        canonicalize=(b"simple", b"simple"),
        include_headers=[b"from", b"to", b"subject", b"x-empty", b"message-id"],
    )
    delivered = through_forwarder(stack, raw)
    line = verdict(stack, queue_id(delivered))
    assert f"rescue=dkim rescue_domain={AUTHOR}" in line


def list_copy(keys: Keys, sealer: str) -> bytes:
    """The author's signed message as a list passes it on: the Subject
    rewritten (the author's signature no longer verifies), the list's
    Authentication-Results and an ARC set of `sealer` on top."""
    original = signed(keys)
    rewritten = original.replace(b"Subject: Lunch", b"Subject: [friends] Lunch")
    results = f"spf=pass smtp.mailfrom={AUTHOR}; dkim=pass header.d={AUTHOR}"
    return dkimkit.seal(rewritten, keys.lists, sealer, results)


def test_a_list_message_sealed_by_a_trusted_sealer_is_rescued(stack: Stack, keys: Keys) -> None:
    raw = list_copy(keys, LIST)
    replies = deliver(stack, raw)
    assert replies.data == (250, replies.data[1] if replies.data else "")
    results = header(replies.delivered, "Authentication-Results")
    assert "dkim=fail" in results
    assert f"arc=pass (sealed by {LIST}) header.oldest-pass=0 smtp.remote-ip={LIST_IP}" in results
    assert header(replies.delivered, "Received-SPF").startswith("fail ")
    line = verdict(stack, queue_id(replies.delivered))
    assert f"rescue=arc rescue_domain={LIST}" in line


# --- refused ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        # With ARC on too, a message that has neither says so of the chain.
        ("unsigned", "no_chain"),
        ("unaligned", "unaligned"),
        ("modified", "body_hash"),
        # The author's signature, broken by the list, is the aligned one.
        ("untrusted sealer", "bad_signature"),
    ],
)
def test_forged_messages_are_refused_at_end_of_data(
    stack: Stack, keys: Keys, kind: str, reason: str
) -> None:
    if kind == "unsigned":
        raw = message()
    elif kind == "unaligned":
        raw = dkimkit.sign(message(), keys.unrelated, UNRELATED, "s")
    elif kind == "modified":
        raw = signed(keys).replace(b"noon", b"one")
    else:
        raw = list_copy(keys, ROGUE_LIST)
    replies = deliver(stack, raw, ip="203.0.113.5")
    assert replies.rcpts == [(250, "2.1.5 Ok")]
    assert replies.data is not None and replies.data[0] == 550
    assert replies.data[1].startswith(SMTP_REFUSAL)
    line = verdict(stack, f"conn={last_conn(stack)} ")
    assert "action=reject" in line and "rescue=none rescue_reason=" in line
    assert f"rescue_reason={reason}" in line


def last_conn(stack: Stack) -> str:
    return stack.daemon.verdicts()[-1].split(" conn=", 1)[1].split()[0]


# --- recipients of one kind ---------------------------------------------------


def test_exempt_recipients_and_the_others_go_in_separate_transactions(stack: Stack) -> None:
    raw = message()
    replies = deliver(stack, raw, rcpts=("postmaster@example.net", RCPT))
    assert replies.rcpts[0] == (250, "2.1.5 Ok")
    assert replies.rcpts[1][0] == 452 and replies.rcpts[1][1].startswith(
        "4.5.3 Too many recipients"
    )
    # The exempt recipient's message is accepted with its header: nothing
    # at end of data refuses it.
    assert replies.data is not None and replies.data[0] == 250
    assert header(replies.delivered, "Received-SPF").startswith("fail ")
    # The client sends the other recipient again, in a new transaction.
    again = deliver(stack, message(), rcpts=(RCPT, "postmaster@example.net"))
    assert again.rcpts[0] == (250, "2.1.5 Ok") and again.rcpts[1][0] == 452
    assert again.data is not None and again.data[0] == 550


# --- hostile messages, straight to the daemon ----------------------------------


def milter_transaction(stack: Stack, raw: bytes) -> tuple[str, float]:
    """`raw` from a posed client through the milter protocol (no MTA, so
    no MTA limits on the header); the end-of-message reply and the time."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[tuple[str, str]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + line.decode())
        else:
            name, _, value = line.decode().partition(":")
            fields.append((name, value))
    started = time.monotonic()
    with MilterClient(stack.daemon.socket, timeout=60) as client:
        client.negotiate()
        client.connect("hostile.example", "203.0.113.66")
        client.helo(HELO)
        result = client.transaction(f"<{SENDER}>", [f"<{RCPT}>"], fields, body)
    response = result.final
    return response.text or response.kind, time.monotonic() - started


def test_hostile_messages_get_a_clear_result_without_a_stall(stack: Stack, keys: Keys) -> None:
    one = signed(keys)
    signature = one[: one.index(b"From: ")]
    for raw, expected in (
        # Thousands of signatures: eight are examined.
        (signature * 3000 + message(), "550"),
        # A header of megabytes.
        (b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 900) for i in range(3000)) + one, "550"),
        # A key record of 60 KB (over TCP from the test DNS server).
        (dkimkit.sign(message(), keys.author, AUTHOR, "big"), "550"),
    ):
        reply, seconds = milter_transaction(stack, raw)
        assert reply.startswith(expected), reply
        assert seconds < 10


def test_fifty_arc_sets_are_checked_in_time(stack: Stack, keys: Keys) -> None:
    raw = signed(keys).replace(b"Subject: Lunch", b"Subject: [friends] Lunch")
    for _ in range(50):
        raw = dkimkit.seal(raw, keys.lists, LIST, f"spf=pass smtp.mailfrom={AUTHOR}")
    reply, seconds = milter_transaction(stack, raw)
    assert reply == "continue", reply
    assert seconds < 10
    line = stack.daemon.verdicts()[-1]
    assert f"rescue=arc rescue_domain={LIST}" in line


# --- dry run, and the default -------------------------------------------------


def test_dry_run_accepts_and_logs_what_would_have_happened(dns: DNSTestServer) -> None:
    dry = {**RESCUE, "policy": {"dry_run": "yes"}}
    with postfix_stack(config_text(dns, dry)) as stack:
        replies = deliver(stack, message())
        assert replies.data is not None and replies.data[0] == 250
        assert header(replies.delivered, "Received-SPF").startswith("fail ")
        line = verdict(stack, queue_id(replies.delivered))
        assert "action=reject" in line and "dry_run=yes" in line
        assert "rescue=none rescue_reason=no_chain" in line


def test_without_rescue_a_fail_is_refused_at_rcpt(dns: DNSTestServer, keys: Keys) -> None:
    with postfix_stack(config_text(dns, {"skip": {"networks": "::1/128"}})) as stack:
        replies = deliver(stack, signed(keys))
        assert replies.rcpts[0][0] == 550 and replies.rcpts[0][1].startswith(SMTP_REFUSAL)
        assert replies.data is None
        assert "rescue=" not in stack.daemon.verdicts()[-1]


def test_the_report_reads_the_rescues_the_daemon_logged(
    stack: Stack, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """`spfmilter report` on this daemon's own log: the rescues by DKIM and
    by ARC it wrote are counted under their method and domain, and a refusal
    under its reason."""
    through_forwarder(stack, signed(keys))
    deliver(stack, list_copy(keys, LIST))
    deliver(stack, message())
    for needle in ("rescue=dkim", "rescue=arc", "rescue=none"):
        verdict_lines = [line for line in stack.daemon.verdicts() if needle in line]
        assert verdict_lines, needle
    assert report_main(["--json", str(stack.daemon.log_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    rescuers = {(r["method"], r["domain"]): r["count"] for r in data["rescuers"]}
    assert rescuers[("dkim", AUTHOR)] >= 1
    assert rescuers[("arc", LIST)] >= 1
    misses = {(m["outcome"], m["reason"]) for m in data["misses"]}
    assert ("none", "no_chain") in misses
