"""The DNS resolver that every SPF lookup goes through.

This module owns how spfmilter talks to DNS: one dnspython Resolver built
from [dns] (nameservers with ports, per-query timeout, TCP fallback on
truncation), the mapping of DNS outcomes (NXDOMAIN and NODATA are empty
answers; timeouts and SERVFAIL are temporary errors, RFC 7208 section 5
and 4.4), and a thread-safe cache shared by all connections that honours
record TTLs (RFC 1035 section 3.2.1, RFC 2308 for negative answers).
It imports only the config value types; it must not import spf or Milter.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import threading
import time
from collections.abc import Callable

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from spfmilter.config import DnsConfig
from spfmilter.metrics import Metrics
from spfmilter.model import IPAddress

log = logging.getLogger(__name__)

# One record as the SPF evaluator consumes it: ((owner name, type), value)
# with value an address or name (str), an MX (preference, exchange), or the
# character-strings of a TXT record (list of bytes).
Record = tuple[tuple[str, str], object]

# RFC 2308 section 5: negative answers are cached for the SOA minimum; cap
# both kinds so a mistaken huge TTL cannot pin stale data for days.
MAX_TTL = 86400
NEGATIVE_TTL_CAP = 900

# The lookup function handed to the checker and the milter: (name, type,
# time budget or None) -> records.
Lookup = Callable[[str, str, float | None], list[Record]]

# RFC 7208 section 4.6.4: at most 10 PTR names are looked at.
MAX_PTR_NAMES = 10


class DnsTempError(Exception):
    """A lookup that could not be answered now (timeout, SERVFAIL, ...)."""


class DnsTimeout(DnsTempError):
    """No answer within the time allowed."""


class Resolver:
    """Thread-safe lookups with a shared TTL cache.

    `lookup` may be called from many milter threads at once: dnspython's
    Resolver.resolve keeps no per-call state on the object, and the cache is
    guarded by a lock.
    """

    def __init__(
        self,
        config: DnsConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = config.timeout
        self._resolver = _make_resolver(config)
        self._clock = clock
        self._cache_size = config.cache_size
        self._cache: collections.OrderedDict[tuple[str, str], tuple[float, list[Record]]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._metrics = metrics

    def lookup(self, name: str, qtype: str, budget: float | None = None) -> list[Record]:
        """Records of `qtype` at `name`, CNAMEs on the way included.

        `budget` bounds this query's time (the caller's remaining lookup
        time); the per-query timeout of [dns] applies too.  Raises
        DnsTempError when DNS cannot answer now.
        """
        key = (name.lower().rstrip("."), qtype.upper())
        cached = self._cached(key)
        if cached is not None:
            return cached
        lifetime = self._timeout if budget is None else max(0.001, min(self._timeout, budget))
        records, ttl = self._query(key[0], key[1], lifetime)
        self._store(key, records, ttl)
        return records

    def _cached(self, key: tuple[str, str]) -> list[Record] | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry[0] > self._clock():
                self._cache.move_to_end(key)
                self._metrics.cache_hits.inc()
                return entry[1]
            if entry is not None:
                del self._cache[key]
        self._metrics.cache_misses.inc()
        return None

    def _store(self, key: tuple[str, str], records: list[Record], ttl: int) -> None:
        if ttl <= 0 or self._cache_size == 0:
            return
        with self._lock:
            self._cache[key] = (self._clock() + ttl, records)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _query(self, name: str, qtype: str, lifetime: float) -> tuple[list[Record], int]:
        started = self._clock()
        outcome = "error"
        try:
            records, ttl = self._resolve(name, qtype, lifetime)
            outcome = "answer" if records else "empty"
            return records, ttl
        except DnsTempError as error:
            outcome = "timeout" if isinstance(error, DnsTimeout) else "failure"
            log.warning("%s", error)
            raise
        finally:
            self._metrics.dns_queries.labels(qtype, outcome).inc()
            self._metrics.dns_seconds.labels(qtype).observe(self._clock() - started)

    def _resolve(self, name: str, qtype: str, lifetime: float) -> tuple[list[Record], int]:
        try:
            answer = self._resolver.resolve(
                name, qtype, raise_on_no_answer=False, lifetime=lifetime, search=False
            )
        except dns.resolver.NXDOMAIN as error:
            responses: dict[dns.name.Name, dns.message.Message] = error.responses()  # type: ignore[no-untyped-call]
            return [], _negative_ttl(next(iter(responses.values()), None))
        except dns.resolver.LifetimeTimeout:
            raise DnsTimeout(f"DNS timeout looking up {name} {qtype}") from None
        except dns.resolver.NoNameservers as error:
            looped = _looping_response(error)
            if looped is None:
                raise DnsTempError(f"DNS server failure looking up {name} {qtype}") from None
            # A CNAME loop is a fact about the data, not a server failure:
            # hand the chain over as it is, so the SPF evaluator sees a name
            # without records (RFC 7208 section 5.5 skips such PTR names).
            return _answer_records(looped, name), 0
        except (
            dns.name.LabelTooLong,
            dns.name.NameTooLong,
            dns.name.EmptyLabel,
            dns.name.BadEscape,
            dns.name.IDNAException,
            UnicodeError,
        ):
            # A name that cannot be put on the wire (from a hostile MAIL FROM
            # or macro expansion) has no records (RFC 7208 section 4.3); it
            # must not become a temperror that defers the mail forever.
            return [], 0
        except dns.exception.DNSException as error:
            raise DnsTempError(f"DNS error looking up {name} {qtype}: {error}") from None
        response = answer.response
        records = _answer_records(response, name)
        if not records:
            return [], _negative_ttl(response)
        ttl = min(rrset.ttl for rrset in response.answer)
        return records, min(ttl, MAX_TTL)


def _make_resolver(config: DnsConfig) -> dns.resolver.Resolver:
    if config.nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(ns.address, ns.port) for ns in config.nameservers
        ]
    else:
        resolver = dns.resolver.Resolver(configure=True)
    resolver.timeout = config.timeout
    resolver.lifetime = config.timeout
    # EDNS0 with a 1232-byte payload (the DNS flag day 2020 value) so large
    # TXT answers arrive over UDP; dnspython retries over TCP on truncation.
    resolver.use_edns(0, 0, 1232)
    return resolver


def _looping_response(error: dns.resolver.NoNameservers) -> dns.message.Message | None:
    """The response whose CNAME chain dnspython refused as too long, if any."""
    for *_, exception, response in error.kwargs.get("errors", ()):
        if isinstance(exception, dns.message.ChainTooLong) and response is not None:
            return response  # type: ignore[no-any-return]
    return None


def _negative_ttl(response: dns.message.Message | None) -> int:
    if response is None:
        return 0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            minimum = min(rrset.ttl, rrset[0].minimum)
            return int(min(minimum, NEGATIVE_TTL_CAP))
    return 0


def _answer_records(response: dns.message.Message, name: str) -> list[Record]:
    """All records of the answer section, CNAMEs included.

    Records owned by the queried name are keyed by the name as asked: the
    presentation form would escape characters that macro expansion can put
    in a name (spaces, RFC 7208 section 7.3), and the evaluator looks its
    answers up by the name it asked for.
    """
    asked = dns.name.from_text(name)
    return [
        record
        for rrset in response.answer
        for record in _records(
            rrset, name if rrset.name == asked else rrset.name.to_text(omit_final_dot=True)
        )
    ]


def _records(rrset: dns.rrset.RRset, owner: str) -> list[Record]:
    owner = owner.lower()
    kind = dns.rdatatype.to_text(rrset.rdtype)
    key = (owner, kind)
    if kind in ("A", "AAAA"):
        return [(key, rdata.address) for rdata in rrset]
    if kind == "MX":
        return [
            (key, (rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))
            for rdata in rrset
        ]
    if kind in ("PTR", "CNAME"):
        return [(key, rdata.target.to_text(omit_final_dot=True)) for rdata in rrset]
    if kind in ("TXT", "SPF"):
        return [(key, list(rdata.strings)) for rdata in rrset]
    return []


def resolves_to(lookup: Lookup, name: str, ip: IPAddress) -> bool:
    """Whether `name` has an A (IPv4) or AAAA (IPv6) record equal to `ip`."""
    qtype = "A" if ip.version == 4 else "AAAA"
    return any(
        _same_address(value, ip) for key, value in lookup(name, qtype, None) if key[1] == qtype
    )


def confirmed_ptr_names(lookup: Lookup, ip: IPAddress) -> tuple[str, ...]:
    """The client's PTR names that resolve back to it (forward-confirmed).

    Like the SPF "ptr" mechanism (RFC 7208 section 5.5), at most ten names
    are looked at and a name whose lookup fails is skipped.
    """
    names = [
        str(value) for key, value in lookup(ip.reverse_pointer, "PTR", None) if key[1] == "PTR"
    ]
    confirmed = []
    for name in names[:MAX_PTR_NAMES]:
        try:
            if resolves_to(lookup, name, ip):
                confirmed.append(name.lower())
        except DnsTempError:
            continue
    return tuple(confirmed)


def _same_address(value: object, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(str(value)) == ip
    except ValueError:
        return False
