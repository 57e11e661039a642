"""What DNS says about the client, for the skips a Plan lists.

This module owns the facts that let a client be trusted without evaluating
SPF: a HELO name that resolves to the client's address, a forward-confirmed
PTR name (PTR, then A or AAAA back to the client) in a listed domain, on
label boundaries, and a forwarder domain whose SPF policy the client
passes.  Facts are looked for only relative to the plan's lists, so that
any fact found is a skip.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from spfmilter.core.model import IPAddress, Plan, SkipFacts, SpfOutcome, SpfResult
from spfmilter.evaluation.resolver import DnsLimitError, DnsTempError, Record

# A lookup within the time the caller has left: (name, type) -> records.
Lookup = Callable[[str, str], Sequence[Record]]

# RFC 7208 section 4.6.4: at most 10 PTR names are looked at.
MAX_PTR_NAMES = 10


def gather(
    plan: Plan, ip: IPAddress, lookup: Lookup, mail_from: Callable[[str], SpfOutcome]
) -> SkipFacts:
    """The facts about client `ip` that the plan's skips ask for.

    `mail_from` evaluates the MAIL FROM identity of an address (a
    forwarder's postmaster).  Raises DnsTempError or DnsLimitError when the
    HELO or PTR lookups cannot be answered: then no fact can be trusted.
    """
    helo_confirmed = plan.helo_name is not None and resolves_to(lookup, plan.helo_name, ip)
    names = confirmed_ptr_names(lookup, ip) if plan.ptr_domains else ()
    forwarder = None
    for domain in plan.forwarder_domains:
        if mail_from(f"postmaster@{domain}").result is SpfResult.PASS:
            forwarder = domain
            break
    ptr = None
    for name in names:
        listed = in_domains(name, plan.ptr_domains)
        if listed is not None:
            ptr = (name, listed)
            break
    return SkipFacts(helo_confirmed=helo_confirmed, forwarder=forwarder, ptr=ptr)


def resolves_to(lookup: Lookup, name: str, ip: IPAddress) -> bool:
    """Whether `name` has an A (IPv4) or AAAA (IPv6) record equal to `ip`."""
    qtype = "A" if ip.version == 4 else "AAAA"
    return any(_same_address(value, ip) for key, value in lookup(name, qtype) if key[1] == qtype)


def confirmed_ptr_names(lookup: Lookup, ip: IPAddress) -> tuple[str, ...]:
    """The client's PTR names that resolve back to it (forward-confirmed).

    Like the SPF "ptr" mechanism (RFC 7208 section 5.5), at most ten names
    are looked at and a name whose lookup fails is skipped.
    """
    names = [str(value) for key, value in lookup(ip.reverse_pointer, "PTR") if key[1] == "PTR"]
    confirmed = []
    for name in names[:MAX_PTR_NAMES]:
        try:
            if resolves_to(lookup, name, ip):
                confirmed.append(name.lower())
        except (DnsTempError, DnsLimitError):
            continue
    return tuple(confirmed)


def in_domains(name: str, domains: tuple[str, ...]) -> str | None:
    """The listed domain `name` is, or is below, on label boundaries.

    "mail.example.com" is in "example.com"; "evilexample.com" is not.
    """
    name = name.lower().rstrip(".")
    for domain in domains:
        if name == domain or name.endswith("." + domain):
            return domain
    return None


def _same_address(value: object, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(str(value)) == ip
    except ValueError:
        return False
