"""Every configuration key, declared once, and the Config they make up.

This module owns the schema: the whole Config, each of its sections a
frozen dataclass, each key a field whose metadata gives its parser, its
renderer, a one-line summary and the text that documents it, and the
choices of the keys that take one of a few words.  Reading a file, writing
the effective configuration back, the example file spfmilter.cfg, the
reference table in docs/configuration.md and the man page all work from
these declarations, so a key cannot be half-added.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spfmilter.config import values as v
from spfmilter.config.orgdomain import PublicSuffixes
from spfmilter.config.values import Renderer
from spfmilter.core.model import IPNetwork, Macro, SpfResult, Stage

T = TypeVar("T")


class HeaderType(enum.StrEnum):
    """Which result header(s) to add."""

    RECEIVED_SPF = "received-spf"
    AUTHENTICATION_RESULTS = "authentication-results"
    BOTH = "both"
    NONE = "none"

    @property
    def received_spf(self) -> bool:
        """True when a Received-SPF header is added."""
        return self in (HeaderType.RECEIVED_SPF, HeaderType.BOTH)

    @property
    def authentication_results(self) -> bool:
        """True when an Authentication-Results header is added."""
        return self in (HeaderType.AUTHENTICATION_RESULTS, HeaderType.BOTH)


class LogTarget(enum.StrEnum):
    """Where log lines go."""

    STDERR = "stderr"
    SYSLOG = "syslog"


class LogFormat(enum.StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    """Logging threshold."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def key(
    default: T,
    parse: v.Parser,
    summary: str,
    doc: str,
    *,
    example: str = "",
    render: v.Renderer = v.render_value,
) -> T:
    """Declare a key: its default, how it is read and written, and what it
    does (a summary line for tables, the text for the example file)."""
    metadata = {
        "parse": parse,
        "render": render,
        "summary": summary,
        "doc": doc,
        "example": example,
    }
    return field(default=default, metadata=metadata)


_RESULTS = "fail, softfail, neutral, none, permerror"


@dataclass(frozen=True)
class MilterConfig:
    """Where the daemon listens and as whom it runs."""

    socket: str = key(
        "unix:/run/spfmilter/spfmilter.sock",
        v.parse_socket,
        "where the MTA connects",
        "Where the MTA connects (libmilter notation): unix:/PATH, inet:PORT@HOST, "
        "inet6:PORT@HOST; an inet socket must name its address (the milter protocol "
        "has no authentication).  Postfix writes the same sockets as unix:/PATH and "
        "inet:HOST:PORT.  Not used when systemd passes a socket (spfmilter.socket, "
        "where Postfix is installed).",
        example="inet:8891@127.0.0.1",
    )
    socket_mode: int = key(
        0o660,
        v.parse_mode,
        "permissions of a unix socket (octal)",
        "Permissions of a unix socket (octal).  Postfix's smtpd runs as user postfix: "
        "give the socket a group postfix belongs to (socket_group = postfix).",
        render=v.render_mode,
    )
    socket_group: str = key(
        "",
        v.parse_name,
        "group of a unix socket (empty: the user's)",
        "Group of a unix socket.  When the socket's directory does not exist, the daemon "
        "makes it, owned by `user` and this group, setgid, so the socket gets the group; "
        "an existing directory is never changed.  Empty: the primary group of `user`.  "
        "The daemon warns at start when Postfix will not be able to connect.",
        example="postfix",
    )
    workers: int = key(
        0,
        v.parse_workers,
        "worker processes (auto: one per CPU, at most 8)",
        "Worker processes serving the socket together: auto (one per CPU, at most 8) or "
        "a number from 1 to 64.  One process uses one CPU at most (Python runs one "
        "thread at a time); with more, connections are spread over processes that share "
        "the socket and count into the same metrics.  1 keeps a single process.  Each "
        "worker has its own DNS and result caches of [dns] cache_size.",
        render=v.render_workers,
    )
    user: str = key(
        "",
        v.parse_name,
        "account to switch to from root (empty: spfmilter, else nobody)",
        "When started as root: the account to switch to once the socket's directory is "
        "ready.  Empty: spfmilter if that account exists (systemd/spfmilter.sysusers "
        "makes it), else nobody, with a warning.  Running on as root needs the explicit "
        '"user = root".  Under the systemd unit the daemon starts as its own user and '
        "this is not used.",
    )


@dataclass(frozen=True)
class PolicyConfig:
    """Which results reject or defer, and where."""

    helo_check: bool = key(
        True,
        v.parse_bool,
        "check HELO before MAIL FROM",
        "Check the HELO/EHLO identity before MAIL FROM (RFC 7208 section 2.3).  For the "
        "null sender <> the HELO identity is always checked: RFC 7208 section 2.4 makes "
        "postmaster@<helo> its MAIL FROM identity.",
    )
    helo_reject: frozenset[SpfResult] = key(
        frozenset({SpfResult.FAIL}),
        v.parse_results,
        f"HELO results that reject (from {_RESULTS})",
        f"HELO results that reject (550 5.7.23), from: {_RESULTS}.  Empty: none reject.",
        example="fail, softfail",
    )
    helo_reject_null_sender_only: bool = key(
        False,
        v.parse_bool,
        "HELO results reject only `<>`",
        "yes: HELO results reject only bounces (null sender <>).",
    )
    mailfrom_reject: frozenset[SpfResult] = key(
        frozenset({SpfResult.FAIL}),
        v.parse_results,
        "MAIL FROM results that reject",
        "MAIL FROM results that reject (550 5.7.23); same choices as helo_reject.",
    )
    permerror_reject: bool = key(
        False,
        v.parse_bool,
        "permerror of either identity rejects (550 5.7.24)",
        "yes: a permerror of either identity rejects with 550 5.7.24.",
    )
    temperror_defer: bool = key(
        True,
        v.parse_bool,
        "temperror defers (451 4.7.24); `no` accepts with the header",
        "yes: a temperror of either identity defers with 451 4.7.24.  no: the message is "
        "accepted with a temperror header.",
    )
    reject_stage: Stage = key(
        Stage.RCPT,
        v.choice(Stage),
        "`rcpt` or `mail`",
        "Where a reject or defer is given: rcpt (after Postfix's own recipient "
        "restrictions, like a policy server after reject_unauth_destination) or mail.  "
        "exempt_recipients needs rcpt.",
    )
    dry_run: bool = key(
        False,
        v.parse_bool,
        "log what would be done, never reject or defer",
        "yes: never reject or defer; log what would have been done, evaluate both "
        "identities and still add the header.",
    )
    exempt_recipients: tuple[str, ...] = key(
        (),
        v.parse_recipients,
        "`postmaster@`, `abuse@example.net`: never rejected, still get the header",
        "Recipients never rejected for SPF (they still get the header): full addresses, "
        "or local parts ending in @ that match any domain.",
        example="postmaster@, abuse@example.net",
    )


@dataclass(frozen=True)
class SkipConfig:
    """Clients and senders that SPF is not applied to."""

    networks: tuple[IPNetwork, ...] = key(
        v.networks("127.0.0.0/8", "::1/128"),
        v.parse_networks,
        "clients not checked",
        'Clients SPF is not applied to (no header is added).  Loopback is logged as "SPF '
        'skipped - localhost is always allowed".',
    )
    authenticated: bool = key(
        True,
        v.parse_bool,
        "skip SASL-authenticated clients (`{auth_authen}`)",
        "Skip clients that authenticated with SASL (macro {auth_authen}).",
    )
    macros: tuple[Macro, ...] = key(
        (),
        v.parse_macros,
        "skip when the MTA sends one of these macro values",
        "Skip a transaction when the MTA sent one of these macros with this value "
        "(NAME=VALUE, comma separated; values without spaces).  "
        "{daemon_name}=ORIGINATING skips mail that Postfix's submission service accepts "
        "(Debian's master.cf gives it -o milter_macro_daemon_name=ORIGINATING).  Postfix "
        "and Sendmail send {daemon_name} by default; another macro must be in the MTA's "
        "list for the connect, HELO or MAIL FROM stage (Postfix: milter_connect_macros, "
        "milter_helo_macros, milter_mail_macros).",
        example="{daemon_name}=ORIGINATING",
    )
    trusted_relays: tuple[IPNetwork, ...] = key(
        (),
        v.parse_networks,
        "CIDRs of relays that forward to you",
        "Relays that forward mail to you (CIDR, IPv4 and IPv6).",
        example="192.0.2.0/24, 2001:db8:1::/48",
    )
    helo_names: tuple[str, ...] = key(
        (),
        v.parse_domains,
        "skip when the HELO is listed and resolves to the client",
        "Skip a client whose HELO name is listed here AND resolves (A/AAAA) to the client's IP.",
        example="backup-mx.example.net",
    )
    ptr_domains: tuple[str, ...] = key(
        (),
        v.parse_domains,
        "skip forward-confirmed PTR names in these domains (label boundaries)",
        "Skip a client whose forward-confirmed PTR name (PTR -> name -> A/AAAA back to "
        "the client) is one of these domains or below it, on label boundaries "
        '("mx.example.com" is in example.com, "evilexample.com" is not).',
        example="example.com",
    )
    forwarder_domains: tuple[str, ...] = key(
        (),
        v.parse_domains,
        "skip clients that pass these domains' SPF",
        "Skip a client that passes the SPF policy of one of these domains (checked as "
        "postmaster@<domain>), e.g. forwarding services that publish SPF.",
        example="forwarder.example.net",
    )
    sender_domains: tuple[str, ...] = key(
        (),
        v.parse_domains,
        "MAIL FROM domains not checked (exact match)",
        "MAIL FROM domains never checked (exact match, subdomains not included).",
        example="example.com",
    )


@dataclass(frozen=True)
class HeadersConfig:
    """The result header(s) and the receiver's name in them."""

    type: HeaderType = key(
        HeaderType.RECEIVED_SPF,
        v.choice(HeaderType),
        "`received-spf`, `authentication-results`, `both`, `none`",
        "Which result header to add to each accepted message (one per message): "
        "received-spf, authentication-results, both or none.",
    )
    authserv_id: str = key(
        "",
        v.parse_authserv_id,
        "authserv-id and `receiver=` (empty: macro `j`, else the host's name)",
        "The authserv-id of Authentication-Results and the receiver= of Received-SPF.  "
        "Empty: the MTA's name for itself (macro j), else this host's FQDN.",
        example="mx.example.net",
    )
    hide_receiver: bool = key(
        False,
        v.parse_bool,
        "leave `receiver=` out",
        "yes: leave receiver= out of Received-SPF.",
    )
    remove_forged: bool = key(
        True,
        v.parse_bool,
        "delete incoming A-R with our authserv-id (and Received-SPF with type = A-R)",
        "yes: when Authentication-Results is added, delete incoming ones in which any of "
        "their readers (RFC 8601, OpenDMARC, SpamAssassin) could find our authserv-id, "
        "however spelled (RFC 8601 section 5: they are forgeries).  With type = "
        "authentication-results, also delete the incoming Received-SPF fields of an "
        "evaluated transaction: without one of ours on top, a reader such as OpenDMARC "
        "would take the client's for this MTA's verdict.",
    )


@dataclass(frozen=True)
class ReplyConfig:
    """SMTP reply details."""

    enhanced_status_codes: bool = key(
        True,
        v.parse_bool,
        "RFC 7372 codes; `no`: plain 550/451",
        "yes: replies carry RFC 7372 codes (550 5.7.23, 550 5.7.24, 451 4.7.24); no: "
        "plain 550 / 451.",
    )


@dataclass(frozen=True)
class RescueConfig:
    """Forwarded mail: a MAIL FROM fail decided at end of message by DKIM or ARC."""

    dkim: bool = key(
        False,
        v.parse_bool,
        "rescue a MAIL FROM fail by an aligned DKIM signature",
        "yes: a MAIL FROM fail that would be rejected is decided at end of message "
        "instead, and accepted when a DKIM signature (RFC 6376) of the MAIL FROM domain, "
        "or of a domain of the same organization (Public Suffix List), verifies.  "
        "Otherwise it is refused there with the same 550 5.7.23; DNS trouble defers "
        "(451 4.7.24).  HELO fail is never rescued.",
    )
    arc_trusted_sealers: tuple[str, ...] = key(
        (),
        v.parse_domains,
        "domains whose ARC seal is trusted (empty: no ARC rescue)",
        "Domains whose ARC seal (RFC 8617) is trusted, each matched exactly (a subdomain "
        "is not trusted with its parent): a valid chain whose newest seal is one of "
        "theirs rescues a MAIL FROM fail when that sealer recorded spf=pass for the MAIL "
        "FROM domain or an aligned dkim=pass.  Empty: no rescue by ARC.",
        example="lists.example.org",
    )
    max_message_size: int = key(
        10 * 1024**2,
        v.size_in(1024, 1024**3),
        "larger messages are decided without rescue (K, M, G)",
        "Messages pending rescue are held in memory up to this size, with its unit (K, M "
        "or G); a larger one is refused without rescue (logged rescue=oversized).",
        render=v.render_size,
    )

    @property
    def enabled(self) -> bool:
        """Whether a MAIL FROM fail waits for the message at all."""
        return self.dkim or bool(self.arc_trusted_sealers)


@dataclass(frozen=True)
class DnsConfig:
    """The resolver pyspf's lookups go through (all times seconds)."""

    nameservers: tuple[v.Nameserver, ...] = key(
        (),
        v.parse_nameservers,
        "`IP`, `IP:PORT`, `[IPv6]:PORT` (empty: `/etc/resolv.conf`)",
        "Nameservers to query, in turn: IP, IP:PORT or [IPv6]:PORT.  Empty: those of "
        "/etc/resolv.conf.  A local caching resolver is recommended.",
        example="127.0.0.1, [::1]:53",
    )
    timeout: float = key(
        5.0,
        v.parse_seconds,
        "seconds per query to one server",
        "Time for one DNS query to one server, seconds (capped by lookup_time).",
    )
    lookup_time: float = key(
        20.0,
        v.parse_seconds,
        "seconds for all lookups of one milter command",
        "Time budget for the DNS lookups of one milter command, seconds: the skips that "
        "need DNS, the HELO and the MAIL FROM evaluation share it, because the MTA times "
        "the command as a whole (RFC 7208 section 4.6.4 suggests at least 20 s per "
        "evaluation).  Keep it under Postfix's milter_command_timeout (30 s); above 25 s "
        "is accepted with a warning.  Running out is temperror.",
    )
    void_lookup_limit: int = key(
        2,
        v.int_in(0, 100),
        "RFC 7208 section 4.6.4",
        "DNS lookups that may return nothing before permerror (RFC 7208 section 4.6.4).",
    )
    cache_size: int = key(
        16 * 1024 * 1024,
        v.parse_size,
        "memory for the DNS and SPF result caches (K, M, G); 0 disables",
        "Memory per process for the caches its connections share, with its unit (K, M or "
        "G): three quarters for DNS answers, kept for their TTL, one quarter for SPF "
        "results, kept until the first record they read expires.  The least recently used "
        "go first when one is full, and one answer may take at most an eighth of its "
        "cache.  0 disables both.",
        render=v.render_size,
    )
    prefetch: bool = key(
        True,
        v.parse_bool,
        "ask ahead for the lookups of a record's terms",
        "yes: when an SPF record is read, the names its include, redirect, a, mx and exists "
        "terms will need are asked for side by side, so a cold tree takes as many round "
        "trips as it is deep.  The answers only warm the cache (none with cache_size 0); "
        "results and RFC 7208 limits are the same either way, and no more is asked than an "
        "evaluation of the record could ask (docs/security.md).",
    )


@dataclass(frozen=True)
class LogConfig:
    """Level, destination and format of log lines."""

    level: LogLevel = key(
        LogLevel.INFO,
        v.choice(LogLevel),
        "`debug`, `info`, `warning`, `error`",
        "debug, info, warning or error.  info logs one line per verdict.",
    )
    target: LogTarget = key(
        LogTarget.STDERR,
        v.choice(LogTarget),
        "`stderr` (journald) or `syslog` (facility mail)",
        "stderr (journald under systemd) or syslog (facility mail, via syslog_socket).",
    )
    format: LogFormat = key(
        LogFormat.TEXT,
        v.choice(LogFormat),
        "`text` (key=value) or `json`",
        "text (key=value) or json (one object per line).",
    )
    syslog_socket: str = key(
        "/dev/log",
        v.parse_path,
        "the syslog socket for `target = syslog`",
        "The syslog socket for target = syslog.",
    )


@dataclass(frozen=True)
class MetricsConfig:
    """The optional Prometheus listener."""

    listen: str = key(
        "",
        v.parse_listen,
        "`HOST:PORT` of the `/metrics` listener (empty: off)",
        "HOST:PORT for a Prometheus /metrics endpoint (port 1024 or above: it is opened "
        "after the daemon drops root).  Empty: off.",
        example="127.0.0.1:9101",
    )

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when off."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from, if any."""

    source: str | None = None
    milter: MilterConfig = field(default_factory=MilterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    skip: SkipConfig = field(default_factory=SkipConfig)
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    reply: ReplyConfig = field(default_factory=ReplyConfig)
    rescue: RescueConfig = field(default_factory=RescueConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    warnings: tuple[str, ...] = ()
    # The Public Suffix List, read with the configuration when the rescue
    # is on (None when it is off).
    suffixes: PublicSuffixes | None = field(default=None, compare=False, repr=False)


SECTIONS: dict[str, type[Any]] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Config)
    if f.default_factory is not dataclasses.MISSING
}


def keys(section: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    """The declared keys of a section, in file order."""
    return dataclasses.fields(section)


def rendered(section: Any, declaration: dataclasses.Field[Any]) -> str:
    """A key's value in `section` as its parser reads it back."""
    render: Renderer = declaration.metadata["render"]
    return render(getattr(section, declaration.name))
