"""Property-based tests of one SMTP session for any sequence of commands
with any arguments, an evaluator over a checker and a DNS lookup that
answer what hypothesis chooses (no network): no exception, refusals only
where configured and with replies libmilter accepts, at most one result
header of each kind that parses back, deletions only of forged
Authentication-Results that exist (highest first), one verdict line per
transaction, the connection gauge back to zero."""

from __future__ import annotations

import logging

from hypothesis import event, given
from hypothesis import strategies as st

from spfmilter.config.schema import (
    Config,
)
from spfmilter.core import policy
from spfmilter.core.headers import (
    AUTHENTICATION_RESULTS,
    RECEIVED_SPF,
    authserv_id_key,
    claimed_authserv_ids,
    clean,
)
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Decision,
    Envelope,
    HeaderChanges,
    Identity,
    IPAddress,
    Macro,
    Stage,
    Step,
)
from spfmilter.core.session import GO_ON, Session
from spfmilter.process.logs import JsonFormatter, TextFormatter
from tests.support.checks import (
    assert_one_line,
    assert_reply,
    assert_result_header,
    verdict_records,
)
from tests.support.strategies import (
    HOST_NAME,
    SETTINGS,
    configs,
    hostnames,
    ips,
    make_services,
    operations,
    texts,
)


def assert_step(step: Step, config: Config, stage: Stage, recipient: str | None = None) -> None:
    """GO_ON, or a refusal where the configuration puts refusals."""
    if step == GO_ON:
        return
    event(f"refused at {stage.value}")
    assert_reply(step.reply, step.action)
    assert config.policy.reject_stage is stage and not config.policy.dry_run
    assert recipient is None or not policy.recipient_exempt(config.policy, recipient)


def assert_changes(
    changes: HeaderChanges,
    config: Config,
    tx: Envelope,
    decision: Decision,
    seen: list[str],
    our_id: str,
) -> None:
    """At most one header of each kind, saying what the decision says; only
    forged Authentication-Results deleted, each that exists, highest first."""
    headers = config.headers
    # The MAIL FROM result whenever there is one, never a HELO result in
    # its place (CVE-2019-20790); the HELO result for <>.
    report = decision.mail_from or decision.helo
    assert (
        tx.null_sender
        or decision.skip
        or report is decision.mail_from
        or decision.decided_by is Identity.HELO
    )
    names = [name for name, _ in changes.insert]
    expected = [RECEIVED_SPF] if headers.type.received_spf and report else []
    assert names == expected + [AUTHENTICATION_RESULTS] * headers.type.authentication_results
    for name, value in changes.insert:
        assert_result_header(name, value, None if decision.skip else report)
    forged = [i for i, value in enumerate(seen, 1) if our_id in claimed_authserv_ids(value)]
    if not (headers.type.authentication_results and headers.remove_forged):
        forged = []
    assert changes.delete == tuple((AUTHENTICATION_RESULTS, i) for i in reversed(forged))
    event(f"end of message: {len(changes.insert)} inserted, {min(len(forged), 2)}+ deleted")


@SETTINGS
@given(
    st.data(), configs, st.one_of(st.none(), ips), texts, st.sampled_from(["", "mx"]) | hostnames
)
def test_session(
    data: st.DataObject, config: Config, ip: IPAddress | None, name: str, j: str
) -> None:
    metrics, checked = Metrics(), list[Identity]()
    session = Session(config, make_services(data, metrics, checked))
    our_id = authserv_id_key(config.headers.authserv_id or clean(j or HOST_NAME, 253))
    mails = 0
    seen: list[str] = []  # Authentication-Results of the open transaction
    with verdict_records() as records:
        session.connect(ip, name, j)
        for op in data.draw(operations(our_id)):
            tx = session.transaction
            if op[0] == "hello":
                session.hello(op[1])
                checked.clear()
            elif op[0] == "mail":
                if tx is not None:  # libmilter aborts a transaction a new MAIL ends
                    session.abort("")
                mails += 1
                seen = []
                sent = tuple(Macro(m.name, op[3]) for m in config.skip.macros)
                assert_step(session.mail(op[1], op[2], sent), config, Stage.MAIL)
                assert checked.count(Identity.HELO) <= 1  # once per HELO (RFC 7208 2.3)
                if session.transaction is not None:
                    d = session.transaction.decision
                    event(f"decision: {d.action.value} {d.skip.reason if d.skip else ''}")
            elif op[0] == "rcpt":
                assert_step(session.rcpt(op[1]), config, Stage.RCPT, op[1])
            elif op[0] == "header":
                session.header(op[1], op[2])
                if op[1].lower() == AUTHENTICATION_RESULTS.lower():
                    seen.append(op[2])
            elif op[0] == "eom":
                changes = session.end_of_message(op[1])
                if tx is None:
                    assert changes == HeaderChanges()
                else:
                    assert_changes(changes, config, tx.envelope, tx.decision, seen, our_id)
                assert session.transaction is None
            else:
                session.abort(op[1])
                assert session.transaction is None
        session.close(data.draw(texts))
        session.close("")  # libmilter may close twice
    # One verdict line per transaction, each one line in either format.
    assert [r.levelno for r in records] == [logging.INFO] * mails
    for record in records:
        assert_one_line(TextFormatter().format(record))
        assert_one_line(JsonFormatter().format(record))
    assert metrics.value("spfmilter_connections_in_flight") == 0
