"""Property-based tests of the adapter under pymilter's TestCtx, for any
sequence of commands with any arguments: every callback answers CONTINUE,
REJECT or TEMPFAIL, never reaches the error boundary, and every refusal
carries a reply libmilter takes."""

from __future__ import annotations

import contextlib
import dataclasses
import email.message
import ipaddress
import socket
from collections.abc import Iterator, Sequence

import Milter
from hypothesis import given
from hypothesis import strategies as st

from spfmilter.config.schema import (
    Config,
    PolicyConfig,
)
from spfmilter.core.headers import (
    authserv_id_key,
)
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    IPAddress,
    SpfOutcome,
    SpfQuery,
    SpfResult,
    Stage,
)
from spfmilter.core.session import Services
from spfmilter.evaluation.evaluator import Evaluator
from spfmilter.evaluation.resolver import Record
from tests.support.checks import assert_setreply_ok, verdict_records
from tests.support.strategies import (
    SETTINGS,
    Op,
    configs,
    hostnames,
    ips,
    make_services,
    operations,
    rarely,
    texts,
)
from tests.support.testctx import Ctx

client_ips = rarely(st.none(), ips)  # mostly an SMTP client


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
