"""Pinned verdict lines: each field of a skipped and of an evaluated
transaction, as the text line shows it and as the JSON format gets it."""

from __future__ import annotations

import ipaddress
import logging

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Envelope,
    Identity,
    Reply,
    Skip,
    SkipReason,
    SpfOutcome,
    SpfResult,
    Stage,
)
from spfmilter.core.verdicts import FIELD_LIMIT, format_fields, record
from tests.support.checks import verdict_records

CONN = Connection(ipaddress.ip_address("192.0.2.1"), "client.example", "mx", "helo.example")
ENVELOPE = Envelope("a@example.org")


def test_a_skip_logs_its_reason_and_counts_it() -> None:
    metrics = Metrics()
    decision = Decision(
        Action.ACCEPT, Action.ACCEPT, Stage.RCPT, skip=Skip(SkipReason.AUTHENTICATED, "bob")
    )
    with verdict_records() as records:
        record(metrics, decision, queue_id="", conn_id=7, conn=CONN, envelope=ENVELOPE, exempt=[])
    (logged,) = records
    assert logged.getMessage() == (
        "NOQUEUE: SPF skipped - SASL authenticated as bob conn=7 client_ip=192.0.2.1"
        " client_name=client.example"
        ' helo=helo.example sender=a@example.org action=skip reason="SASL authenticated as bob"'
    )
    assert logged.__dict__["fields"] == {
        "queue_id": "NOQUEUE",
        "conn": 7,
        "client_ip": ipaddress.ip_address("192.0.2.1"),
        "client_name": "client.example",
        "helo": "helo.example",
        "sender": "a@example.org",
        "action": "skip",
        "reason": "SASL authenticated as bob",
    }
    assert metrics.value("spfmilter_skips_total", reason="authenticated") == 1


def test_a_verdict_logs_the_deciding_identity_and_what_was_done() -> None:
    metrics = Metrics()
    helo = SpfOutcome(Identity.HELO, SpfResult.PASS, "helo.example", "postmaster@helo.example")
    mail_from = SpfOutcome(
        Identity.MAIL_FROM,
        SpfResult.FAIL,
        "example.org",
        "a@example.org",
        mechanism="-all",
        lookup_seconds=0.0125,
    )
    decision = Decision(
        Action.ACCEPT,
        Action.REJECT,
        Stage.RCPT,
        reply=Reply(550, "5.7.23", "SPF fail"),
        decided_by=Identity.MAIL_FROM,
        helo=helo,
        mail_from=mail_from,
    )
    with verdict_records() as records:
        record(
            metrics,
            decision,
            queue_id="4XyZ1",
            conn_id=3,
            conn=CONN,
            envelope=ENVELOPE,
            exempt=["postmaster@mx", "abuse@mx"],
        )
    (logged,) = records
    assert logged.getMessage() == (
        "4XyZ1: verdict conn=3 client_ip=192.0.2.1 client_name=client.example helo=helo.example"
        " sender=a@example.org"
        " identity=mailfrom result=fail mechanism=-all action=reject stage=rcpt"
        ' reply="550 5.7.23 SPF fail" dry_run=yes exempt_recipients=postmaster@mx,abuse@mx'
        " lookup_ms=12"
    )
    assert logged.__dict__["fields"]["mechanism"] == "-all"
    assert logged.__dict__["fields"]["lookup_ms"] == 12
    labels = {"identity": "mailfrom", "result": "fail", "action": "reject"}
    assert metrics.value("spfmilter_verdicts_total", **labels) == 1


def test_a_verdict_without_mechanism_or_reply_says_so() -> None:
    helo = SpfOutcome(Identity.HELO, SpfResult.NONE, "helo.example", "postmaster@helo.example")
    decision = Decision(
        Action.ACCEPT, Action.ACCEPT, Stage.RCPT, helo=helo, decided_by=Identity.HELO
    )
    with verdict_records() as records:
        record(
            Metrics(), decision, queue_id="Q", conn_id=1, conn=CONN, envelope=ENVELOPE, exempt=[]
        )
    (logged,) = records
    assert logged.getMessage() == (
        "Q: verdict conn=1 client_ip=192.0.2.1 client_name=client.example helo=helo.example"
        " sender=a@example.org"
        " identity=helo result=none mechanism=- action=accept stage=rcpt lookup_ms=0"
    )
    assert "reply" not in logged.__dict__["fields"]


def test_the_verdict_record_is_the_verdict_loggers_of_unknown_source() -> None:
    # Made without looking for the caller on the stack: the file and line
    # are what logging itself records when it cannot find them.
    with verdict_records() as records:
        record(
            Metrics(),
            Decision(Action.ACCEPT, Action.ACCEPT, Stage.RCPT, skip=Skip(SkipReason.LOCALHOST)),
            queue_id="Q",
            conn_id=1,
            conn=CONN,
            envelope=ENVELOPE,
            exempt=[],
        )
    (logged,) = records
    assert (logged.name, logged.levelno, logged.pathname, logged.lineno) == (
        "spfmilter.verdicts",
        logging.INFO,
        "(unknown file)",
        0,
    )


def test_a_missing_client_address_reads_as_a_dash() -> None:
    local = Connection(None, "localhost", "mx")
    decision = Decision(
        Action.ACCEPT, Action.ACCEPT, Stage.RCPT, skip=Skip(SkipReason.LOCAL_SUBMISSION)
    )
    with verdict_records() as records:
        record(
            Metrics(), decision, queue_id="Q", conn_id=2, conn=local, envelope=ENVELOPE, exempt=[]
        )
    (logged,) = records
    assert " conn=2 client_ip=- client_name=localhost helo=" in logged.getMessage()


def test_a_value_is_cut_only_beyond_the_field_limit() -> None:
    assert format_fields({"reply": "a" * FIELD_LIMIT}) == "reply=" + "a" * FIELD_LIMIT
    assert format_fields({"reply": "a" * (FIELD_LIMIT + 1)}) == (
        "reply=" + "a" * (FIELD_LIMIT - 3) + "..."
    )
