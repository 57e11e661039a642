"""Hypothesis strategies of hostile input, shared by the property tests.

This module owns what the property tests draw: text with every character
that has broken mail software, domains, addresses, SPF outcomes whose text
fields are all hostile, spellings of an authserv-id as the readers of
Authentication-Results would find it, and the settings of every property
test (no profile is loaded, no example database is kept;
SPFMILTER_PROPERTY_EXAMPLES asks for a longer run).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import string
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from spfmilter.config.schema import (
    Config,
    HeadersConfig,
    HeaderType,
    PolicyConfig,
    ReplyConfig,
    SkipConfig,
)
from spfmilter.config.values import parse_domains, parse_macros, parse_results
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Connection,
    Envelope,
    Identity,
    IPAddress,
    Macro,
    SpfOutcome,
    SpfQuery,
    SpfResult,
    Stage,
)
from spfmilter.core.session import Services
from spfmilter.evaluation.evaluator import Evaluator
from spfmilter.evaluation.resolver import DnsTempError, Record

T = TypeVar("T")
U = TypeVar("U")


SETTINGS = settings(
    max_examples=int(os.environ.get("SPFMILTER_PROPERTY_EXAMPLES", "100")),
    deadline=None,  # the test machines are noisy
    database=None,  # nothing kept between runs, nothing written to the tree
    suppress_health_check=[HealthCheck.too_slow],
    phases=[p for p in Phase if p is not Phase.explain],  # slow, and says little here
)


# Characters that have broken mail software: line ends of every kind, NUL,
# comment and quoting syntax, '%' (a format string to libmilter), 8-bit,
# a lone surrogate (undecodable bytes of a macro), astral characters.
SPECIAL = "\r\n\x00\t\x0b\x0c\x7f\x85\u2028\u2029()\\\"%;=.@ '<>\udcff\xe9\U0001f600"
PIECES = [*SPECIAL, "  ", "\r\n", "\r\n\t", "%s", "%%", "=?utf-8?q?=0A?="]
CHARS = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL))
texts = st.one_of(
    st.text(CHARS, max_size=30),
    # Words of printable ASCII with the special characters between them.
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(string.printable, max_size=6)),
             min_size=1, max_size=12).map("".join),
    # Very long text, cheaply: a short piece repeated.
    st.builds(lambda piece, times: piece * times, st.text(CHARS, min_size=1, max_size=4),
              st.integers(60, 400)),
)  # fmt: skip
DOMAINS = ("example.com", "example.org", "mail.example.org", "evilexample.com", "fwd.example")
_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=5)
labels = st.one_of(_alnum, st.builds("{}-{}".format, _alnum, _alnum))
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
domains = st.one_of(st.sampled_from(DOMAINS), hostnames)
ips = st.one_of(
    st.sampled_from(["127.0.0.1", "::1", "198.51.100.7", "2001:db8::7", "::ffff:192.0.2.1"]).map(
        ipaddress.ip_address
    ),
    st.ip_addresses(),
)


def rarely(strategy: st.SearchStrategy[T], usual: st.SearchStrategy[U]) -> st.SearchStrategy[T | U]:
    """`strategy` one time in five, else `usual` (hypothesis has no weights)."""
    # Not n == 0: hypothesis favours 0, and shrinking towards it leaves `usual`.
    return st.integers(0, 4).flatmap(lambda n: strategy if n == 3 else usual)


# Fail first: hypothesis favours the first choice, and fail refuses.
spf_results = st.sampled_from(sorted(SpfResult, key=lambda r: r is not SpfResult.FAIL))


def outcomes(identity: Identity) -> st.SearchStrategy[SpfOutcome]:
    """Any outcome of `identity`: every text field hostile."""
    maybe = st.one_of(st.none(), texts)
    return st.builds(
        SpfOutcome, st.just(identity), spf_results, texts, texts, maybe, maybe,
        maybe, st.floats(0, 30),
    )  # fmt: skip


comment_texts = st.text(CHARS, max_size=8).map(lambda t: re.sub(r"([()\\])", r"\\\1", t))
comments = st.recursive(
    comment_texts.map("({})".format),
    lambda inner: st.builds("({}{}{})".format, comment_texts, inner, comment_texts),
    max_leaves=3,
)
fws = st.sampled_from([" ", "\t", "\r\n ", "\r\n\t", "  "])
cfws = st.lists(st.one_of(fws, comments), min_size=1, max_size=3).map("".join)


# Comments only to the A-R tokenizer of OpenDMARC 1.4: a token whose first
# character is "(" however written.  White space before ends the token
# before it, white space (or the ")" closing it) after ends it.
tokenizer_comments = st.builds(
    lambda form, text: form.format(text),
    st.sampled_from([" \\({} ", ' "({}" ', ' ""({})']),
    st.text(string.ascii_letters + string.digits, max_size=4),
)


@st.composite
def spelled(draw: st.DrawFn, authserv_id: str) -> str:
    """An A-R value whose authserv-id is `authserv_id`, however spelled: as
    RFC 8601 reads it, or as OpenDMARC's tokenizer reads it."""
    tokenizer = draw(st.booleans())

    def case(char: str) -> str:
        return char.upper() if draw(st.booleans()) else char

    def escape(char: str) -> str:
        return "\\" + char if draw(st.booleans()) else char

    def noise() -> str:
        # The tokenizer drops a ")" outside a comment; "" is an empty quote.
        return draw(st.sampled_from(["", ")", '""'])) if tokenizer else ""

    # A "(" that touches a token is part of it to the tokenizer.
    around = st.one_of(st.just(""), cfws.map(" {}".format) if tokenizer else cfws)
    if not tokenizer and draw(st.booleans()):  # a quoted-string
        spelling = '"' + "".join(escape(case(c)) for c in authserv_id) + '"'
    else:  # a token, its labels apart
        labels = [
            "".join(noise() + escape(case(c)) for c in label) for label in authserv_id.split(".")
        ]
        # An escaped dot belongs to the token around it: apart, it would
        # begin the next one.
        dots = st.one_of(st.builds("{}.{}".format, around, around), st.just("\\."))
        spelling = labels[0] + "".join(f"{draw(dots)}{label}" for label in labels[1:])
    # A trailing dot: the tokenizer would join it to the version, or fail.
    dot = "" if tokenizer else draw(st.sampled_from(["", "."]))
    job = draw(st.sampled_from(["", "/4XkQ2b1mFz"]))  # OpenDMARC's AuthservIDWithJobID
    version = draw(st.one_of(st.just(""), st.builds("{}1".format, around.filter(bool))))
    # Before the id, comments of either kind; after it, of its reader's kind
    # (RFC 8601 would take a tokenizer comment for a word of the id).
    first = draw(st.one_of(around, tokenizer_comments))
    last = draw(st.one_of(around, tokenizer_comments) if tokenizer else around)
    rest = draw(st.one_of(st.just(""), st.builds("; {}".format, texts)))
    return f"{first}{spelling}{dot}{job}{version}{last}{rest}"


networks = st.builds(
    lambda ip, bits: ipaddress.ip_network(f"{ip}/{min(bits, ip.max_prefixlen)}", strict=False),
    ips,
    st.one_of(st.integers(0, 128), st.integers(24, 128)),  # mostly not half the Internet
)
# Values exactly as the configuration parsers produce them.
results = rarely(
    st.lists(st.sampled_from(["fail", "softfail", "neutral", "none", "permerror"])),
    st.just(["fail"]),  # mostly the default
).map(lambda names: parse_results(", ".join(names)))
domain_lists = st.lists(domains, max_size=3).map(lambda names: parse_domains(", ".join(names)))
some_domains = rarely(domain_lists, st.just(()))  # skips that need DNS: mostly off
policies = st.builds(
    PolicyConfig,
    helo_check=st.booleans(),
    helo_reject=results,
    helo_reject_null_sender_only=st.booleans(),
    mailfrom_reject=results,
    permerror_reject=st.booleans(),
    temperror_defer=st.booleans(),
    reject_stage=st.sampled_from(Stage),
    dry_run=st.booleans(),
    exempt_recipients=st.sampled_from([(), ("postmaster@",), ("abuse@example.net",)]),
)
configs = st.builds(
    lambda p, s, h, r: dataclasses.replace(Config(), policy=p, skip=s, headers=h, reply=r),
    policies,
    st.builds(
        SkipConfig,
        networks=st.lists(networks, max_size=3).map(tuple),
        authenticated=st.booleans(),
        trusted_relays=st.lists(networks, max_size=2).map(tuple),
        helo_names=some_domains,
        ptr_domains=some_domains,
        forwarder_domains=some_domains,
        sender_domains=domain_lists,
        macros=rarely(
            st.sampled_from(["{daemon_name}=ORIGINATING", "x=1, {auth_type}=PLAIN"]), st.just("")
        ).map(parse_macros),
    ),
    st.builds(
        HeadersConfig,
        type=st.sampled_from([*HeaderType, HeaderType.BOTH]),
        authserv_id=st.one_of(st.just(""), hostnames),
        hide_receiver=st.booleans(),
        remove_forged=rarely(st.just(False), st.just(True)),
    ),
    st.builds(ReplyConfig, enhanced_status_codes=st.booleans()),
)
mail_froms = st.one_of(
    st.just(""),
    texts,
    st.builds(lambda local, d: f"{local}@{d}", st.text(CHARS, max_size=8), domains),
)


def connections(client_ips: st.SearchStrategy[IPAddress | None]) -> st.SearchStrategy[Connection]:
    return st.builds(Connection, client_ips, texts, hostnames, st.one_of(domains, texts))


auth_users = rarely(texts, st.just(""))  # mostly no SASL login
# The values the MTA sent for the macros [skip] macros names.
macro_values = st.lists(
    st.builds(
        Macro, st.sampled_from(["{daemon_name}", "x"]), st.one_of(st.just("ORIGINATING"), texts)
    ),
    max_size=2,
).map(tuple)
transactions = st.builds(Envelope, mail_froms, auth_users, macro_values)


HOST_NAME = "host.example"


Op = tuple[str, ...]


def operations(our_id: str) -> st.SearchStrategy[list[Op]]:
    """SMTP commands after connect, with any arguments: mostly whole
    transactions (MAIL, RCPTs, headers, then end of message or abort), and
    any command anywhere.  Headers include A-R that claim to be ours."""
    recipients = st.one_of(texts, st.sampled_from(["<postmaster@example.net>", "<a@example.net>"]))
    names = rarely(texts, st.sampled_from(["Authentication-Results", "authentication-results"]))
    values = st.one_of(spelled(our_id), texts, spelled(our_id), spelled("other.example"))
    hello = st.tuples(st.just("hello"), st.one_of(domains, texts))
    mail = st.tuples(
        st.just("mail"), mail_froms, auth_users, st.one_of(st.just("ORIGINATING"), texts)
    )
    rcpt = st.tuples(st.just("rcpt"), recipients)
    header = st.tuples(st.just("header"), names, values)
    forgery = st.tuples(st.just("header"), st.just("Authentication-Results"), spelled(our_id))
    end = st.tuples(st.sampled_from(["eom", "eom", "abort"]), texts)
    any_op = st.one_of(hello, mail, rcpt, header, end)
    transaction = st.builds(
        lambda *parts: [op for part in parts for op in part],
        st.lists(hello, max_size=1),
        st.lists(mail, min_size=1, max_size=1),
        st.lists(rcpt, max_size=3),
        st.one_of(st.lists(header, max_size=4), st.lists(forgery, min_size=2, max_size=3)),
        st.lists(end, max_size=1),
        st.lists(any_op, max_size=1),
    )
    return st.lists(transaction, min_size=1, max_size=3).map(
        lambda parts: [op for p in parts for op in p]
    )


def make_services(
    data: st.DataObject, metrics: Metrics, checked: list[Identity] | None = None
) -> Services:
    """A checker and a lookup whose answers hypothesis draws; `checked`
    collects the identities evaluated."""

    def check(query: SpfQuery, lookup_time: float) -> SpfOutcome:
        assert lookup_time > 0  # pyspf reads 0 as "no limit"
        if checked is not None:
            checked.append(query.identity)
        return data.draw(outcomes(query.identity))

    def lookup(name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        answer = data.draw(st.sampled_from(["none", "trouble", "client"]))
        if answer == "trouble":
            raise DnsTempError(f"DNS timeout looking up {name} {qtype}")
        if answer == "none":
            return []
        if qtype == "PTR":
            return [((name, qtype), data.draw(st.one_of(domains, texts)))]
        return [((name, qtype), str(data.draw(ips)))]

    evaluator = Evaluator(check, lookup, metrics, lookup_time=Config().dns.lookup_time)
    return Services(evaluator, metrics, host_name=HOST_NAME)
