"""Loading, before the privilege drop, everything a transaction may load later.

This module owns the start-up exercise that makes the daemon independent of
its installation once it runs unprivileged: Python and its libraries import
some modules only on first use (the IDNA and punycode codecs for a U-label
sender, parts of pyspf's macro and exp= handling), and an installation under
/root (mode 0700, the usual place of a clone or a virtual environment on a
fresh Debian) is unreadable after the drop, so such an import would fail on
the first real mail.  :func:`exercise` runs real SPF evaluations against
canned DNS data, through the same pyspf adapter and wire codec the daemon uses.
:class:`ImportWatch` then reports any module imported afterwards, so a new
lazy import shows up as a warning in every test instead of as a failure on a
user's machine.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from spfmilter.core.model import Identity, SpfQuery
from spfmilter.evaluation import dnswire
from spfmilter.evaluation.pyspf import Checker
from spfmilter.evaluation.resolver import Record

log = logging.getLogger("spfmilter.warmup")

# Canned zone: every mechanism, modifier and macro kind pyspf has code for,
# a U-label domain (idna and punycode codecs), and an explanation.
_ZONE: dict[tuple[str, str], list[Record]] = {
    ("warmup.example", "TXT"): [
        (
            ("warmup.example", "TXT"),
            (
                b"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx ptr exists:%{ir}.%{l1r-}.%{d2}"
                b" include:inc.warmup.example -all exp=exp.warmup.example",
            ),
        )
    ],
    ("inc.warmup.example", "TXT"): [
        (("inc.warmup.example", "TXT"), (b"v=spf1 redirect=xn--bcher-kva.example",))
    ],
    ("xn--bcher-kva.example", "TXT"): [
        (("xn--bcher-kva.example", "TXT"), (b"v=spf1 a:%{h}/24 ?all",))
    ],
    ("bücher.example", "TXT"): [(("bücher.example", "TXT"), (b"v=spf1 ~all",))],
    ("exp.warmup.example", "TXT"): [
        (("exp.warmup.example", "TXT"), (b"%{i} %{c} %{r} %{t} %{L} %{s} %{o} %{v} %{p}",))
    ],
    # The client's PTR name, confirmed but outside the domain: the ptr
    # mechanism and %{p} run without a void lookup (RFC 7208 section 4.6.4),
    # so the evaluation gets past exists: (void) to include:, redirect= and
    # exp= within a void lookup limit of 2.
    ("9.113.0.203.in-addr.arpa", "PTR"): [
        (("9.113.0.203.in-addr.arpa", "PTR"), "relay.example.net")
    ],
    ("relay.example.net", "A"): [(("relay.example.net", "A"), "203.0.113.9")],
    ("warmup.example", "A"): [(("warmup.example", "A"), "192.0.2.99")],
    ("warmup.example", "MX"): [(("warmup.example", "MX"), (10, "mx.warmup.example"))],
    ("mx.warmup.example", "A"): [(("mx.warmup.example", "A"), "192.0.2.98")],
    ("mx.warmup.example", "AAAA"): [(("mx.warmup.example", "AAAA"), "2001:db8::98")],
}


def _canned_answers(name: str, qtype: str, budget: float | None) -> tuple[list[Record], float]:
    return _ZONE.get((name.lower(), qtype), []), float("inf")


def exercise(void_lookup_limit: int) -> None:
    """Evaluate canned transactions and parse a canned reply of every type.

    Installs a checker on canned data into pyspf; the daemon installs its
    real checker afterwards (both before any thread starts).
    """
    checker = Checker(_canned_answers)
    checker.install(void_lookup_limit)
    for client, sender, helo in (
        ("203.0.113.9", "Alice.Smith@warmup.example", "mail.warmup.example"),
        ("2001:db8:1::9", "bob@warmup.example", "[2001:db8:1::9]"),
        ("192.0.2.1", "carol@bücher.example", "helo.bücher.example"),
    ):
        for identity in Identity:
            query = SpfQuery(
                identity, ipaddress.ip_address(client), helo, sender, "mx.warmup.example"
            )
            checker.check(query, 1.0)
    _parse_every_type()


def _parse_every_type() -> None:
    qname = dnswire.encode_name("bücher.example")
    qtype = dnswire.QTYPES["TXT"]
    name = dnswire.QUESTION_NAME
    rdata = {
        "A": bytes(4),
        "AAAA": bytes(16),
        "CNAME": name,
        "PTR": name,
        "MX": b"\x00\x0a" + name,
        "TXT": b"\x03v=x",
        "SPF": b"\x03v=x",
        "SOA": name + name + bytes(20),
    }
    records = [dnswire.make_record(name, dnswire.QTYPES[k], 60, d) for k, d in rdata.items()]
    data = dnswire.make_reply(1, dnswire.make_question(qname, qtype), records)
    reply = dnswire.parse_reply(data, 1, qname, qtype)
    if reply is None or len(reply.answer) != len(rdata):
        raise RuntimeError("warm-up: the canned DNS reply did not parse")


class ImportWatch:
    """A meta path finder that only reports: each module first imported
    after start-up is logged once as a warning, then imported as usual."""

    def __init__(self) -> None:
        self._reported: set[str] = set()
        self._busy = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        # Logging could itself import something: report that one silently.
        if fullname not in self._reported and not getattr(self._busy, "on", False):
            self._reported.add(fullname)
            self._busy.on = True
            try:
                log.warning(
                    "module %s imported after start-up: where the installation is "
                    "unreadable to the unprivileged user this import fails; please report it",
                    fullname,
                )
            finally:
                self._busy.on = False
        return None

    def install(self) -> None:
        """Put the watch first on sys.meta_path (once, at start-up)."""
        sys.meta_path.insert(0, self)
