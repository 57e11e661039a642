"""Policy knobs through the real stack: Postfix -> daemon -> DNS, reloaded live.

One Postfix and one daemon for the module; each test writes a new config
file and sends SIGUSR1, so reload itself is exercised by every test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from testkit.daemon import config_text
from testkit.dnsserver import DNSTestServer
from tests.support.stack import PASS_IP, Sent, Stack, postfix_stack, send

FAIL_SENDER = "mallory@spf-fail-noexp.example.org"
Configure = Callable[[Mapping[str, Mapping[str, str]]], None]


@pytest.fixture(scope="module")
def stack(dns_server: DNSTestServer) -> Iterator[Stack]:
    with postfix_stack(config_text(dns_server), allowed=(r"reload failed",)) as stack:
        yield stack


@pytest.fixture
def configure(stack: Stack, dns_server: DNSTestServer) -> Iterator[Configure]:
    def apply(sections: Mapping[str, Mapping[str, str]]) -> None:
        stack.daemon.config_path.write_text(config_text(dns_server, sections))
        assert "configuration reloaded" in stack.daemon.reload()

    yield apply
    apply({})  # back to the defaults for the next test


def header_values(sent: Sent, name: str) -> list[str]:
    assert sent.message is not None
    return [" ".join(v.split()) for v in sent.message.get_all(name) or []]


def skipped(sent: Sent) -> bool:
    return sent.rcpts[0][0] == 250 and sent.received_spf() == []


def test_trusted_relays_and_sender_domains(stack: Stack, configure: Configure) -> None:
    configure(
        {
            "skip": {
                "trusted_relays": "203.0.113.0/28",
                "sender_domains": "spf-fail-noexp.example.org",
            }
        }
    )
    assert skipped(send(stack, "203.0.113.5", "helo-none.example.org", FAIL_SENDER))
    assert skipped(send(stack, "203.0.113.99", "helo-none.example.org", FAIL_SENDER))
    # Exact domain match only: a subdomain's sender is still checked.
    sent = send(stack, "203.0.113.99", "helo-none.example.org", "m@spf-fail.example.org")
    assert sent.received_spf()[0].startswith("pass ")
    log = stack.daemon.log_text()
    assert "SPF skipped - client 203.0.113.5 is a trusted relay" in log
    assert "SPF skipped - sender domain spf-fail-noexp.example.org is exempt" in log


def test_skip_by_macro_spares_the_submission_service(stack: Stack, configure: Configure) -> None:
    # Postfix sends {daemon_name} (milter_macro_daemon_name) at connect; the
    # second smtpd sets it to ORIGINATING, as Debian's submission entry does.
    configure({"skip": {"macros": "{daemon_name}=ORIGINATING"}})
    assert skipped(
        send(stack, "203.0.113.5", "helo-none.example.org", FAIL_SENDER, submission=True)
    )
    refused = send(stack, "203.0.113.5", "helo-none.example.org", FAIL_SENDER)
    assert refused.rcpts[0][0] == 550
    assert "SPF skipped - MTA macro {daemon_name}=ORIGINATING" in stack.daemon.log_text()
    # Without the setting the submission service's mail is checked too.
    configure({})
    sent = send(stack, "203.0.113.5", "helo-none.example.org", FAIL_SENDER, submission=True)
    assert sent.rcpts[0][0] == 550


def test_skip_networks(stack: Stack, configure: Configure) -> None:
    configure({"skip": {"networks": "203.0.113.0/24"}})
    assert skipped(send(stack, "203.0.113.9", "helo-fail.example.org", FAIL_SENDER))
    # Loopback is no longer skipped once the list replaces the default.
    sent = send(stack, "127.0.0.1", "helo-none.example.org", FAIL_SENDER)
    assert sent.rcpts[0][0] == 550


def test_helo_names(stack: Stack, configure: Configure) -> None:
    configure({"skip": {"helo_names": "gw.helo.example"}})
    assert skipped(send(stack, "203.0.113.70", "gw.helo.example", FAIL_SENDER))
    # Listed HELO, but it does not resolve to this client: checked.
    assert send(stack, "203.0.113.71", "gw.helo.example", FAIL_SENDER).rcpts[0][0] == 550


def test_ptr_domains_on_label_boundaries(stack: Stack, configure: Configure) -> None:
    configure({"skip": {"ptr_domains": "relay.example"}})
    assert skipped(send(stack, "203.0.113.50", "helo-none.example.org", FAIL_SENDER))
    # mx.evilrelay.example is not in relay.example.
    assert send(stack, "203.0.113.51", "helo-none.example.org", FAIL_SENDER).rcpts[0][0] == 550
    # A PTR name that does not resolve back to the client is not trusted.
    assert send(stack, "203.0.113.52", "helo-none.example.org", FAIL_SENDER).rcpts[0][0] == 550
    assert (
        "SPF skipped - client's confirmed PTR name mx1.relay.example is in relay.example"
        in stack.daemon.log_text()
    )


def test_forwarder_domains(stack: Stack, configure: Configure) -> None:
    configure({"skip": {"forwarder_domains": "forwarder.example"}})
    assert skipped(send(stack, "203.0.113.60", "helo-none.example.org", FAIL_SENDER))
    assert send(stack, "203.0.113.61", "helo-none.example.org", FAIL_SENDER).rcpts[0][0] == 550


def test_authentication_results_and_forged_removal(stack: Stack, configure: Configure) -> None:
    configure({"headers": {"type": "authentication-results", "authserv_id": "mx.knobs.example"}})
    forged = {"Authentication-Results": "mx.knobs.example; spf=pass smtp.mailfrom=evil.example"}
    sent = send(stack, PASS_IP, "helo-pass.example.org", "a@spf-none.example.org", headers=forged)
    assert sent.received_spf() == []
    (value,) = header_values(sent, "Authentication-Results")
    assert value.startswith("mx.knobs.example; spf=none (spf-none.example.org: No applicable")
    # The HELO passed, the sender's domain has no policy: only the MAIL FROM
    # result may appear (CVE-2019-20790).
    assert value.endswith("smtp.mailfrom=spf-none.example.org")
    assert "smtp.helo" not in value and "spf=pass" not in value


def test_authentication_results_for_the_null_sender(stack: Stack, configure: Configure) -> None:
    configure({"headers": {"type": "authentication-results", "authserv_id": "mx.knobs.example"}})
    sent = send(stack, PASS_IP, "helo-pass.example.org", "")
    (value,) = header_values(sent, "Authentication-Results")
    assert value.startswith("mx.knobs.example; spf=pass (helo-pass.example.org:")
    assert value.endswith("smtp.helo=helo-pass.example.org")
    assert value.count("spf=") == 1


def test_forged_authentication_results_kept_when_asked(stack: Stack, configure: Configure) -> None:
    headers = {
        "type": "authentication-results",
        "authserv_id": "mx.knobs.example",
        "remove_forged": "no",
    }
    configure({"headers": headers})
    forged = {"Authentication-Results": "mx.knobs.example; spf=pass smtp.mailfrom=evil.example"}
    sent = send(stack, PASS_IP, "helo-pass.example.org", "a@spf-none.example.org", headers=forged)
    values = header_values(sent, "Authentication-Results")
    assert len(values) == 2
    assert values[1] == "mx.knobs.example; spf=pass smtp.mailfrom=evil.example"


def test_headers_both_and_hidden_receiver(stack: Stack, configure: Configure) -> None:
    configure({"headers": {"type": "both", "hide_receiver": "yes"}})
    sent = send(stack, PASS_IP, "helo-pass.example.org", "a@spf-pass.example.org")
    (spf,) = sent.received_spf()
    assert "receiver=" not in spf and spf.startswith("pass ")
    assert len(header_values(sent, "Authentication-Results")) == 1


def test_headers_none(stack: Stack, configure: Configure) -> None:
    configure({"headers": {"type": "none"}})
    sent = send(stack, PASS_IP, "helo-pass.example.org", "a@spf-pass.example.org")
    assert sent.received_spf() == [] and header_values(sent, "Authentication-Results") == []


def test_reject_stage_mail_and_plain_codes(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"reject_stage": "mail"}, "reply": {"enhanced_status_codes": "no"}})
    sent = send(stack, PASS_IP, "helo-none.example.org", FAIL_SENDER)
    code, text = sent.mail
    assert code == 550
    # Postfix supplies its own enhanced code when the milter gives none.
    assert "SPF MAIL FROM check for mallory@spf-fail-noexp.example.org: fail" in text
    assert "5.7.23" not in text


def test_dry_run(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"dry_run": "yes"}})
    sent = send(stack, PASS_IP, "helo-fail.example.org", FAIL_SENDER)
    assert sent.rcpts[0][0] == 250
    assert sent.received_spf()[0].startswith("fail ")
    verdict = stack.daemon.verdicts()[-1]
    assert "identity=helo" in verdict and "action=reject" in verdict and "dry_run=yes" in verdict


def test_exempt_recipients(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"exempt_recipients": "postmaster@"}})
    sent = send(
        stack,
        PASS_IP,
        "helo-none.example.org",
        FAIL_SENDER,
        ["user@example.net", "postmaster@example.net"],
    )
    assert [code for code, _ in sent.rcpts] == [550, 250]
    assert sent.received_spf()[0].startswith("fail ")


def test_permerror_reject_and_temperror_accept(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"permerror_reject": "yes", "temperror_defer": "no"}})
    sent = send(stack, PASS_IP, "helo-none.example.org", "a@spf-permerror.example.org")
    assert sent.rcpts[0][0] == 550 and sent.rcpts[0][1].startswith("5.7.24 ")
    sent = send(stack, PASS_IP, "helo-none.example.org", "a@spf-timeout.example.org")
    assert sent.rcpts[0][0] == 250 and sent.received_spf()[0].startswith("temperror ")


def test_mailfrom_and_helo_reject_lists(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"mailfrom_reject": "fail, softfail", "helo_reject": ""}})
    sent = send(stack, PASS_IP, "helo-none.example.org", "a@spf-softfail.example.org")
    assert sent.rcpts[0][0] == 550
    sent = send(stack, PASS_IP, "helo-fail.example.org", "a@spf-pass.example.org")
    assert sent.rcpts[0][0] == 250


def test_helo_checks_off_and_null_sender_only(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"helo_check": "no"}})
    assert (
        send(stack, PASS_IP, "helo-fail.example.org", "a@spf-pass.example.org").rcpts[0][0] == 250
    )
    configure({"policy": {"helo_reject_null_sender_only": "yes"}})
    assert (
        send(stack, PASS_IP, "helo-fail.example.org", "a@spf-pass.example.org").rcpts[0][0] == 250
    )
    assert send(stack, PASS_IP, "helo-fail.example.org", "").rcpts[0][0] == 550


def test_sasl_authenticated_clients_are_skipped_only_when_configured(
    stack: Stack, configure: Configure
) -> None:
    configure({})
    assert skipped(send(stack, PASS_IP, "helo-none.example.org", FAIL_SENDER, login="bob"))
    configure({"skip": {"authenticated": "no"}})
    sent = send(stack, PASS_IP, "helo-none.example.org", FAIL_SENDER, login="bob")
    assert sent.rcpts[0][0] == 550


def test_invalid_file_on_reload_keeps_the_old_config(stack: Stack, configure: Configure) -> None:
    configure({"policy": {"dry_run": "yes"}})
    stack.daemon.config_path.write_text("[policy]\ndry_run = perhaps\n")
    line = stack.daemon.reload()
    assert "reload failed, keeping the previous configuration" in line
    assert (
        "spfmilter.cfg:2: [policy] dry_run: expected yes or no (or true, false), got 'perhaps'"
        in line
    )
    # Still the dry-run config: a fail is accepted.
    assert send(stack, PASS_IP, "helo-none.example.org", FAIL_SENDER).rcpts[0][0] == 250
