"""End to end with Sendmail: INPUT_MAIL_FILTER -> real spfmilter -> real DNS.

Sendmail has no XCLIENT, so clients are posed by connecting from distinct
loopback source addresses; the daemon skips only 127.0.0.1.  Accepted
messages stay in Sendmail's queue, where the inserted header is read back.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.daemon import Daemon, config_text
from testkit.dnsserver import DNSTestServer
from tests.support.sendmail import PrivateSendmail, QueuedMessage, SendResult, ensure_sendmail
from tests.support.stack import DNS_TROUBLE

GOOD = "127.0.0.10"
STRANGER = "127.0.0.11"
CACHE = Path(tempfile.gettempdir()) / "spfmilter-test-sendmail"


@dataclass
class Stack:
    daemon: Daemon
    sendmail: PrivateSendmail


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer) -> Iterator[Stack]:
    install = ensure_sendmail(CACHE)
    work = tmp_path_factory.mktemp("sendmail")
    config = config_text(dns_server, {"skip": {"networks": "127.0.0.1/32"}})
    with Daemon(work / "milter", config) as daemon:
        with PrivateSendmail(install, work / "sendmail", daemon.socket) as sendmail:
            yield Stack(daemon, sendmail)
        assert daemon.unexpected(DNS_TROUBLE) == [], daemon.log_text()


def send(stack: Stack, ip: str, helo: str, sender: str) -> tuple[SendResult, QueuedMessage | None]:
    marker = f"<{uuid.uuid4()}@test.example>"
    message = f"Message-ID: {marker}\r\nSubject: sendmail test\r\n\r\nhi\r\n".encode()
    result = stack.sendmail.send(ip, helo, sender, ["user@example.net"], message)
    queued = [
        m
        for m in stack.sendmail.queued_messages()
        if marker in " ".join(m.header_values("Message-ID"))
    ]
    return result, (queued[0] if queued else None)


def spf_header(queued: QueuedMessage | None) -> str:
    assert queued is not None
    (value,) = queued.header_values("Received-SPF")
    return " ".join(value.split())


def test_pass_is_queued_with_received_spf(stack: Stack) -> None:
    result, queued = send(stack, GOOD, "sm-helo.example.org", "alice@sm-pass.example.org")
    assert result.data is not None and result.data.code == 250
    header = spf_header(queued)
    assert header.startswith(f"pass (sm-pass.example.org: {GOOD} is authorized to use")
    assert header.endswith(
        'receiver=mx.test.example; identity=mailfrom; envelope-from="alice@sm-pass.example.org"; '
        f"helo=sm-helo.example.org; client-ip={GOOD}"
    )


def test_fail_is_rejected(stack: Stack) -> None:
    result, queued = send(stack, STRANGER, "sm-other.example.org", "alice@sm-pass.example.org")
    assert result.rcpts and result.rcpts[0].code == 550
    # Sendmail puts the recipient between the status code and our text.
    text = result.rcpts[0].text
    assert text.startswith("5.7.23 ")
    assert text.endswith("SPF MAIL FROM check for alice@sm-pass.example.org: fail")
    assert queued is None


def test_softfail_is_accepted(stack: Stack) -> None:
    result, queued = send(stack, STRANGER, "sm-other.example.org", "bob@sm-softfail.example.org")
    assert result.data is not None and result.data.code == 250
    assert spf_header(queued).startswith("softfail ")


def test_temperror_is_deferred(stack: Stack) -> None:
    result, _ = send(stack, GOOD, "sm-helo.example.org", "carol@spf-timeout.example.org")
    assert result.rcpts and result.rcpts[0].code == 451
    assert "4.7.24" in result.rcpts[0].text


def test_null_sender_uses_the_helo_identity(stack: Stack) -> None:
    result, queued = send(stack, GOOD, "sm-helo.example.org", "")
    assert result.data is not None and result.data.code == 250
    header = spf_header(queued)
    assert header.startswith("pass (sm-helo.example.org:")
    assert "identity=helo;" in header and "envelope-from" not in header


def test_skipped_client_gets_no_header(stack: Stack) -> None:
    result, queued = send(
        stack, "127.0.0.1", "sm-other.example.org", "x@spf-fail-noexp.example.org"
    )
    assert result.data is not None and result.data.code == 250
    assert queued is not None and queued.header_values("Received-SPF") == []
