"""End to end: real Postfix (XCLIENT) -> real spfmilter -> real DNS on loopback.

Each test poses as one SMTP client through XCLIENT, checks Postfix's reply
at each stage, and for accepted mail the delivered message's headers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.daemon import config_text
from testkit.dnsserver import DNSTestServer
from tests.support.stack import (
    PASS_IP,
    RCPT,
    Stack,
    postfix_stack,
    send,
    transaction,
)


@pytest.fixture(scope="module")
def stack(dns_server: DNSTestServer) -> Iterator[Stack]:
    with postfix_stack(config_text(dns_server)) as stack:
        yield stack


MAIL_FROM_CASES = [
    ("spf-pass.example.org", "pass", "mechanism 'ip4:198.51.100.0/24' matched"),
    ("spf-softfail.example.org", "softfail", "however domain is not currently prepared"),
    ("spf-neutral.example.org", "neutral", "Domain does not state whether sender"),
    ("spf-none.example.org", "none", "No applicable sender policy available"),
    ("spf-permerror.example.org", "permerror", "Unknown mechanism found: moo"),
    ("spf-include.example.org", "pass", "mechanism 'include:spf-pass.example.org' matched"),
    ("spf-redirect.example.org", "pass", "mechanism 'ip4:198.51.100.0/24' matched"),
]


@pytest.mark.parametrize(("domain", "result", "comment"), MAIL_FROM_CASES)
def test_accepted_results_get_one_received_spf(
    stack: Stack, domain: str, result: str, comment: str
) -> None:
    sent = send(stack, PASS_IP, "helo-pass.example.org", f"alice@{domain}")
    assert sent.mail[0] == 250 and sent.rcpts[0][0] == 250 and sent.data
    assert sent.data[0] == 250
    (header,) = sent.received_spf()
    assert header.startswith(f"{result} ({domain}: ")
    assert comment in header
    assert header.endswith(
        f'receiver=mx.test.example; identity=mailfrom; envelope-from="alice@{domain}"; '
        f"helo=helo-pass.example.org; client-ip={PASS_IP}"
    )


def test_received_spf_sits_above_postfixs_own_received(stack: Stack) -> None:
    sent = send(stack, PASS_IP, "helo-pass.example.org", "alice@spf-pass.example.org")
    names = [line.split(b":", 1)[0] for line in sent.raw.split(b"\n") if line[:1] not in b" \t"]
    assert names.index(b"Received-SPF") < names.index(b"Received")


@pytest.mark.parametrize(
    ("domain", "ip"),
    [("spf-a.example.org", "198.51.100.20"), ("spf-mx.example.org", "198.51.100.30")],
)
def test_a_and_mx_mechanisms(stack: Stack, domain: str, ip: str) -> None:
    sent = send(stack, ip, "helo-none.example.org", f"bob@{domain}")
    (header,) = sent.received_spf()
    assert header.startswith("pass ")
    sent = send(stack, PASS_IP, "helo-none.example.org", f"bob@{domain}")
    assert sent.rcpts[0][0] == 550


def test_mail_from_fail_is_rejected_at_rcpt_with_explanation(stack: Stack) -> None:
    sent = send(stack, PASS_IP, "helo-pass.example.org", "mallory@spf-fail.example.org")
    assert sent.mail[0] == 250  # the verdict waits for RCPT, like a policy server
    code, text = sent.rcpts[0]
    assert code == 550
    assert text.startswith("5.7.23 SPF MAIL FROM check for mallory@spf-fail.example.org: fail")
    # The domain's exp= text, macros expanded; '%' arrives as one '%'.
    assert f"{PASS_IP} is not one of our servers, see https://example.org/spf?l=%20" in text


@pytest.mark.parametrize("domain", ["spf-timeout.example.org", "spf-servfail.example.org"])
def test_mail_from_temperror_is_deferred(stack: Stack, domain: str) -> None:
    sent = send(stack, PASS_IP, "helo-pass.example.org", f"carol@{domain}")
    code, text = sent.rcpts[0]
    assert code == 451
    assert text.startswith(f"4.7.24 SPF MAIL FROM check for carol@{domain}: temperror")


def test_helo_fail_rejects_before_mail_from(stack: Stack) -> None:
    sent = send(stack, PASS_IP, "helo-fail.example.org", "alice@spf-pass.example.org")
    code, text = sent.rcpts[0]
    assert code == 550
    assert text.startswith("5.7.23 SPF HELO check for postmaster@helo-fail.example.org: fail")


def test_helo_temperror_defers(stack: Stack) -> None:
    sent = send(stack, PASS_IP, "helo-timeout.example.org", "alice@spf-pass.example.org")
    code, text = sent.rcpts[0]
    assert code == 451
    assert text.startswith("4.7.24 SPF HELO check for postmaster@helo-timeout.example.org")


def test_helo_pass_does_not_hide_mail_from_none(stack: Stack) -> None:
    # CVE-2019-20790: a HELO pass must never be reported as the sender's SPF.
    sent = send(stack, PASS_IP, "helo-pass.example.org", "alice@spf-none.example.org")
    (header,) = sent.received_spf()
    assert header.startswith("none ") and "identity=mailfrom" in header


def test_null_sender_reports_the_helo_identity(stack: Stack) -> None:
    sent = send(stack, PASS_IP, "helo-pass.example.org", "")
    (header,) = sent.received_spf()
    assert header.startswith(
        "pass (helo-pass.example.org: 198.51.100.7 is authorized to use "
        "'postmaster@helo-pass.example.org' in 'helo' identity"
    )
    assert "identity=helo; helo=helo-pass.example.org;" in header
    assert "envelope-from" not in header


def test_null_sender_with_failing_helo_is_rejected(stack: Stack) -> None:
    sent = send(stack, PASS_IP, "helo-fail.example.org", "")
    assert sent.rcpts[0][0] == 550


def test_loopback_client_is_skipped(stack: Stack) -> None:
    sent = send(stack, "127.0.0.1", "helo-fail.example.org", "mallory@spf-fail.example.org")
    assert sent.rcpts[0][0] == 250
    assert sent.received_spf() == []
    assert "SPF skipped - localhost is always allowed" in stack.daemon.log_text()


def test_ipv6_client(stack: Stack) -> None:
    sent = send(stack, "2001:db8:1::25", "helo-pass.example.org", "alice@spf-pass.example.org")
    (header,) = sent.received_spf()
    assert header.startswith("pass ")
    assert 'client-ip="2001:db8:1::25"' in header
    sent = send(stack, "2001:db8:2::25", "helo-none.example.org", "alice@spf-pass.example.org")
    assert sent.rcpts[0][0] == 550


def test_ipv4_mapped_ipv6_client_is_evaluated_as_ipv4(stack: Stack) -> None:
    sent = send(stack, "::ffff:198.51.100.7", "helo-none.example.org", "alice@spf-pass.example.org")
    (header,) = sent.received_spf()
    assert header.startswith("pass ") and "client-ip=198.51.100.7" in header


def test_three_recipients_one_header(stack: Stack) -> None:
    rcpts = ["a@example.net", "b@example.net", "c@example.net"]
    sent = send(stack, PASS_IP, "helo-pass.example.org", "alice@spf-pass.example.org", rcpts)
    assert [code for code, _ in sent.rcpts] == [250, 250, 250]
    assert len(sent.received_spf()) == 1


def test_two_messages_on_one_connection(stack: Stack) -> None:
    smtp = stack.postfix.connect(PASS_IP, "helo-pass.example.org")
    try:
        first = transaction(smtp, stack.postfix, "alice@spf-fail.example.org", [RCPT])
        second = transaction(smtp, stack.postfix, "alice@spf-softfail.example.org", [RCPT])
        third = transaction(smtp, stack.postfix, "alice@spf-pass.example.org", [RCPT])
    finally:
        smtp.quit()
    assert first.rcpts[0][0] == 550
    assert second.received_spf()[0].startswith("softfail ")
    assert third.received_spf()[0].startswith("pass ")


def test_one_verdict_line_per_transaction(stack: Stack) -> None:
    before = len(stack.daemon.verdicts())
    send(
        stack,
        PASS_IP,
        "helo-pass.example.org",
        "dave@spf-neutral.example.org",
        ["a@example.net", "b@example.net"],
    )
    lines = stack.daemon.verdicts()[before:]
    assert len(lines) == 1
    for key in (
        "client_ip=198.51.100.7",
        "helo=helo-pass.example.org",
        "sender=dave@spf-neutral.example.org",
        "identity=mailfrom",
        "result=neutral",
        "action=accept",
        "lookup_ms=",
    ):
        assert key in lines[0]
