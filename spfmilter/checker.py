"""Evaluates one SPF identity with pyspf and returns an SpfOutcome value.

This module owns the only ``import spf`` in spfmilter.  pyspf reads two
module globals (its DNS lookup function and the void lookup limit);
:func:`install` sets them once at start-up, before any milter thread runs,
and nothing changes them afterwards (callbacks run in parallel threads).
It imports model and dns; it must not import Milter or policy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import spf

from spfmilter.dns import DnsLimitError, DnsTempError, Lookup, Record
from spfmilter.model import Identity, IPAddress, SpfOutcome, SpfResult

# RFC 7208 section 4.3 / RFC 1035 section 2.3.1: a domain the HELO identity
# can be checked for.  Address literals ("[192.0.2.1]") and bare words are
# not, and yield "none" without a DNS query (section 2.3).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_FQDN = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})+\.?")


def install(lookup: Lookup, void_lookup_limit: int) -> None:
    """Route all of pyspf's DNS lookups through `lookup`.

    Called once at start-up before any thread starts (pyspf keeps these as
    module globals).  pyspf calls its lookup as (name, qtype, strict,
    timeout), where timeout is what is left of the per-identity budget.
    """

    def pyspf_lookup(name: str, qtype: str, strict: object, timeout: float) -> list[Record]:
        try:
            return lookup(name, qtype, timeout)
        except DnsTempError as error:
            raise spf.TempError(str(error)) from None
        except DnsLimitError as error:
            raise spf.PermError(str(error)) from None

    spf.DNSLookup = pyspf_lookup
    spf.MAX_VOID_LOOKUPS = void_lookup_limit


def is_checkable_helo(helo: str) -> bool:
    """Whether a HELO argument is a domain name SPF can be checked for."""
    return bool(_FQDN.fullmatch(helo))


def check(
    identity: Identity,
    *,
    client_ip: IPAddress,
    helo: str,
    mail_from: str,
    receiver: str,
    lookup_time: float,
    clock: Callable[[], float] = time.monotonic,
) -> SpfOutcome:
    """Run check_host() (RFC 7208 section 4) for one identity.

    For Identity.HELO the sender is postmaster@<helo> (section 2.3); for
    MAIL_FROM it is `mail_from`.  `lookup_time` bounds the DNS time of the
    whole evaluation (section 4.6.4); running out yields temperror.
    """
    if identity is Identity.HELO:
        sender = f"postmaster@{helo}"
        if not is_checkable_helo(helo):
            return SpfOutcome(identity, SpfResult.NONE, helo, sender)
    else:
        sender = mail_from
    started = clock()
    query = spf.query(
        i=str(client_ip),
        s="" if identity is Identity.HELO else sender,
        h=helo,
        receiver=receiver,
        querytime=lookup_time,
    )
    result, _code, explanation = query.check()
    elapsed = clock() - started
    outcome = SpfResult(result)
    problem = None
    if outcome in (SpfResult.PERMERROR, SpfResult.TEMPERROR):
        problem = explanation
        explanation = None
    elif explanation == spf.EXPLANATIONS.get(result):
        # pyspf fills in its stock wording when the domain gave no exp=
        # (RFC 7208 section 6.2); only the domain's own text is reported.
        explanation = None
    return SpfOutcome(
        identity=identity,
        result=outcome,
        domain=query.o,
        sender=sender,
        mechanism=query.mechanism,
        explanation=explanation or None,
        problem=problem,
        lookup_seconds=elapsed,
    )
