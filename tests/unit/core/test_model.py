"""The value types' derived properties: what each says about its fields."""

from __future__ import annotations

import pytest

from spfmilter.core.model import (
    Action,
    Decision,
    Envelope,
    Identity,
    Macro,
    Plan,
    Reply,
    Skip,
    SkipFacts,
    SkipReason,
    SpfOutcome,
    SpfResult,
    Stage,
)


def test_each_identity_has_its_scope_word() -> None:
    # The scope of RFC 7208 section 9.1's comments: "helo" or "mfrom".
    assert Identity.HELO.scope == "helo"
    assert Identity.MAIL_FROM.scope == "mfrom"


def test_a_macro_reads_as_name_equals_value() -> None:
    assert str(Macro("{daemon_name}", "ORIGINATING")) == "{daemon_name}=ORIGINATING"


@pytest.mark.parametrize(
    ("mail_from", "null", "domain"),
    [
        ("", True, ""),
        ("user@Example.ORG", False, "example.org"),
        ("user@example.org.", False, "example.org"),
        ("user@example.org..", False, "example.org"),
        ('"a@b"@Mail.Example', False, "mail.example"),
        ("postmaster", False, "postmaster"),
        ("user@", False, ""),
    ],
)
def test_the_sender_domain_is_after_the_last_at_lower_case_without_a_final_dot(
    mail_from: str, null: bool, domain: str
) -> None:
    envelope = Envelope(mail_from)
    assert envelope.null_sender is null
    assert envelope.sender_domain == domain


def test_every_skip_reason_fills_its_detail_into_its_own_words() -> None:
    texts = {reason: Skip(reason, "<detail>").text for reason in SkipReason}
    assert texts[SkipReason.AUTHENTICATED] == "SASL authenticated as <detail>"
    assert texts[SkipReason.NETWORK] == "client <detail> in skip networks"
    assert texts[SkipReason.LOCALHOST] == "localhost is always allowed"
    assert Skip(SkipReason.LOCAL_SUBMISSION).text == "no client IP address (local submission)"
    # No two reasons read alike.
    assert len(set(texts.values())) == len(SkipReason)


@pytest.mark.parametrize(
    ("facts", "found"),
    [
        (SkipFacts(), False),
        (SkipFacts(helo_confirmed=True), True),
        (SkipFacts(forwarder="fwd.example"), True),
        (SkipFacts(forwarder=""), True),
        (SkipFacts(ptr=("mx.example", "example")), True),
    ],
)
def test_any_fact_found_is_a_skip(facts: SkipFacts, found: bool) -> None:
    assert facts.found is found


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (Reply(550, "5.7.23", "SPF fail"), "550 5.7.23 SPF fail"),
        (Reply(451, None, "try again"), "451 try again"),
        (Reply(451, "", "try again"), "451 try again"),
    ],
)
def test_a_reply_reads_as_code_status_and_text(reply: Reply, text: str) -> None:
    assert str(reply) == text


@pytest.mark.parametrize(
    ("plan", "needs"),
    [
        (Plan(), False),
        (Plan(helo=True, mail_from=True), False),
        (Plan(helo_name="mx.example"), True),
        (Plan(helo_name=""), True),
        (Plan(forwarder_domains=("fwd.example",)), True),
        (Plan(ptr_domains=("example",)), True),
    ],
)
def test_a_plan_needs_facts_only_for_a_skip_that_asks_dns(plan: Plan, needs: bool) -> None:
    assert plan.needs_facts is needs


HELO = SpfOutcome(Identity.HELO, SpfResult.PASS, "mx.example", "postmaster@mx.example")
MAIL_FROM = SpfOutcome(Identity.MAIL_FROM, SpfResult.FAIL, "example", "a@example")


@pytest.mark.parametrize(
    ("helo", "mail_from", "report"),
    [
        (HELO, MAIL_FROM, MAIL_FROM),
        (None, MAIL_FROM, MAIL_FROM),
        (HELO, None, HELO),
        (None, None, None),
    ],
)
def test_received_spf_reports_mail_from_whenever_it_was_evaluated(
    helo: SpfOutcome | None, mail_from: SpfOutcome | None, report: SpfOutcome | None
) -> None:
    # RFC 7208 section 9.1.
    decision = Decision(Action.ACCEPT, Action.ACCEPT, Stage.RCPT, helo=helo, mail_from=mail_from)
    assert decision.report is report
