"""What each line counts for: verdicts, would-be refusals, rescues, the
rankings, likely forwarders and their config lines."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from spfmilter.config.loading import load_config
from spfmilter.report.summary import Summary
from spfmilter.report.tally import Tally
from tests.support.verdictlines import skip, verdict

POSTFIX = "Dec  2 10:15:01 mx postfix/smtpd[123]: connect from unknown[203.0.113.9]"


def summarize(
    lines: list[str], reject: tuple[str, ...] = ("fail",), capacity: int = 100
) -> Summary:
    tally = Tally(reject, capacity)
    tally.feed(lines)
    return tally.summary(["mail.log"])


def by_result(summary: Summary) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(v.identity, v.result): (v.accept, v.reject, v.defer) for v in summary.by_result}


def test_counts_by_identity_result_and_action() -> None:
    s = summarize(
        [
            POSTFIX,
            verdict(result="pass"),
            verdict(result="pass"),
            verdict(result="fail", action="reject"),
            verdict(result="fail", action="reject", dry_run="yes"),
            verdict(result="temperror", action="defer"),
            verdict(identity="helo", result="fail", action="reject"),
            skip("SASL authenticated as bob"),
            "garbage",
        ]
    )
    assert (s.lines, s.verdicts, s.skipped, s.other_lines, s.dry_run) == (9, 6, 1, 2, 1)
    assert by_result(s) == {
        ("mailfrom", "pass"): (2, 0, 0),
        ("mailfrom", "fail"): (0, 2, 0),
        ("mailfrom", "temperror"): (0, 0, 1),
        ("helo", "fail"): (0, 1, 0),
    }
    # MAIL FROM first, results in RFC 7208 order.
    assert [(v.identity, v.result) for v in s.by_result] == [
        ("mailfrom", "pass"),
        ("mailfrom", "fail"),
        ("mailfrom", "temperror"),
        ("helo", "fail"),
    ]
    assert s.by_result[0].total == 2


def test_what_would_be_refused() -> None:
    lines = [
        verdict("a@fail.example", "fail", "reject"),
        # Accepted today (mailfrom_reject is empty, or a dry run): counts.
        verdict("b@fail.example", "fail", "accept"),
        verdict("c@soft.example", "softfail"),
        verdict("d@none.example", "none"),
        verdict("e@temp.example", "temperror", "defer"),
        # HELO decided: counted apart, whatever --reject says.
        verdict("f@helo.example", "fail", "reject", identity="helo"),
        skip("client 203.0.113.10 is a trusted relay"),
    ]
    s = summarize(lines)
    assert (s.refusals.total, s.helo_refused, s.reject) == (2, 1, ("fail",))
    assert [d.domain for d in s.domains] == ["fail.example"]
    s = summarize(lines, ("softfail", "fail", "none"))
    assert (s.refusals.total, s.helo_refused, s.reject) == (4, 1, ("fail", "softfail", "none"))
    assert sorted(d.domain for d in s.domains) == ["fail.example", "none.example", "soft.example"]
    s = summarize(lines, ())
    assert (s.refusals.total, s.domains, s.reject) == (0, (), ())


def test_rescues() -> None:
    s = summarize(
        [
            verdict("a@x.example", "fail", rescue="dkim", rescue_domain="x.example"),
            verdict("a@x.example", "fail", rescue="dkim", rescue_domain="x.example"),
            verdict("b@y.example", "fail", rescue="arc", rescue_domain="sealer.example"),
            verdict("c@y.example", "fail", "reject", rescue="none", rescue_reason="no signature"),
            verdict("d@y.example", "fail", "reject", rescue="oversized"),
            verdict("e@y.example", "fail", "reject"),
            verdict("f@y.example", "fail", "reject", rescue="later"),
            verdict("g@y.example", "fail", "reject", exempt_recipients="postmaster@x"),
            # Not refused by --reject: its rescue does not count.
            verdict("h@y.example", "softfail", rescue="dkim", rescue_domain="y.example"),
        ]
    )
    r = s.refusals
    assert (r.total, r.rescued_dkim, r.rescued_arc, r.not_rescued, r.oversized) == (8, 2, 1, 1, 1)
    assert (r.not_evaluated, r.still_refused, r.exempt_recipients) == (3, 5, 1)
    assert [(x.method, x.domain, x.count) for x in s.rescuers] == [
        ("dkim", "x.example", 2),
        ("arc", "sealer.example", 1),
    ]
    assert [(d.domain, d.refused, d.rescued) for d in s.domains] == [
        ("y.example", 6, 1),
        ("x.example", 2, 2),
    ]


def test_a_temporary_rescue_is_a_deferral() -> None:
    # rescue=temporary: the transaction was deferred, neither refused nor
    # rescued; the sender's retry comes back as a verdict of its own.
    s = summarize(
        [
            verdict("a@x.example", "fail", "defer", rescue="temporary", rescue_reason="dns"),
            verdict("b@x.example", "fail", "defer", rescue="temporary", rescue_reason="dns"),
            verdict("c@y.example", "fail", "reject", rescue="none", rescue_reason="no_signature"),
            verdict("d@y.example", "fail", "reject", rescue="oversized"),
            verdict("e@z.example", "fail", "accept", rescue="dkim", rescue_domain="z.example"),
        ]
    )
    r = s.refusals
    assert (r.total, r.deferred, r.not_rescued, r.oversized, r.rescued_dkim) == (5, 2, 1, 1, 1)
    assert (r.still_refused, r.not_evaluated) == (2, 0)
    assert [(d.domain, d.refused) for d in s.domains] == [("y.example", 2), ("z.example", 1)]
    assert [(m.outcome, m.reason, m.count) for m in s.misses] == [
        ("temporary", "dns", 2),
        ("none", "no_signature", 1),
        ("oversized", "-", 1),
    ]
    assert by_result(s)[("mailfrom", "fail")] == (1, 2, 2)


def test_lines_without_rescue_fields_read_as_today() -> None:
    # Today's daemon writes no client_name= and no rescue= fields.
    s = summarize([verdict("a@x.example", "fail", "reject")] * 3)
    r = s.refusals
    assert (r.total, r.not_evaluated, r.still_refused, r.deferred) == (3, 3, 3, 0)
    assert s.misses == () and s.rescuers == ()
    assert s.clients[0].client_name is None


def test_clients_and_their_names() -> None:
    s = summarize(
        [
            verdict("a@a.example", "fail", client_ip="203.0.113.1", client_name="unknown"),
            verdict("a@b.example", "fail", client_ip="203.0.113.1", client_name="mx.a.example"),
            verdict("a@c.example", "pass", client_ip="203.0.113.1", client_name="unknown"),
            verdict("a@a.example", "fail", client_ip="203.0.113.2", client_name="[203.0.113.2]"),
            verdict("a@a.example", "fail", "reject", identity="helo", client_ip="203.0.113.3"),
            verdict("a@a.example", "pass", client_ip="203.0.113.4"),
        ]
    )
    clients = {c.client_ip: c for c in s.clients}
    assert list(clients) == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]  # refusing ones only
    one = clients["203.0.113.1"]
    assert (one.client_name, one.verdicts, one.mailfrom, one.refused, one.domains) == (
        "mx.a.example",
        3,
        3,
        2,
        2,
    )
    assert clients["203.0.113.2"].client_name is None
    assert (clients["203.0.113.3"].helo_refused, clients["203.0.113.3"].mailfrom) == (1, 0)
    assert s.clients_seen == 3


def forwarding(ip: str, domains: list[str], passing: int = 0, **extra: str) -> list[str]:
    lines = [verdict(f"u@{d}", "fail", "reject", client_ip=ip, **extra) for d in domains]
    return lines + [verdict("u@own.example", "pass", client_ip=ip, **extra)] * passing


UNRELATED = ["a.example", "b.example.org", "c.co.uk", "d.example.net", "e.example.com"]


def test_likely_forwarders() -> None:
    s = summarize(
        [
            *forwarding("203.0.113.7", UNRELATED, passing=20),  # 5 of 25: 20 %
            *forwarding("203.0.113.8", UNRELATED, client_name="mx1.Forward.example"),
            *forwarding("2001:db8::8", UNRELATED * 3),
            # Five domains of one organization: not unrelated.
            *forwarding("203.0.113.9", [f"s{n}.bank.example" for n in range(5)]),
            # A big provider: most of its mail passes.
            *forwarding("203.0.113.10", UNRELATED, passing=21),
            # Four is not enough.
            *forwarding("203.0.113.11", UNRELATED[:4]),
            *forwarding("bogus", UNRELATED),
        ]
    )
    found = {f.client.client_ip: f for f in s.forwarders}
    assert list(found) == ["2001:db8::8", "203.0.113.7", "203.0.113.8", "bogus"]
    assert found["203.0.113.7"].share == pytest.approx(0.2)
    assert found["203.0.113.7"].config == "trusted_relays = 203.0.113.7/32"
    assert found["2001:db8::8"].config == "trusted_relays = 2001:db8::8/128"
    assert found["203.0.113.8"].config == "ptr_domains = mx1.forward.example"
    assert found["bogus"].config is None
    assert s.forwarder_config == (
        "[skip]\n"
        "trusted_relays = 2001:db8::8/128, 203.0.113.7/32\n"
        "ptr_domains = mx1.forward.example\n"
    )


def test_the_forwarder_section_is_a_configuration(tmp_path: Path) -> None:
    # What the report says to paste reads as spfmilter.cfg, keys and values.
    s = summarize(
        [
            *forwarding("203.0.113.7", UNRELATED),
            *forwarding("2001:db8::8", UNRELATED),
            *forwarding("203.0.113.8", UNRELATED, client_name="mx1.Forward.example"),
        ]
    )
    path = tmp_path / "spfmilter.cfg"
    path.write_text(s.forwarder_config)
    skips = load_config(path).skip
    assert skips.trusted_relays == (
        ipaddress.ip_network("2001:db8::8/128"),
        ipaddress.ip_network("203.0.113.7/32"),
    )
    assert skips.ptr_domains == ("mx1.forward.example",)


def test_the_distinct_organizations_of_a_client_are_capped() -> None:
    s = summarize(forwarding("203.0.113.7", [f"d{n}.example" for n in range(40)]))
    assert s.clients[0].domains == s.limits.domains_limit == 16
    assert summarize([]).forwarder_config == ""


def test_skip_reasons() -> None:
    s = summarize(
        [
            skip("SASL authenticated as bob"),
            skip("SASL authenticated as "),
            skip("localhost is always allowed"),
            skip("localhost is always allowed, or so"),
            skip("client 203.0.113.1 in skip networks"),
            skip("MTA macro {daemon_name}=ORIGINATING"),
            skip("a reason of a later release"),
        ]
    )
    assert [(x.reason, x.count) for x in s.skips] == [
        ("localhost is always allowed", 1),
        ("client ... in skip networks", 1),
        ("SASL authenticated as ...", 2),
        ("MTA macro ...", 1),
        ("other reasons", 2),
    ]
    assert s.refusals.total == 0


def test_lines_that_do_not_read_are_counted_apart() -> None:
    s = summarize(
        [
            verdict(result="maybe"),
            verdict(identity="rcpt"),
            verdict(action="shrug"),
            'NOQUEUE: verdict sender="cut short',
        ]
    )
    assert (s.unreadable, s.verdicts, s.by_result, s.other_lines) == (4, 0, (), 0)


def test_counts_become_approximate_past_the_capacity() -> None:
    lines = [
        verdict(f"u@d{n}.example", "fail", client_ip=f"203.0.113.{n % 250}") for n in range(50)
    ]
    lines += [verdict("u@heavy.example", "fail")] * 30
    exact = summarize(lines, capacity=100)
    assert exact.exact and all(d.error == 0 for d in exact.domains)
    rough = summarize(lines, capacity=5)
    assert not rough.exact and rough.limits.capacity == 5
    assert rough.domains[0].domain == "heavy.example"
    assert rough.domains[0].refused - rough.domains[0].error <= 30 <= rough.domains[0].refused
    assert len(rough.domains) <= 10


def test_values_from_the_log_are_made_visible() -> None:
    s = summarize(
        [
            verdict("a@evil\x1b[31m.example", "fail", client_ip="1.2.3.4\u202e"),
            '{"logger": "spfmilter.verdicts", "message": "NOQUEUE: verdict conn=2", "identity": '
            '"mailfrom", "result": "fail", "action": "reject", "sender": "b@x\\u0007.example", '
            '"client_ip": "5.6.7.8", "client_name": "a\\u0000b"}',
        ]
    )
    assert [d.domain for d in s.domains] == ["evil\\x1b[31m.example", "x\\x07.example"]
    assert {c.client_ip for c in s.clients} == {"1.2.3.4\\u202e", "5.6.7.8"}
    assert {c.client_name for c in s.clients} == {None, "a\\x00b"}


def test_reject_must_name_rejectable_results() -> None:
    with pytest.raises(ValueError, match="pass"):
        Tally({"pass"})
