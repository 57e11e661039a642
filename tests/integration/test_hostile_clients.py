"""Text from the client that is not UTF-8: HELO, MAIL FROM, macros, the connect name.

pymilter converts some callback arguments to str in its C module and, when
that fails, never calls the callback.  These tests send such bytes through
the real daemon (milter protocol) and through a real Postfix, and check that
each transaction is still evaluated normally: never tempfailed for the bytes
alone, and never accepted unchecked.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from testkit.daemon import Daemon, config_text
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import MilterClient, TransactionResult
from tests.conftest import MakeDaemon
from tests.support.stack import PASS_IP, RCPT, Stack, postfix_stack, transaction

NOT_UTF8 = (r"^WARNING spfmilter\.daemon: the MTA sent text that is not UTF-8",)
BAD = "\udcff\udcfe"  # the bytes ff fe, as the milter client sends them


def header(result: TransactionResult) -> str:
    assert result.eom is not None, result
    (value,) = [m.value for m in result.eom.modifications if m.name == "Received-SPF"]
    assert value is not None
    return " ".join(value.split())


def run(
    daemon: Daemon,
    helo: str,
    sender: str,
    *,
    hostname: str = "client.example",
    connect_macros: dict[str, str] | None = None,
    mail_macros: dict[str, str] | None = None,
) -> TransactionResult:
    with MilterClient(daemon.socket) as client:
        client.negotiate()
        client.macros("C", {"j": "mx.test.example", **(connect_macros or {})})
        client.connect(hostname, "198.51.100.7")
        client.helo(helo)
        macros = {"M": mail_macros} if mail_macros else None
        return client.transaction(f"<{sender}>", ["<user@example.net>"], macros=macros)


def test_8bit_helo_is_no_domain_and_mail_from_decides(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(allowed=NOT_UTF8)
    value = header(run(daemon, BAD, "a@spf-pass.example.org"))
    assert value.startswith("pass ") and "identity=mailfrom" in value
    assert "helo=" not in value
    assert "not UTF-8 (b'\\xff\\xfe')" in daemon.log_text()
    # Nothing else went wrong: the verdict names no HELO.
    (verdict,) = daemon.verdicts()
    assert 'helo="" ' in verdict and "result=pass" in verdict


def test_8bit_helo_with_a_failing_sender_is_rejected(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(allowed=NOT_UTF8)
    result = run(daemon, BAD, "a@spf-fail.example.org")
    assert result.final.code == "550", result


def test_8bit_mail_from_is_evaluated(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    value = header(run(daemon, "helo-pass.example.org", f"{BAD}@spf-pass.example.org"))
    assert value.startswith("pass ")
    # The header stays 7-bit (RFC 5322): the bytes are escaped.
    assert value.isascii() and "\\udcff" in value


def test_8bit_sasl_login_still_skips(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    result = run(
        daemon,
        "helo-pass.example.org",
        "a@spf-fail.example.org",
        mail_macros={"{auth_authen}": f"b{BAD}b"},
    )
    assert result.eom is not None and result.eom.modifications == []
    assert "SPF skipped - SASL authenticated as b\\udcff\\udcfeb" in daemon.log_text()


def test_undecodable_connect_uses_the_client_addr_macro(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(allowed=(*NOT_UTF8, r"connect information could not be read"))
    result = run(
        daemon,
        "helo-pass.example.org",
        "a@spf-pass.example.org",
        hostname=f"x{BAD}.example",
        connect_macros={"{client_addr}": "198.51.100.7"},
    )
    assert header(result).startswith("pass ")
    assert "client 198.51.100.7 from macro {client_addr}" in daemon.log_text()


def test_undecodable_connect_without_an_address_is_never_accepted_unchecked(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon(allowed=(*NOT_UTF8, r"connect information could not be read"))
    result = run(daemon, "helo-pass.example.org", "a@spf-fail.example.org", hostname=BAD)
    assert result.final.code == "451", result
    assert result.eom is None


# --- through Postfix --------------------------------------------------------


@pytest.fixture(scope="module")
def stack(dns_server: DNSTestServer) -> Iterator[Stack]:
    # With SMTPUTF8 on, Postfix refuses malformed UTF-8 itself ("bad UTF-8
    # syntax"); with it off (many installations) 8-bit text reaches milters.
    extra = {"smtputf8_enable": "no"}
    with postfix_stack(config_text(dns_server), extra=extra, allowed=NOT_UTF8) as stack:
        yield stack


def ehlo_8bit(stack: Stack, ip: str) -> smtplib.SMTP:
    """A session posing as `ip` whose EHLO argument is the bytes ff fe."""
    smtp = smtplib.SMTP("127.0.0.1", stack.postfix.smtp_port, timeout=60)
    smtp.ehlo("xclient.invalid")
    code, reply = smtp.docmd("XCLIENT", f"ADDR={ip} NAME=[UNAVAILABLE]")
    assert code == 220, reply
    smtp.send(b"EHLO \xff\xfe\r\n")
    code, reply = smtp.getreply()
    assert code == 250, reply
    smtp.ehlo_resp, smtp.does_esmtp = reply, True
    return smtp


def test_8bit_ehlo_through_postfix(stack: Stack) -> None:
    smtp = ehlo_8bit(stack, PASS_IP)
    try:
        passing = transaction(smtp, stack.postfix, "a@spf-pass.example.org", [RCPT])
        failing = transaction(smtp, stack.postfix, "a@spf-fail.example.org", [RCPT])
    finally:
        smtp.quit()
    assert passing.rcpts == [(250, passing.rcpts[0][1])]
    (value,) = passing.received_spf()
    assert value.startswith("pass ") and "identity=mailfrom" in value
    assert failing.rcpts[0][0] == 550
