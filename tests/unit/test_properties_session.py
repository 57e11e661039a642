"""Property-based tests (hypothesis) of the decisions: the policy for any
configuration and any facts, and one SMTP session for any sequence of
commands with any arguments, through the Session and through the adapter.

This file owns the properties of the policy (plan and decide: what is
evaluated, in which order, what refuses and how, dry-run, the outcome
reported, never a HELO pass for the sender, CVE-2019-20790), of
spfmilter.core.session.Session driven with a
checker and a DNS lookup that answer what hypothesis chooses (no network):
no exception, refusals only where configured and with replies libmilter
accepts, at most one result header of each kind that parses back,
deletions only of forged Authentication-Results that exist (highest first),
one verdict line per transaction, the connection gauge back to zero.  And of
spfmilter.mta.libmilter.SpfMilter under pymilter's TestCtx: every callback answers
CONTINUE, REJECT or TEMPFAIL, never reaches the error boundary, and every
refusal carries a reply.  Text strategies and the checks of headers,
replies and log lines come from test_properties.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.message
import ipaddress
import logging
import socket
from collections.abc import Iterator, Sequence

import Milter
from hypothesis import event, example, given
from hypothesis import strategies as st

from spfmilter.config.schema import (
    Config,
    HeadersConfig,
    HeaderType,
    PolicyConfig,
    ReplyConfig,
    SkipConfig,
)
from spfmilter.config.values import parse_domains, parse_macros, parse_results
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
    Action,
    Connection,
    Decision,
    Envelope,
    HeaderChanges,
    Identity,
    IPAddress,
    Macro,
    Outcomes,
    Plan,
    Skip,
    SkipFacts,
    SkipReason,
    SpfOutcome,
    SpfQuery,
    SpfResult,
    Stage,
    Step,
)
from spfmilter.core.session import GO_ON, Services, Session
from spfmilter.evaluation.clientfacts import in_domains
from spfmilter.evaluation.evaluator import Evaluator
from spfmilter.evaluation.resolver import DnsTempError, Record
from spfmilter.process.logs import JsonFormatter, TextFormatter
from tests.support.testctx import Ctx
from tests.unit.test_properties import (
    CHARS,
    SETTINGS,
    assert_one_line,
    assert_reply,
    assert_result_header,
    assert_setreply_ok,
    domains,
    hostnames,
    ips,
    outcomes,
    rarely,
    spelled,
    texts,
)

# --- strategies of configurations and transactions ------------------------

networks = st.builds(
    lambda ip, bits: ipaddress.ip_network(f"{ip}/{min(bits, ip.max_prefixlen)}", strict=False),
    ips,
    st.one_of(st.integers(0, 128), st.integers(24, 128)),  # mostly not half the Internet
)
# Values exactly as the configuration parsers produce them.
results = rarely(
    st.lists(st.sampled_from(["fail", "softfail", "neutral", "none", "permerror"])),
    st.just(["fail"]),  # mostly the default
).map(lambda names: parse_results(", ".join(names)))
domain_lists = st.lists(domains, max_size=3).map(lambda names: parse_domains(", ".join(names)))
some_domains = rarely(domain_lists, st.just(()))  # skips that need DNS: mostly off
policies = st.builds(
    PolicyConfig,
    helo_check=st.booleans(),
    helo_reject=results,
    helo_reject_null_sender_only=st.booleans(),
    mailfrom_reject=results,
    permerror_reject=st.booleans(),
    temperror_defer=st.booleans(),
    reject_stage=st.sampled_from(Stage),
    dry_run=st.booleans(),
    exempt_recipients=st.sampled_from([(), ("postmaster@",), ("abuse@example.net",)]),
)
configs = st.builds(
    lambda p, s, h, r: dataclasses.replace(Config(), policy=p, skip=s, headers=h, reply=r),
    policies,
    st.builds(
        SkipConfig,
        networks=st.lists(networks, max_size=3).map(tuple),
        authenticated=st.booleans(),
        trusted_relays=st.lists(networks, max_size=2).map(tuple),
        helo_names=some_domains,
        ptr_domains=some_domains,
        forwarder_domains=some_domains,
        sender_domains=domain_lists,
        macros=rarely(
            st.sampled_from(["{daemon_name}=ORIGINATING", "x=1, {auth_type}=PLAIN"]), st.just("")
        ).map(parse_macros),
    ),
    st.builds(
        HeadersConfig,
        type=st.sampled_from([*HeaderType, HeaderType.BOTH]),
        authserv_id=st.one_of(st.just(""), hostnames),
        hide_receiver=st.booleans(),
        remove_forged=rarely(st.just(False), st.just(True)),
    ),
    st.builds(ReplyConfig, enhanced_status_codes=st.booleans()),
)
mail_froms = st.one_of(
    st.just(""),
    texts,
    st.builds(lambda local, d: f"{local}@{d}", st.text(CHARS, max_size=8), domains),
)


def connections(client_ips: st.SearchStrategy[IPAddress | None]) -> st.SearchStrategy[Connection]:
    return st.builds(Connection, client_ips, texts, hostnames, st.one_of(domains, texts))


auth_users = rarely(texts, st.just(""))  # mostly no SASL login
# The values the MTA sent for the macros [skip] macros names.
macro_values = st.lists(
    st.builds(
        Macro, st.sampled_from(["{daemon_name}", "x"]), st.one_of(st.just("ORIGINATING"), texts)
    ),
    max_size=2,
).map(tuple)
transactions = st.builds(Envelope, mail_froms, auth_users, macro_values)
skip_facts = st.builds(
    SkipFacts, st.booleans(), st.one_of(st.none(), domains),
    st.one_of(st.none(), st.tuples(st.one_of(domains, texts), domains)),
)  # fmt: skip
# A client no skip applies to, and a configuration without skips: what
# decide() is given when the identities were evaluated.
CLIENT = Connection(ipaddress.ip_address("198.51.100.7"), "", "mx", "mail.example.org")
NO_SKIP = SkipConfig(networks=(), authenticated=False)


# --- policy -----------------------------------------------------------------


def refusing(config: Config, tx: Envelope, identity: Identity) -> set[SpfResult]:
    """The results of `identity` that refuse, written out from the
    documentation of [policy] rather than from the engine."""
    settings = config.policy
    if identity is Identity.HELO and settings.helo_check:
        null_only = settings.helo_reject_null_sender_only and not tx.null_sender
        results = set() if null_only else set(settings.helo_reject)
    else:  # a bounce's HELO checked as its MAIL FROM identity: MAIL FROM's rules
        results = set(settings.mailfrom_reject)
    results.discard(SpfResult.TEMPERROR)
    if settings.temperror_defer:
        results.add(SpfResult.TEMPERROR)
    if settings.permerror_reject:
        results.add(SpfResult.PERMERROR)
    return results


def decide(
    config: Config, tx: Envelope, helo: SpfOutcome | None, mfrom: SpfOutcome | None
) -> Decision:
    """decide() on these outcomes, by the plan for a client no skip applies to."""
    plan = policy.plan(dataclasses.replace(config, skip=NO_SKIP), CLIENT, tx)
    return policy.decide(config, plan, Outcomes(helo=helo, mail_from=mfrom))


def refuses(config: Config, tx: Envelope, helo: SpfResult) -> bool:
    one = SpfOutcome(Identity.HELO, helo, "d", "postmaster@d")
    return decide(config, tx, one, None).intended is not Action.ACCEPT


@SETTINGS
@given(configs, connections(st.none() | ips), transactions)
def test_plan(config: Config, conn: Connection, tx: Envelope) -> None:
    plan = policy.plan(config, conn, tx)
    if conn.client_ip is None:
        assert plan.skip == Skip(SkipReason.LOCAL_SUBMISSION)
    elif any(conn.client_ip in net for net in config.skip.networks):
        assert plan.skip is not None
        assert plan.skip.reason in (SkipReason.LOCALHOST, SkipReason.NETWORK)
    if plan.skip is not None:  # nothing to look up or evaluate, so nothing to decide
        assert plan == Plan(skip=plan.skip)
        assert plan.skip.text.isascii() and plan.skip.text.isprintable()  # safe for headers
        return
    # DNS facts: what the configured skips ask for, the HELO only if listed.
    helo = conn.helo.lower().rstrip(".")
    assert plan.helo_name == (helo if helo in config.skip.helo_names else None)
    assert plan.ptr_domains == config.skip.ptr_domains
    assert plan.forwarder_domains == config.skip.forwarder_domains
    assert plan.mail_from is not tx.null_sender  # never MAIL FROM for <>
    assert plan.helo is (config.policy.helo_check or tx.null_sender)
    assert plan.helo_refusing == refusing(config, tx, Identity.HELO)
    assert plan.mail_from_refusing == refusing(config, tx, Identity.MAIL_FROM)
    # MAIL FROM is skipped exactly after a HELO result that decides already;
    # dry-run evaluates it anyway.  A HELO pass never ends the evaluation.
    expected = {r for r in SpfResult if not config.policy.dry_run and refuses(config, tx, r)}
    assert plan.final_helo_results == expected and SpfResult.PASS not in expected


@SETTINGS
@given(configs, connections(ips), transactions, skip_facts)
def test_a_fact_found_is_a_skip(
    config: Config, conn: Connection, tx: Envelope, facts: SkipFacts
) -> None:
    plan = policy.plan(config, conn, tx)
    decision = policy.decide(config, plan, Outcomes(facts))
    if plan.skip is not None:
        assert decision.skip == plan.skip
        return
    helo = facts.helo_confirmed and plan.helo_name is not None
    assert (decision.skip is not None) is (
        helo or facts.forwarder is not None or facts.ptr is not None
    )
    if decision.skip is not None:  # in the documented order: HELO, forwarder, PTR
        expected = (
            SkipReason.HELO_NAME if helo
            else SkipReason.FORWARDER if facts.forwarder is not None
            else SkipReason.PTR_DOMAIN
        )  # fmt: skip
        assert decision.skip.reason is expected and decision.action is Action.SKIP
        assert decision.skip.text.isascii() and decision.skip.text.isprintable()


@SETTINGS
@given(
    configs,
    transactions,
    st.one_of(st.none(), outcomes(Identity.HELO)),
    st.one_of(st.none(), outcomes(Identity.MAIL_FROM)),
)
def test_decide(
    config: Config, tx: Envelope, helo: SpfOutcome | None, mfrom: SpfOutcome | None
) -> None:
    decision = decide(config, tx, helo, mfrom)
    assert decision.report == (mfrom or helo) and decision.stage is config.policy.reject_stage
    assert decision.intended in (Action.ACCEPT, Action.REJECT, Action.DEFER)
    if config.policy.dry_run:  # never refuses, says what it would have done
        assert decision.action is Action.ACCEPT and decision.reply is None
        real = dataclasses.replace(config.policy, dry_run=False)
        wet = decide(dataclasses.replace(config, policy=real), tx, helo, mfrom)
        assert (decision.intended, decision.decided_by) == (wet.intended, wet.decided_by)
        return
    assert decision.action is decision.intended
    if decision.action is Action.ACCEPT:
        assert decision.reply is None and decision.decided_by is None
        return
    assert_reply(decision.reply, decision.action)
    assert decision.reply is not None
    # HELO first: the first identity whose result refuses decides.
    if helo is not None and refuses(config, tx, helo.result):
        assert decision.decided_by is Identity.HELO
    deciding = helo if decision.decided_by is Identity.HELO else mfrom
    assert deciding is not None and deciding.result is not SpfResult.PASS
    assert (deciding.result is SpfResult.TEMPERROR) == (decision.action is Action.DEFER)
    if config.reply.enhanced_status_codes:
        expected = {SpfResult.TEMPERROR: "4.7.24", SpfResult.PERMERROR: "5.7.24"}
        assert decision.reply.status == expected.get(deciding.result, "5.7.23")
    else:
        assert decision.reply.status is None


@SETTINGS
@given(
    configs,
    connections(ips),
    transactions,
    outcomes(Identity.HELO),
    outcomes(Identity.MAIL_FROM),
)
@example(  # CVE-2019-20790: a HELO pass must not stand in for MAIL FROM's none
    Config(),
    Connection(ipaddress.ip_address("198.51.100.7"), "", "mx", "mail.example.org"),
    Envelope("victim@example.com"),
    SpfOutcome(Identity.HELO, SpfResult.PASS, "mail.example.org", "postmaster@mail.example.org"),
    SpfOutcome(Identity.MAIL_FROM, SpfResult.NONE, "example.com", "victim@example.com"),
)
def test_plan_then_decide_reports_the_sender(
    config: Config, conn: Connection, tx: Envelope, helo: SpfOutcome, mfrom: SpfOutcome
) -> None:
    """As the Session runs them: never a HELO pass as the sender's result
    (CVE-2019-20790), the HELO result for <>."""
    # A client no skip applies to (the skips have test_plan).
    config = dataclasses.replace(config, skip=SkipConfig(networks=(), authenticated=False))
    plan = policy.plan(config, conn, tx)
    helo_done = helo if plan.helo else None
    stop = helo_done is not None and helo_done.result in plan.final_helo_results
    mfrom_done = mfrom if plan.mail_from and not stop else None
    decision = policy.decide(config, plan, Outcomes(helo=helo_done, mail_from=mfrom_done))
    report = decision.report
    if tx.null_sender:
        assert report is helo
    elif config.policy.dry_run or not stop:
        assert report is mfrom
    else:  # MAIL FROM not evaluated: the HELO result refused the transaction
        assert report is helo and decision.decided_by is Identity.HELO
        assert decision.action in (Action.REJECT, Action.DEFER)


@SETTINGS
@given(policies, st.one_of(texts, st.sampled_from(["<Postmaster@X.example>", "abuse@example.net"])))
def test_recipient_exempt(policy_config: PolicyConfig, recipient: str) -> None:
    exempt = policy.recipient_exempt(policy_config, recipient)
    if recipient.lower().startswith("<postmaster@"):
        assert exempt is ("postmaster@" in policy_config.exempt_recipients)
    if recipient == "abuse@example.net":
        assert exempt is ("abuse@example.net" in policy_config.exempt_recipients)


@SETTINGS
@given(st.one_of(texts, domains, st.builds("{}.{}".format, hostnames, domains)), domain_lists)
def test_in_domains_matches_on_label_boundaries(name: str, listed: tuple[str, ...]) -> None:
    found = in_domains(name, listed)
    name = name.lower().rstrip(".")
    below = [d for d in listed if name == d or name.endswith("." + d)]
    assert found == (below[0] if below else None)


# --- the Session -----------------------------------------------------------

HOST_NAME = "host.example"
client_ips = rarely(st.none(), ips)  # mostly an SMTP client
Op = tuple[str, ...]


def operations(our_id: str) -> st.SearchStrategy[list[Op]]:
    """SMTP commands after connect, with any arguments: mostly whole
    transactions (MAIL, RCPTs, headers, then end of message or abort), and
    any command anywhere.  Headers include A-R that claim to be ours."""
    recipients = st.one_of(texts, st.sampled_from(["<postmaster@example.net>", "<a@example.net>"]))
    names = rarely(texts, st.sampled_from(["Authentication-Results", "authentication-results"]))
    values = st.one_of(spelled(our_id), texts, spelled(our_id), spelled("other.example"))
    hello = st.tuples(st.just("hello"), st.one_of(domains, texts))
    mail = st.tuples(
        st.just("mail"), mail_froms, auth_users, st.one_of(st.just("ORIGINATING"), texts)
    )
    rcpt = st.tuples(st.just("rcpt"), recipients)
    header = st.tuples(st.just("header"), names, values)
    forgery = st.tuples(st.just("header"), st.just("Authentication-Results"), spelled(our_id))
    end = st.tuples(st.sampled_from(["eom", "eom", "abort"]), texts)
    any_op = st.one_of(hello, mail, rcpt, header, end)
    transaction = st.builds(
        lambda *parts: [op for part in parts for op in part],
        st.lists(hello, max_size=1),
        st.lists(mail, min_size=1, max_size=1),
        st.lists(rcpt, max_size=3),
        st.one_of(st.lists(header, max_size=4), st.lists(forgery, min_size=2, max_size=3)),
        st.lists(end, max_size=1),
        st.lists(any_op, max_size=1),
    )
    return st.lists(transaction, min_size=1, max_size=3).map(
        lambda parts: [op for p in parts for op in p]
    )


def make_services(
    data: st.DataObject, metrics: Metrics, checked: list[Identity] | None = None
) -> Services:
    """A checker and a lookup whose answers hypothesis draws; `checked`
    collects the identities evaluated."""

    def check(query: SpfQuery, lookup_time: float) -> SpfOutcome:
        assert lookup_time > 0  # pyspf reads 0 as "no limit"
        if checked is not None:
            checked.append(query.identity)
        return data.draw(outcomes(query.identity))

    def lookup(name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        answer = data.draw(st.sampled_from(["none", "trouble", "client"]))
        if answer == "trouble":
            raise DnsTempError(f"DNS timeout looking up {name} {qtype}")
        if answer == "none":
            return []
        if qtype == "PTR":
            return [((name, qtype), data.draw(st.one_of(domains, texts)))]
        return [((name, qtype), str(data.draw(ips)))]

    evaluator = Evaluator(check, lookup, metrics, lookup_time=Config().dns.lookup_time)
    return Services(evaluator, metrics, host_name=HOST_NAME)


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def verdict_records() -> Iterator[list[logging.LogRecord]]:
    """The verdict lines logged meanwhile (the logger restored after)."""
    logger = logging.getLogger("spfmilter.verdicts")
    handler = Keep()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


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


# --- the adapter under pymilter's TestCtx ----------------------------------


ANSWERS = {Milter.CONTINUE, Milter.REJECT, Milter.TEMPFAIL}


def call(ctx: Ctx, op: Op) -> int:
    """One libmilter callback, arguments as pymilter's C module passes them."""
    if op[0] == "hello":
        return ctx._helo(op[1])
    if op[0] == "mail":
        ctx._setsymval("{auth_authen}", op[2])
        ctx._setsymval("{daemon_name}", op[3])
        return ctx._envfrom(op[1])
    if op[0] == "rcpt":
        return ctx._envrcpt(op[1])
    if op[0] == "header":
        return ctx._header(op[1], op[2])
    ctx._setsymval("i", op[1])
    if op[0] == "eom":
        ctx._msg = email.message.Message()
        return ctx._eom()
    return ctx._abort()


@contextlib.contextmanager
def connected(
    config: Config, services: Services, ip: IPAddress | None, name: str, j: str
) -> Iterator[Ctx]:
    """A connection to the adapter past its connect callback, closed at the end."""
    with verdict_records():
        ctx = Ctx(config, services)
        ctx._setsymval("j", j)
        ctx._negotiate()
        if ip is None:
            rc = ctx.step("connect", Milter.M_CONNECT, name, socket.AF_UNIX, "/run/submission")
        else:
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            rc = ctx.step("connect", Milter.M_CONNECT, name, family, (str(ip), 25))
        assert rc == Milter.NOREPLY  # negotiated without reply (SMFIP_NR_CONN)
        yield ctx
        assert ctx._close() == Milter.CONTINUE
    assert services.metrics.value("spfmilter_internal_errors_total") == 0  # no error boundary
    assert services.metrics.value("spfmilter_connections_in_flight") == 0


@SETTINGS
@given(st.data(), configs, client_ips, texts, hostnames)
def test_adapter(
    data: st.DataObject, config: Config, ip: IPAddress | None, name: str, j: str
) -> None:
    with connected(config, make_services(data, Metrics()), ip, name, j) as ctx:
        for op in data.draw(operations(authserv_id_key(config.headers.authserv_id or j))):
            replies, inserted = len(ctx.replies), len(ctx.inserted)
            rc = call(ctx, op)
            # HELO gets no reply at all (negotiated away: NOREPLY), nor do
            # headers when the Session reads them.
            if op[0] == "hello":
                assert rc == Milter.NOREPLY
            else:
                assert rc in (ANSWERS | {Milter.NOREPLY} if op[0] == "header" else ANSWERS)
            if rc in (Milter.REJECT, Milter.TEMPFAIL):  # with a reply libmilter takes
                assert len(ctx.replies) == replies + 1 and op[0] in ("mail", "rcpt")
                assert_setreply_ok(*ctx.replies[-1])
            if op[0] == "eom":  # at the top, at most one of each
                names = [field for field, _, idx in ctx.inserted[inserted:] if idx == 0]
                assert len(names) == len(set(names)) == len(ctx.inserted) - inserted


@SETTINGS
@given(texts, texts, st.sampled_from(Stage))
def test_adapter_refusal_carries_any_text(sender: str, explanation: str, stage: Stage) -> None:
    """Whatever MAIL FROM and the domain's explanation say, the refusal
    reaches libmilter with a reply it takes, at the configured stage."""

    def check(query: SpfQuery, lookup_time: float) -> SpfOutcome:
        sender = query.mail_from or f"postmaster@{query.helo}"
        return SpfOutcome(query.identity, SpfResult.FAIL, "x", sender, "-all", explanation)

    def no_dns(name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        raise AssertionError(f"unexpected DNS lookup {name} {qtype}")

    metrics = Metrics()
    services = Services(Evaluator(check, no_dns, metrics, lookup_time=20.0), metrics)
    config = dataclasses.replace(Config(), policy=PolicyConfig(reject_stage=stage))
    ip = ipaddress.ip_address("198.51.100.7")
    with connected(config, services, ip, "client.example", "mx.example") as ctx:
        assert call(ctx, ("hello", "mail.example")) == Milter.NOREPLY
        ops = [("mail", sender, "", ""), ("rcpt", "<a@example.net>")]
        rcs = [call(ctx, op) for op in ops]
        assert rcs == (
            [Milter.REJECT, Milter.CONTINUE]
            if stage is Stage.MAIL
            else [Milter.CONTINUE, Milter.REJECT]
        )
        (reply,) = ctx.replies
        assert_setreply_ok(*reply)
