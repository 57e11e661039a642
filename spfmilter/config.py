"""Configuration: parse spfmilter.cfg once into a frozen, validated Config.

This module owns the schema (every section, key, type and default), the
parsing of values, and error messages that name file, line and key.  A file
that does not parse is an error, never silently defaults.  It imports only
spfmilter.model (no Milter, no spf, no I/O besides reading the file).
"""

from __future__ import annotations

import configparser
import dataclasses
import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spfmilter.model import IPNetwork, SpfResult, Stage

EX_CONFIG = 78  # sysexits.h: configuration error

# Postfix's milter_command_timeout defaults to 30 s; a lookup budget above
# this leaves too little margin for the rest of the callback.
LOOKUP_TIME_WARN = 25.0


class ConfigError(Exception):
    """A configuration problem, worded as ``file:line: [section] key: ...``."""


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


@dataclass(frozen=True)
class Nameserver:
    """A DNS server to query: address and UDP/TCP port."""

    address: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


@dataclass(frozen=True)
class MilterConfig:
    """[milter]: where the daemon listens and as whom it runs."""

    socket: str = "unix:/run/spfmilter/spfmilter.sock"
    socket_mode: int = 0o660
    socket_group: str = ""
    # Empty: spfmilter if that account exists, else nobody (spfmilter.runas).
    user: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the optional Prometheus listener ("" = off)."""

    listen: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when off."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class PolicyConfig:
    """[policy]: which results reject or defer, and where."""

    helo_check: bool = True
    helo_reject: frozenset[SpfResult] = frozenset({SpfResult.FAIL})
    helo_reject_null_sender_only: bool = False
    mailfrom_reject: frozenset[SpfResult] = frozenset({SpfResult.FAIL})
    permerror_reject: bool = False
    temperror_defer: bool = True
    reject_stage: Stage = Stage.RCPT
    dry_run: bool = False
    exempt_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkipConfig:
    """[skip]: clients and senders that SPF is not applied to."""

    networks: tuple[IPNetwork, ...] = _networks("127.0.0.0/8", "::1/128")
    authenticated: bool = True
    trusted_relays: tuple[IPNetwork, ...] = ()
    helo_names: tuple[str, ...] = ()
    ptr_domains: tuple[str, ...] = ()
    forwarder_domains: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()

    @property
    def needs_dns(self) -> bool:
        """Whether a skip needs DNS facts about the client."""
        return bool(self.helo_names or self.ptr_domains or self.forwarder_domains)


@dataclass(frozen=True)
class HeadersConfig:
    """[headers]: the result header(s) and the receiver's name in them."""

    type: HeaderType = HeaderType.RECEIVED_SPF
    authserv_id: str = ""
    hide_receiver: bool = False
    remove_forged: bool = True


@dataclass(frozen=True)
class ReplyConfig:
    """[reply]: SMTP reply details."""

    enhanced_status_codes: bool = True


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: the resolver pyspf's lookups go through (all times seconds)."""

    nameservers: tuple[Nameserver, ...] = ()
    timeout: float = 5.0
    lookup_time: float = 20.0
    void_lookup_limit: int = 2
    cache_size: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class LogConfig:
    """[log]: level, destination and format of log lines."""

    level: LogLevel = LogLevel.INFO
    target: LogTarget = LogTarget.STDERR
    format: LogFormat = LogFormat.TEXT
    syslog_socket: str = "/dev/log"


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from, if any."""

    source: str | None = None
    milter: MilterConfig = field(default_factory=MilterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    skip: SkipConfig = field(default_factory=SkipConfig)
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    reply: ReplyConfig = field(default_factory=ReplyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    warnings: tuple[str, ...] = ()


SECTIONS: dict[str, type[Any]] = {
    "milter": MilterConfig,
    "policy": PolicyConfig,
    "skip": SkipConfig,
    "headers": HeadersConfig,
    "reply": ReplyConfig,
    "dns": DnsConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
}


# --- value parsers: each takes the raw text and raises ValueError saying
# --- what was expected.

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}


def parse_bool(text: str) -> bool:
    """yes/no/true/false/on/off/1/0."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def _items(text: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def parse_seconds(text: str) -> float:
    """A positive number of seconds, fractions allowed."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {value}")
        return value

    return parse


_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """A memory size with its unit (K, M or G, powers of 1024), or 0.

    The unit is required: a bare number would be ambiguous (earlier
    versions counted cache entries).
    """
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: -1 if unit else None].strip()
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"expected a size such as 16M, got {text!r}") from None
    if amount and not unit:
        raise ValueError(f"expected a size with its unit (K, M or G) such as 16M, got {text!r}")
    size = int(amount * _UNITS.get(unit, 1))
    if not 0 <= size <= 64 * 1024**3:
        raise ValueError(f"expected a size from 0 to 64G, got {text!r}")
    return size


def _enum(kind: type[enum.StrEnum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        word = text.strip().lower()
        try:
            return kind(word)
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise ValueError(f"expected one of {choices}; got {text!r}") from None

    return parse


_REJECTABLE = (
    SpfResult.FAIL,
    SpfResult.SOFTFAIL,
    SpfResult.NEUTRAL,
    SpfResult.NONE,
    SpfResult.PERMERROR,
)


def parse_results(text: str) -> frozenset[SpfResult]:
    """A comma list of SPF results that may reject (empty: none reject)."""
    by_name = {result.value: result for result in _REJECTABLE}
    results = set()
    for item in _items(text.lower()):
        if item not in by_name:
            raise ValueError(f"expected a comma list of {', '.join(by_name)}; got {item!r}")
        results.add(by_name[item])
    return frozenset(results)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """A comma list of CIDR networks (IPv4 or IPv6); bare addresses allowed."""
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as error:
            raise ValueError(f"expected CIDR networks, got {item!r}: {error}") from None
    return tuple(networks)


_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)"
    r"(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


def parse_domains(text: str) -> tuple[str, ...]:
    """A comma list of domain names, lower-cased, trailing dot dropped."""
    domains = []
    for item in _items(text.lower()):
        name = item.rstrip(".")
        if not _DOMAIN.match(name):
            raise ValueError(f"expected domain names, got {item!r}")
        domains.append(name)
    return tuple(domains)


def parse_recipients(text: str) -> tuple[str, ...]:
    """Addresses (``user@example.com``) or local parts (``postmaster@``)."""
    recipients = []
    for item in _items(text.lower()):
        local, at, domain = item.strip("<>").rpartition("@")
        if not at or not local or (domain and not _DOMAIN.match(domain)):
            raise ValueError(
                f"expected addresses like postmaster@ or abuse@example.com, got {item!r}"
            )
        recipients.append(item.strip("<>"))
    return tuple(recipients)


def parse_nameservers(text: str) -> tuple[Nameserver, ...]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` entries, comma separated."""
    servers = []
    for item in _items(text):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?|([0-9a-fA-F:]+)", item)
        if match is None:
            raise ValueError(f"expected IP or IP:PORT, got {item!r}")
        address = match.group(1) or match.group(3) or match.group(5)
        port_text = match.group(2) or match.group(4)
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ValueError(f"expected an IP address, got {item!r}") from None
        port = int(port_text) if port_text else 53
        if not 0 < port < 65536:
            raise ValueError(f"expected a port from 1 to 65535, got {item!r}")
        servers.append(Nameserver(address, port))
    return tuple(servers)


def parse_socket(text: str) -> str:
    """libmilter socket notation: unix:PATH, inet:PORT@HOST, inet6:PORT@HOST.

    An inet socket needs its host: without one libmilter listens on every
    address, and the milter protocol has no authentication.
    """
    spec = text.strip()
    if re.fullmatch(r"(unix|local):/\S+", spec):
        return spec
    match = re.fullmatch(r"(inet6?):(\d+)(@\S+)?", spec)
    if match and 0 < int(match.group(2)) < 65536:
        if match.group(3) is None:
            kind, port = match.group(1), match.group(2)
            example = "127.0.0.1" if kind == "inet" else "[::1]"
            raise ValueError(
                f"{spec} would listen on every address, and the milter protocol has no "
                f"authentication: name the address, e.g. {kind}:{port}@{example} "
                f"({kind}:{port}@{'0.0.0.0' if kind == 'inet' else '[::]'} for all, on purpose)"
            )
        return spec
    raise ValueError(f"expected unix:/PATH, inet:PORT@HOST or inet6:PORT@HOST; got {text!r}")


def parse_mode(text: str) -> int:
    """An octal file mode such as 0660."""
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal mode such as 0660, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"expected an octal mode from 0000 to 0777, got {text!r}")
    return mode


def parse_name(text: str) -> str:
    """A user or group name (or number), or empty."""
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", value):
        raise ValueError(f"expected a user or group name, got {text!r}")
    return value


def parse_listen(text: str) -> str:
    """HOST:PORT or [IPv6]:PORT for the metrics listener, or empty."""
    value = text.strip()
    if not value:
        return value
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d+)", value)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9101, got {text!r}")
    return value


def parse_path(text: str) -> str:
    """An absolute path."""
    value = text.strip()
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {text!r}")
    return value


def parse_authserv_id(text: str) -> str:
    """An authserv-id (RFC 8601 section 2.5): a token without spaces or ';'."""
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", value):
        raise ValueError(f"expected a host name such as mx.example.net, got {text!r}")
    return value


PARSERS: dict[tuple[str, str], Callable[[str], Any]] = {
    ("milter", "socket"): parse_socket,
    ("milter", "socket_mode"): parse_mode,
    ("milter", "socket_group"): parse_name,
    ("milter", "user"): parse_name,
    ("policy", "helo_check"): parse_bool,
    ("policy", "helo_reject"): parse_results,
    ("policy", "helo_reject_null_sender_only"): parse_bool,
    ("policy", "mailfrom_reject"): parse_results,
    ("policy", "permerror_reject"): parse_bool,
    ("policy", "temperror_defer"): parse_bool,
    ("policy", "reject_stage"): _enum(Stage),
    ("policy", "dry_run"): parse_bool,
    ("policy", "exempt_recipients"): parse_recipients,
    ("skip", "networks"): parse_networks,
    ("skip", "authenticated"): parse_bool,
    ("skip", "trusted_relays"): parse_networks,
    ("skip", "helo_names"): parse_domains,
    ("skip", "ptr_domains"): parse_domains,
    ("skip", "forwarder_domains"): parse_domains,
    ("skip", "sender_domains"): parse_domains,
    ("headers", "type"): _enum(HeaderType),
    ("headers", "authserv_id"): parse_authserv_id,
    ("headers", "hide_receiver"): parse_bool,
    ("headers", "remove_forged"): parse_bool,
    ("reply", "enhanced_status_codes"): parse_bool,
    ("dns", "nameservers"): parse_nameservers,
    ("dns", "timeout"): parse_seconds,
    ("dns", "lookup_time"): parse_seconds,
    ("dns", "void_lookup_limit"): _int_in(0, 100),
    ("dns", "cache_size"): parse_size,
    ("log", "level"): _enum(LogLevel),
    ("log", "target"): _enum(LogTarget),
    ("log", "format"): _enum(LogFormat),
    ("log", "syslog_socket"): parse_path,
    ("metrics", "listen"): parse_listen,
}


def line_numbers(text: str) -> dict[tuple[str, str], int]:
    """Map (section, key) to the 1-based line that sets it.

    configparser does not keep line numbers, and an administrator needs
    them to find a typo.
    """
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[([^\]]*)\]", line)
        if header:
            section = header.group(1).strip().lower()
            lines.setdefault((section, ""), number)
            continue
        key = re.match(r"([^\s#;=:][^=:]*?)\s*[=:]", line)
        if key:
            lines.setdefault((section, key.group(1).strip().lower()), number)
    return lines


def load_config(path: str | Path | None) -> Config:
    """Read and validate a configuration file; None means built-in defaults.

    Raises ConfigError naming file, line and key on the first problem.
    """
    if path is None:
        return Config()
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{name}: cannot read: {error}") from None
    return parse_config(text, name)


def parse_config(text: str, name: str = "<config>") -> Config:
    """Validate configuration text (see load_config)."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#",), default_section="\0none"
    )
    try:
        parser.read_string(text, source=name)
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{name}:{error.lineno}: [{error.section}] {error.option}: set twice"
        ) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError(
            f"{name}:{error.lineno}: [{error.section}]: section given twice"
        ) from None
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{name}:{error.lineno}: expected a [section] header before {error.line.strip()!r}"
        ) from None
    except configparser.ParsingError as error:
        lineno = error.errors[0][0]
        line = text.splitlines()[lineno - 1].strip()
        raise ConfigError(f"{name}:{lineno}: expected 'key = value', got {line!r}") from None
    lines = line_numbers(text)
    sections: dict[str, Any] = {}
    for section in parser.sections():
        where = f"{name}:{lines.get((section.lower(), ''), 0)}"
        schema = SECTIONS.get(section.lower())
        if schema is None:
            raise ConfigError(
                f"{where}: [{section}]: unknown section; expected one of " + ", ".join(SECTIONS)
            )
        values = _parse_section(parser[section], section.lower(), schema, name, lines)
        sections[section.lower()] = schema(**values)
    config = Config(source=name, **sections)
    return dataclasses.replace(config, warnings=_warnings(config))


def _parse_section(
    items: Mapping[str, str],
    section: str,
    schema: type[Any],
    name: str,
    lines: Mapping[tuple[str, str], int],
) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(schema)}
    values: dict[str, Any] = {}
    for key, raw in items.items():
        where = f"{name}:{lines.get((section, key), 0)}: [{section}] {key}"
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key; [{section}] takes " + ", ".join(sorted(known))
            )
        try:
            values[key] = PARSERS[(section, key)](raw)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    return values


def _warnings(config: Config) -> tuple[str, ...]:
    warnings = []
    if config.dns.lookup_time > LOOKUP_TIME_WARN:
        warnings.append(
            f"{config.source}: [dns] lookup_time = {config.dns.lookup_time:g} s is above "
            f"{LOOKUP_TIME_WARN:g} s; Postfix's milter_command_timeout defaults to 30 s "
            "and would give up on the milter first"
        )
    if config.policy.exempt_recipients and config.policy.reject_stage is Stage.MAIL:
        warnings.append(
            f"{config.source}: [policy] exempt_recipients has no effect with "
            "reject_stage = mail (recipients are not known yet at MAIL FROM)"
        )
    return tuple(warnings)


def render(config: Config) -> str:
    """The effective configuration as INI text (for --check-config)."""
    out = [f"# effective configuration from {config.source or 'built-in defaults'}"]
    for section in SECTIONS:
        out.append(f"\n[{section}]")
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if f.name == "socket_mode":
                text = f"{value:04o}"
            elif f.name == "cache_size":
                text = render_size(value)
            else:
                text = _render_value(value)
            out.append(f"{f.name} = {text}")
    return "\n".join(out) + "\n"


def render_size(size: int) -> str:
    """A size as parse_size reads it back (the largest exact unit)."""
    for unit, factor in reversed(_UNITS.items()):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size / 1024:g}K" if size else "0"


def _render_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, frozenset):
        return ", ".join(sorted(str(v) for v in value))
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
