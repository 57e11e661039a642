"""Policy behaviour that mutation testing found unpinned: the skip Decision,
the bounds on text a skip carries into logs and headers, HELO names with a
trailing dot, and how exempt recipients are compared.

Each test names a behaviour of spfmilter.core.policy (README's semantics,
the docstrings); test_policy.py holds the decision tables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from spfmilter.config.schema import Config, PolicyConfig, SkipConfig
from spfmilter.core import policy
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Envelope,
    Outcomes,
    Plan,
    Skip,
    SkipFacts,
    SkipReason,
    Stage,
)

CLIENT = ipaddress.ip_address("198.51.100.7")


def conn(helo: str = "mail.example.org") -> Connection:
    return Connection(CLIENT, "", "mx.test.example", helo)


def with_skip(**changes: Any) -> Config:
    return dataclasses.replace(Config(), skip=dataclasses.replace(SkipConfig(), **changes))


def test_a_skipped_transaction_is_a_skip_decision_at_the_configured_stage() -> None:
    skip = Skip(SkipReason.NETWORK, "192.0.2.1")
    for stage in Stage:
        config = dataclasses.replace(Config(), policy=PolicyConfig(reject_stage=stage))
        decision = policy.decide(config, Plan(skip=skip), Outcomes())
        assert decision == Decision(
            action=Action.SKIP, intended=Action.SKIP, stage=stage, skip=skip
        )
        assert decision.reply is None and decision.report is None


def test_a_long_sasl_login_is_cut_to_64_characters_in_the_skip_reason() -> None:
    login = "u" * 100
    skip = policy.plan(Config(), conn(), Envelope("a@example.org", login)).skip
    assert skip is not None and skip.reason is SkipReason.AUTHENTICATED
    assert skip.detail == "u" * 61 + "..."
    short = policy.plan(Config(), conn(), Envelope("a@example.org", "u" * 64)).skip
    assert short is not None and short.detail == "u" * 64


def test_a_ptr_name_in_the_skip_reason_is_cut_to_a_dns_name_length() -> None:
    # A name from DNS is hostile text (STYLE rule 8): it is capped at 253
    # characters, the longest name in text form.
    long_name = ("a" * 60 + ".") * 4 + "relay.example"  # 257 characters
    facts = SkipFacts(ptr=(long_name, "relay.example"))
    config = with_skip(ptr_domains=("relay.example",))
    plan = policy.plan(config, conn(), Envelope("a@example.org"))
    skip = policy.decide(config, plan, Outcomes(facts)).skip
    assert skip is not None and skip.reason is SkipReason.PTR_DOMAIN
    assert skip.detail == long_name[:250] + "... is in relay.example"


def test_a_helo_name_with_a_trailing_dot_is_the_listed_name() -> None:
    config = with_skip(helo_names=("backup-mx.example.net",))
    plan = policy.plan(config, conn("Backup-MX.example.net."), Envelope("a@x.org"))
    assert plan.helo_name == "backup-mx.example.net"
    skip = policy.decide(config, plan, Outcomes(SkipFacts(helo_confirmed=True))).skip
    assert skip == Skip(SkipReason.HELO_NAME, "backup-mx.example.net")


def test_exempt_recipients_ignore_case_at_either_end_of_the_address() -> None:
    exempt = PolicyConfig(exempt_recipients=("xavier@", "abuse@example.net"))
    assert policy.recipient_exempt(exempt, "<Xavier@Example.NET>")
    assert policy.recipient_exempt(exempt, "<ABUSE@EXAMPLE.NET>")
    assert not policy.recipient_exempt(exempt, "<avier@example.net>")


def test_the_local_part_of_a_recipient_is_everything_before_the_last_at() -> None:
    # RFC 5321 section 4.1.2: a quoted local part may itself contain '@'.
    exempt = PolicyConfig(exempt_recipients=('"odd@name"@',))
    assert policy.recipient_exempt(exempt, '<"odd@name"@example.net>')
    assert not policy.recipient_exempt(exempt, '<"odd@other"@example.net>')
