"""What each verdict line counts for, and the summary of them all.

This module owns the report's judgements, one record at a time, in bounded
memory:

- Every verdict counts by identity, result and logged action.  A dry-run
  line (dry_run=yes) logs the action that would have been taken and counts
  as that.  Skipped transactions count by reason, never as refused.
- Would refuse: a transaction whose deciding identity is MAIL FROM and whose
  result is one of the --reject results, as `[policy] mailfrom_reject`
  decides.  Transactions that the HELO identity decided to reject (HELO is
  checked first; MAIL FROM then goes unevaluated) are counted apart: no
  MAIL FROM setting changes them.  Of the would-be refusals, those with
  rescue=dkim or rescue=arc were (or, in dry run, would be) rescued;
  those with rescue=temporary were deferred (a temporary error kept rescue
  from deciding): neither refused nor rescued, and not counted by domain
  or client, since the sender's retry is logged again.  The rest would
  still be refused.  Why rescue did not save one (rescue_reason=) is
  counted by outcome and reason.
- By sender domain and by client: the heaviest kept in a TopK each, with
  the per-client count of distinct sender organizations (domains.py) that
  it would be refused for, capped at DOMAINS_LIMIT.
- Likely forwarder: a client that would be refused for at least
  FORWARDER_DOMAINS unrelated organizations, in at least FORWARDER_SHARE of
  its MAIL FROM verdicts.  The share keeps out large providers whose own
  users' mail passes: trusted_relays would skip SPF for all of their mail.
  Its config line names the client's name when the log has one (Postfix's
  client name is forward-confirmed, so `[skip] ptr_domains` can rely on
  it), else its address for `[skip] trusted_relays`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Hashable, Iterable
from typing import TypeVar

from spfmilter.printable import escape
from spfmilter.report import records
from spfmilter.report.domains import host_name, organization, sender_domain
from spfmilter.report.summary import (
    Client,
    Domain,
    Forwarder,
    Limits,
    Refusals,
    RescueMiss,
    Rescuer,
    Skips,
    Summary,
    Verdicts,
    config_section,
)
from spfmilter.report.topk import TopK

K = TypeVar("K", bound=Hashable)

# The log's vocabulary (RFC 7208 section 2.6 results; spfmilter's actions).
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
REJECTABLE = ("fail", "softfail", "neutral", "none", "permerror")  # as mailfrom_reject
IDENTITIES = ("mailfrom", "helo")
ACTIONS = ("accept", "reject", "defer")

CAPACITY = 10_000  # names kept per TopK (twice that at most, between drops)
DOMAINS_LIMIT = 16  # distinct sender organizations counted per client
FORWARDER_DOMAINS = 5
FORWARDER_SHARE = 0.2
NAME_LIMIT = 255  # characters kept of a name (a DNS name has at most 253)
ROWS = 100  # rows of each ranking in the summary

# The reasons spfmilter writes for a skip, "{}" standing for the detail.
SKIP_REASONS = (
    "no client IP address (local submission)",
    "localhost is always allowed",
    "client {} in skip networks",
    "SASL authenticated as {}",
    "client {} is a trusted relay",
    "HELO {} resolves to the client",
    "client passes SPF of forwarder {}",
    "client's confirmed PTR name {}",
    "sender domain {} is exempt",
    "MTA macro {}",
)
OTHER_REASONS = "other reasons"
_REASONS = [
    (re.compile(".*".join(map(re.escape, template.split("{}"))), re.DOTALL), template)
    for template in SKIP_REASONS
]
RESCUES = ("dkim", "arc", "none", "oversized", "temporary")
RESCUED = ("dkim", "arc")
DEFERRED = "temporary"
# Postfix's name for a client whose name did not verify; Sendmail's is
# the address in brackets.
_NO_NAME = "unknown"


class _Domain:
    __slots__ = ("error", "rescued", "weight")

    def __init__(self) -> None:
        self.weight = self.error = self.rescued = 0


class _Client:
    __slots__ = (
        "error",
        "helo_refused",
        "mailfrom",
        "name",
        "orgs",
        "refused",
        "rescued",
        "weight",
    )

    def __init__(self) -> None:
        self.weight = self.error = self.mailfrom = self.refused = 0
        self.rescued = self.helo_refused = 0
        self.name: str | None = None
        self.orgs: set[str] = set()


class _Count:
    __slots__ = ("error", "weight")

    def __init__(self) -> None:
        self.weight = self.error = 0


class Tally:
    """The counts of every record fed so far."""

    def __init__(self, reject: Iterable[str], capacity: int = CAPACITY) -> None:
        self.reject = frozenset(reject)
        self.capacity = capacity
        if not self.reject <= set(REJECTABLE):
            raise ValueError(f"not a MAIL FROM result that can reject: {self.reject}")
        self.lines = 0
        self.other_lines = 0
        self.unreadable = 0
        self.dry_run = 0
        self.skips: dict[str, int] = {}
        self.helo_refused = 0
        self.rescue: dict[str | None, int] = {}
        self.exempt = 0
        self._verdicts: dict[tuple[str | None, str | None, str | None], int] = {}
        self._domains = TopK(capacity, _Domain)
        self._clients = TopK(capacity, _Client)
        self._rescuers = TopK(capacity, _Count)
        self._misses = TopK(capacity, _Count)

    def feed(self, lines: list[str]) -> None:
        """Count a batch of log lines (or journal messages)."""
        self.lines += len(lines)
        parse = records.parse
        add = self.add
        other = 0
        for line in lines:
            # Every record holds one of these (a JSON one in its message):
            # most lines of a mail log are passed over at the cost of a
            # substring search.
            if ": verdict " not in line and ": SPF skipped - " not in line:
                other += 1
                continue
            fields = parse(line)
            if fields is None:
                other += 1
            else:
                add(fields)
        self.other_lines += other

    def add(self, fields: records.Fields) -> None:
        """Count one record's fields."""
        action = fields.get("action")
        if action == "skip":
            self._skip(fields.get("reason", ""))
            return
        key = (fields.get("identity"), fields.get("result"), action)
        count = self._verdicts.get(key)
        if count is None:
            if key[0] not in IDENTITIES or key[1] not in RESULTS or action not in ACTIONS:
                self.unreadable += 1
                return
            count = 0
        self._verdicts[key] = count + 1
        if fields.get("dry_run") == "yes":
            self.dry_run += 1
        client = self._clients.hit(fields.get("client_ip", "-")[:NAME_LIMIT])
        name = fields.get("client_name")
        if name and name != _NO_NAME and not name.startswith("["):
            client.name = name[:NAME_LIMIT]
        if key[0] == "helo":
            if action == "reject":
                self.helo_refused += 1
                client.helo_refused += 1
            return
        client.mailfrom += 1
        if key[1] in self.reject:
            self._refuse(fields, client)

    def _refuse(self, fields: records.Fields, client: _Client) -> None:
        rescue = fields.get("rescue")
        if rescue not in RESCUES:
            rescue = None  # not evaluated
        self.rescue[rescue] = self.rescue.get(rescue, 0) + 1
        rescued = rescue in RESCUED
        if rescued:
            self._rescuers.hit(f"{rescue} {fields.get('rescue_domain', '-')[:NAME_LIMIT]}")
        elif rescue is not None:
            self._misses.hit(f"{rescue} {fields.get('rescue_reason', '-')[:NAME_LIMIT]}")
        if rescue == DEFERRED:
            return
        if "exempt_recipients" in fields:
            self.exempt += 1
        domain = sender_domain(fields.get("sender", ""))[:NAME_LIMIT]
        self._domains.hit(domain).rescued += rescued
        client.refused += 1
        client.rescued += rescued
        if len(client.orgs) < DOMAINS_LIMIT:
            client.orgs.add(organization(domain))

    def _skip(self, reason: str) -> None:
        label = next((t for pattern, t in _REASONS if pattern.fullmatch(reason)), OTHER_REASONS)
        self.skips[label] = self.skips.get(label, 0) + 1

    def merge(self, other: Tally) -> None:
        """Take in what `other` counted (another part of the same input,
        counted with the same --reject)."""
        self.lines += other.lines
        self.other_lines += other.other_lines
        self.unreadable += other.unreadable
        self.dry_run += other.dry_run
        self.helo_refused += other.helo_refused
        self.exempt += other.exempt
        _add_counts(self.skips, other.skips)
        _add_counts(self.rescue, other.rescue)
        _add_counts(self._verdicts, other._verdicts)
        self._domains.merge(other._domains, _add_domain)
        self._clients.merge(other._clients, _add_client)
        self._rescuers.merge(other._rescuers, lambda mine, theirs: None)
        self._misses.merge(other._misses, lambda mine, theirs: None)

    @property
    def verdicts(self) -> int:
        return sum(self._verdicts.values())

    def summary(self, inputs: Iterable[str]) -> Summary:
        """The report of everything counted."""
        clients = [_client(ip, record) for ip, record in self._clients.ranked()]
        refusing = [c for c in clients if c.refused or c.helo_refused]
        refusing.sort(key=lambda c: (-c.refused, -c.helo_refused))
        forwarders = [
            Forwarder(c, c.refused / c.mailfrom, _config_line(c))
            for c in clients
            if c.domains >= FORWARDER_DOMAINS and c.refused >= FORWARDER_SHARE * c.mailfrom
        ]
        forwarders.sort(key=lambda f: (-f.client.domains, -f.client.refused))
        rescued = sum(self.rescue.get(kind, 0) for kind in RESCUED)
        deferred = self.rescue.get(DEFERRED, 0)
        refused = sum(self.rescue.values())
        return Summary(
            inputs=tuple(escape(name) for name in inputs),
            reject=tuple(r for r in REJECTABLE if r in self.reject),
            lines=self.lines,
            other_lines=self.other_lines,
            unreadable=self.unreadable,
            verdicts=self.verdicts,
            dry_run=self.dry_run,
            skipped=sum(self.skips.values()),
            skips=tuple(
                Skips(label.replace("{}", "..."), self.skips[label])
                for label in (*SKIP_REASONS, OTHER_REASONS)
                if label in self.skips
            ),
            by_result=self._by_result(),
            refusals=Refusals(
                total=refused,
                rescued_dkim=self.rescue.get("dkim", 0),
                rescued_arc=self.rescue.get("arc", 0),
                not_rescued=self.rescue.get("none", 0),
                oversized=self.rescue.get("oversized", 0),
                deferred=deferred,
                not_evaluated=self.rescue.get(None, 0),
                still_refused=refused - rescued - deferred,
                exempt_recipients=self.exempt,
            ),
            helo_refused=self.helo_refused,
            domains=tuple(
                Domain(escape(name), d.weight, d.rescued, d.error)
                for name, d in self._domains.ranked()[:ROWS]
            ),
            domains_seen=len(self._domains),
            clients=tuple(refusing[:ROWS]),
            clients_seen=len(refusing),
            rescuers=tuple(_rescuer(key, r) for key, r in self._rescuers.ranked()[:ROWS]),
            misses=tuple(_miss(key, r) for key, r in self._misses.ranked()[:ROWS]),
            forwarders=tuple(forwarders[:ROWS]),
            forwarder_config=config_section(forwarders[:ROWS]),
            exact=all(
                kept.exact for kept in (self._domains, self._clients, self._rescuers, self._misses)
            ),
            limits=Limits(self.capacity, DOMAINS_LIMIT, FORWARDER_DOMAINS, FORWARDER_SHARE),
        )

    def _by_result(self) -> tuple[Verdicts, ...]:
        rows = []
        for identity in IDENTITIES:
            for result in RESULTS:
                accept, reject, defer = (
                    self._verdicts.get((identity, result, a), 0) for a in ACTIONS
                )
                if accept or reject or defer:
                    total = accept + reject + defer
                    rows.append(Verdicts(identity, result, accept, reject, defer, total))
        return tuple(rows)


def _add_counts(mine: dict[K, int], theirs: dict[K, int]) -> None:
    for key, count in theirs.items():
        mine[key] = mine.get(key, 0) + count


def _add_domain(mine: _Domain, theirs: _Domain) -> None:
    mine.rescued += theirs.rescued


def _add_client(mine: _Client, theirs: _Client) -> None:
    mine.mailfrom += theirs.mailfrom
    mine.refused += theirs.refused
    mine.rescued += theirs.rescued
    mine.helo_refused += theirs.helo_refused
    mine.name = mine.name or theirs.name
    for org in theirs.orgs:
        if len(mine.orgs) >= DOMAINS_LIMIT:
            break
        mine.orgs.add(org)


def _client(ip: str, record: _Client) -> Client:
    return Client(
        client_ip=escape(ip),
        client_name=escape(record.name) if record.name else None,
        verdicts=record.weight,
        mailfrom=record.mailfrom,
        refused=record.refused,
        rescued=record.rescued,
        helo_refused=record.helo_refused,
        domains=len(record.orgs),
        error=record.error,
    )


def _rescuer(key: str, record: _Count) -> Rescuer:
    method, _, domain = key.partition(" ")
    return Rescuer(method, escape(domain), record.weight, record.error)


def _miss(key: str, record: _Count) -> RescueMiss:
    outcome, _, reason = key.partition(" ")
    return RescueMiss(outcome, escape(reason), record.weight, record.error)


def _config_line(client: Client) -> str | None:
    if client.client_name and host_name(client.client_name):
        return f"ptr_domains = {client.client_name.lower()}"
    try:
        address = ipaddress.ip_address(client.client_ip)
    except ValueError:
        return None
    return f"trusted_relays = {address}/{address.max_prefixlen}"
