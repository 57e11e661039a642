"""What a report says, as values: the one shape every output renders.

This module owns the report's data (the JSON output is these values as
they are, so its names are the JSON keys).  Every value taken from a log
line passes through spfmilter.printable.escape once, when the summary is
made, so no output can carry a control character to a terminal (an escape
sequence, a carriage return that hides a line, a bidirectional override)
whatever a sender address held.

It also owns each ranking's columns, once for the text and the HTML
alike: their order, headings, and what each cell says of an item, so that
a column shown in one output cannot be missing from the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class Verdicts:
    """Transactions of one identity and result, by logged action (in dry
    run: the action that would have been taken)."""

    identity: str
    result: str
    accept: int
    reject: int
    defer: int
    total: int


@dataclass(frozen=True)
class Skips:
    """Skipped transactions of one reason ("..." stands for its detail)."""

    reason: str
    count: int


@dataclass(frozen=True)
class Refusals:
    """The transactions the MAIL FROM results of --reject would refuse,
    and what rescue by DKIM or ARC did or would do for them: rescued (by
    method), evaluated and not rescued, too large to evaluate, deferred (a
    temporary error kept rescue from deciding: neither refused nor
    rescued; the retry is logged again), or not evaluated (no rescue=
    field: rescue was off, or the running policy did not reject that
    result)."""

    total: int
    rescued_dkim: int
    rescued_arc: int
    not_rescued: int
    oversized: int
    deferred: int
    not_evaluated: int
    still_refused: int
    exempt_recipients: int  # of them with recipients exempt from rejection


@dataclass(frozen=True)
class Domain:
    """A sender domain's would-be refusals (`error`: see TopK)."""

    domain: str
    refused: int
    rescued: int
    error: int


@dataclass(frozen=True)
class Client:
    """One client: its SPF verdicts, MAIL FROM verdicts, would-be refusals
    and rescues, HELO refusals, and the distinct organizations of the sender
    domains it would be refused for (counted up to `domains_limit`)."""

    client_ip: str
    client_name: str | None
    verdicts: int
    mailfrom: int
    refused: int
    rescued: int
    helo_refused: int
    domains: int
    error: int


@dataclass(frozen=True)
class Rescuer:
    """Rescues by one method and domain (DKIM d=, or the ARC sealer)."""

    method: str
    domain: str
    count: int
    error: int


@dataclass(frozen=True)
class RescueMiss:
    """Would-be refusals that rescue did not save, by its outcome (none,
    oversized, temporary) and the reason logged (rescue_reason=, "-" when
    none was)."""

    outcome: str
    reason: str
    count: int
    error: int


@dataclass(frozen=True)
class Forwarder:
    """A likely forwarder and the [skip] line that would exempt it."""

    client: Client
    share: float  # its would-be refusals over its MAIL FROM verdicts
    config: str | None  # "trusted_relays = 192.0.2.7/32" or "ptr_domains = ..."


@dataclass(frozen=True)
class Limits:
    """The bounds and thresholds the report was made with."""

    capacity: int  # domains, clients, rescuers kept (each)
    domains_limit: int  # distinct organizations counted per client
    forwarder_domains: int  # a forwarder fails for at least this many
    forwarder_share: float  # ... in at least this share of its MAIL FROM verdicts


@dataclass(frozen=True)
class Summary:
    """Everything a report shows."""

    inputs: tuple[str, ...]
    reject: tuple[str, ...]
    lines: int
    other_lines: int
    unreadable: int  # lines that start as verdicts but whose fields do not read
    verdicts: int
    dry_run: int
    skipped: int
    skips: tuple[Skips, ...]
    by_result: tuple[Verdicts, ...]
    refusals: Refusals
    helo_refused: int
    domains: tuple[Domain, ...]
    domains_seen: int  # distinct domains kept (all of them when exact)
    clients: tuple[Client, ...]  # those with refusals, MAIL FROM or HELO
    clients_seen: int  # such clients kept (all of them when exact)
    rescuers: tuple[Rescuer, ...]
    misses: tuple[RescueMiss, ...]
    forwarders: tuple[Forwarder, ...]
    forwarder_config: str  # the [skip] section for `forwarders`, "" for none
    exact: bool  # no count is approximate
    limits: Limits


def figure(count: int, error: int = 0) -> str:
    """A count for people: thousands separated, "~" in front when it may
    be off (its error is not 0)."""
    return f"~{count:,}" if error else f"{count:,}"


def _organizations(summary: Summary, count: int) -> str:
    """A client's count of distinct organizations, "16+" at the limit."""
    return f"{count}+" if count >= summary.limits.domains_limit else str(count)


def forwarder_rule(summary: Summary) -> str:
    """What makes a likely forwarder, in words."""
    limits = summary.limits
    return (
        f"refused for at least {limits.forwarder_domains} unrelated sender domains, in at "
        f"least {limits.forwarder_share:.0%} of their MAIL FROM verdicts"
    )


def accuracy(summary: Summary) -> str:
    """Whether counts are exact, and how far off a marked one may be."""
    if summary.exact:
        return "All counts are exact."
    return (
        f"Counts marked ~ are approximate: more than {2 * summary.limits.capacity:,} sender "
        "domains, clients, rescuers or rescue reasons were seen, and only the most frequent "
        "are kept.  A marked count may be off by at most its error (in the JSON output); a "
        "name not listed was less frequent than every one listed."
    )


def config_section(forwarders: Sequence[Forwarder]) -> str:
    """The [skip] section for `forwarders`, one line per key: what a
    reader is shown is what the section holds, no more."""
    values: dict[str, list[str]] = {}
    for forwarder in forwarders:
        if forwarder.config:
            key, _, value = forwarder.config.partition(" = ")
            if value not in values.setdefault(key, []):
                values[key].append(value)
    if not values:
        return ""
    lines = [f"{key} = {', '.join(names)}" for key, names in sorted(values.items(), reverse=True)]
    return "[skip]\n" + "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class Column(Generic[Item]):
    """One column of a ranking: its heading, its cell's text for an item
    (plain text, shortened or escaped by each output as its format needs),
    and whether it holds a number (aligned right) or a name."""

    heading: str
    cell: Callable[[Summary, Item], str]
    number: bool = False


def _of_client(column: Column[Client]) -> Column[Forwarder]:
    """A client's column, for the forwarder that client is."""
    return Column(column.heading, lambda s, f: column.cell(s, f.client), column.number)


_CLIENT_IP = Column[Client]("client", lambda _, c: c.client_ip)
_CLIENT_NAME = Column[Client]("name", lambda _, c: c.client_name or "-")
_REFUSED = Column[Client]("refused", lambda _, c: figure(c.refused, c.error), number=True)
_RESCUED = Column[Client]("rescued", lambda _, c: figure(c.rescued), number=True)
_DOMAINS = Column[Client]("domains", lambda s, c: _organizations(s, c.domains), number=True)

VERDICT_COLUMNS: tuple[Column[Verdicts], ...] = (
    Column("identity", lambda _, v: v.identity),
    Column("result", lambda _, v: v.result),
    Column("accept", lambda _, v: figure(v.accept), number=True),
    Column("reject", lambda _, v: figure(v.reject), number=True),
    Column("defer", lambda _, v: figure(v.defer), number=True),
    Column("total", lambda _, v: figure(v.total), number=True),
)
SKIP_COLUMNS: tuple[Column[Skips], ...] = (
    Column("reason", lambda _, k: k.reason),
    Column("count", lambda _, k: figure(k.count), number=True),
)
DOMAIN_COLUMNS: tuple[Column[Domain], ...] = (
    Column("sender domain", lambda _, d: d.domain or "(none)"),
    Column("refused", lambda _, d: figure(d.refused, d.error), number=True),
    Column("rescued", lambda _, d: figure(d.rescued), number=True),
)
CLIENT_COLUMNS: tuple[Column[Client], ...] = (
    _CLIENT_IP,
    _CLIENT_NAME,
    _REFUSED,
    _RESCUED,
    Column("MAIL FROM", lambda _, c: figure(c.mailfrom, c.error), number=True),
    _DOMAINS,
    Column("HELO refused", lambda _, c: figure(c.helo_refused), number=True),
)
RESCUER_COLUMNS: tuple[Column[Rescuer], ...] = (
    Column("method", lambda _, r: r.method),
    Column("domain", lambda _, r: r.domain),
    Column("rescued", lambda _, r: figure(r.count, r.error), number=True),
)
MISS_COLUMNS: tuple[Column[RescueMiss], ...] = (
    Column("outcome", lambda _, m: m.outcome),
    Column("reason", lambda _, m: m.reason),
    Column("count", lambda _, m: figure(m.count, m.error), number=True),
)
FORWARDER_COLUMNS: tuple[Column[Forwarder], ...] = (
    *map(_of_client, (_CLIENT_IP, _CLIENT_NAME, _DOMAINS, _REFUSED)),
    Column("share", lambda _, f: f"{f.share:.0%}", number=True),
    _of_client(_RESCUED),
    Column("config", lambda _, f: f.config or "-"),
)
