"""The kinds of value a configuration key takes: parsing and rendering.

This module owns how configuration text becomes typed values and back:
booleans, numbers with bounds, sizes, seconds, enums, lists of results,
networks, domains, recipients and nameservers, socket and listener
specifications, modes, names and paths.  Each parser takes the raw text and
raises ValueError saying what was expected; each renderer writes what its
parser reads back.  No I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spfmilter.core.model import IPNetwork, Macro, SpfResult

Parser = Callable[[str], Any]
Renderer = Callable[[Any], str]


@dataclass(frozen=True)
class Nameserver:
    """A DNS server to query: address and UDP/TCP port."""

    address: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    """Networks from CIDR text (for defaults)."""
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def _items(text: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


_BOOLEANS = {"yes": True, "true": True, "no": False, "false": False}


def parse_bool(text: str) -> bool:
    """yes or no (true or false)."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"expected yes or no (or true, false), got {text!r}") from None


def parse_seconds(text: str) -> float:
    """A positive number of seconds, fractions allowed, at most an hour."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


def int_in(low: int, high: int) -> Parser:
    """A parser of whole numbers from `low` to `high`."""

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


def size_in(low: int, high: int) -> Parser:
    """A parser of sizes (parse_size) from `low` to `high` bytes."""

    def parse(text: str) -> int:
        size = parse_size(text)
        if not low <= size <= high:
            raise ValueError(
                f"expected a size from {render_size(low)} to {render_size(high)}, got {text!r}"
            )
        return size

    return parse


def render_size(size: int) -> str:
    """A size as parse_size reads it back (the largest exact unit)."""
    for unit, factor in reversed(_UNITS.items()):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size / 1024:g}K" if size else "0"


def choice(kind: type[enum.StrEnum]) -> Parser:
    """A parser of one of an enum's values."""

    def parse(text: str) -> Any:
        try:
            return kind(text.strip().lower())
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
    found = []
    for item in _items(text):
        try:
            found.append(ipaddress.ip_network(item, strict=True))
        except ValueError as error:
            raise ValueError(f"expected CIDR networks, got {item!r}: {error}") from None
    return tuple(found)


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


# A macro's name as libmilter's getsymval takes it: one character, or a
# longer name in braces.
_MACRO_NAME = re.compile(r"[A-Za-z0-9_]|\{[A-Za-z0-9_]{2,64}\}")


def parse_macros(text: str) -> tuple[Macro, ...]:
    """A comma list of NAME=VALUE, such as {daemon_name}=ORIGINATING; a
    long name may leave its braces out."""
    macros = []
    for item in _items(text):
        name, equals, value = item.partition("=")
        if len(name) > 1 and not name.startswith("{"):
            name = "{" + name + "}"
        if not equals or not value or not _MACRO_NAME.fullmatch(name):
            raise ValueError(
                f"expected NAME=VALUE such as {{daemon_name}}=ORIGINATING, got {item!r}"
            )
        macros.append(Macro(name, value))
    return tuple(macros)


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


# Most worker processes accepted: each holds its own caches and threads.
MAX_WORKERS = 64


def parse_workers(text: str) -> int:
    """A number of worker processes from 1 to 64, or auto (0: one per CPU,
    as many as spfmilter.process.workers starts)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected auto or a number of processes, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected auto or a number from 1 to {MAX_WORKERS}, got {value}")
    return value


def render_workers(workers: int) -> str:
    """A number of workers as parse_workers reads it back."""
    return str(workers) if workers else "auto"


def parse_mode(text: str) -> int:
    """An octal file mode such as 0660."""
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal mode such as 0660, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"expected an octal mode from 0000 to 0777, got {text!r}")
    return mode


def render_mode(mode: int) -> str:
    """A mode in octal, as parse_mode reads it."""
    return f"{mode:04o}"


def token(pattern: str, what: str) -> Callable[[str], str]:
    """A parser of an optional word matching `pattern` ("" when empty)."""
    compiled = re.compile(pattern)

    def parse(text: str) -> str:
        value = text.strip()
        if value and not compiled.fullmatch(value):
            raise ValueError(f"expected {what}, got {text!r}")
        return value

    return parse


# A user or group name (or number), as useradd accepts them.
parse_name = token(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", "a user or group name")
# RFC 8601 section 2.5: a host name as the authserv-id (a token, no ';').
parse_authserv_id = token(r"[A-Za-z0-9._-]{1,253}", "a host name such as mx.example.net")
_listen = token(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}", "HOST:PORT such as 127.0.0.1:9101")


def parse_listen(text: str) -> str:
    """HOST:PORT or [IPv6]:PORT for a listener, or empty (off)."""
    value = _listen(text)
    if value and not 0 < int(value.rpartition(":")[2]) < 65536:
        raise ValueError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def parse_path(text: str) -> str:
    """An absolute path."""
    value = text.strip()
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {text!r}")
    return value


def render_value(value: object) -> str:
    """Any value as its parser reads it back (yes/no, enum values, lists)."""
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
