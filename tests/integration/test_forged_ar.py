"""Forged Authentication-Results against the real programs that trust them.

A differential test of how spfmilter deletes fields that claim its
authserv-id (RFC 8601 section 5).  Spellings of that id are generated from
what the readers of Authentication-Results accept: RFC 8601 with RFC 5322's
comments, quoted strings and folding; OpenDMARC 1.4's tokenizer, which
drops a ")" outside a comment and skips any token that starts with "(",
escaped or quoted; SpamAssassin 4's AuthRes plugin, which counts a
comment's parentheses without quoted-pairs.  Each goes into a field that
claims an SPF pass (or a DKIM pass) for a victim domain whose DMARC policy
is p=reject and whose SPF gives the client ~all.  The message reaches

* the programs directly: Debian's OpenDMARC 1.4.2 milter, configured as a
  site runs it after spfmilter (spfmilter's authserv-id is its own and
  trusted, also followed by the job id) and SpamAssassin 4.0 with AuthRes
  trusting that id.  Which spellings they fall for is the measure of the
  test (SpamAssassin, slower, reads a sample);
* the real daemon over the milter protocol, its header changes applied as
  an MTA applies them, and then the same programs: no pass for the victim
  (SpamAssassin reads each field spfmilter kept).

Messages carry the MTA's own Received: line as Postfix hands it to its
milters, so that spfmilter's header lands above it and the forged one
below, as SpamAssassin's SPF plugin expects.  Milters are driven directly,
since a Postfix delivery per spelling would take seconds;
tests/integration/test_consumers.py runs a few spellings through the real
Postfix.  SPFMILTER_AR_SPELLINGS sets how many spellings are generated
besides the known ones; the slow test tries many more.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from testkit.daemon import Daemon, config_text, free_port
from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file
from testkit.milterclient import EomResult, MilterClient, apply_header_changes
from tests.support.consumers import (
    AUTHRES_DKIM_PASS,
    AUTHRES_SPF_PASS,
    DmarcVerdict,
    PrivateOpenDMARC,
    SpamAssassin,
    start_port53_dns,
)
from tests.support.stack import PASS_IP, RCPT

Header = tuple[str, str]

AUTHSERV_ID = "mx.test.example"  # spfmilter's, trusted by OpenDMARC and SpamAssassin
HELO = "helo-pass.example.org"  # passes for PASS_IP
# SPF "~all" for PASS_IP (spfmilter says softfail), DMARC p=reject.
VICTIM = "spf-softfail.example.org"
SENDER = f"ceo@{VICTIM}"
DATE = "Thu, 17 Apr 2025 12:00:00 +0000"
# What the forged field claims: each is enough for a DMARC pass.
FORGED = {
    "spf": f"spf=pass smtp.mailfrom={VICTIM}",
    "dkim": f"dkim=pass header.d={VICTIM} header.s=selector",
}
# Stands for the job (queue) id in a spelling: the MTA passes the same one to
# every milter, and OpenDMARC with AuthservIDWithJobID trusts "id/job".
JOB = "{job}"
GENERATED = int(os.environ.get("SPFMILTER_AR_SPELLINGS", "400"))
GENERATED_SLOW = 6000
# How many of the generated spellings SpamAssassin also reads without
# spfmilter (the slow test: all).
SAMPLED = 60

# --- the spellings -----------------------------------------------------------

_ID = AUTHSERV_ID
OPENDMARC, SPAMASSASSIN = "OpenDMARC", "SpamAssassin"
# The spellings and every class of them found since, each ending
# with the ";" that ends the authserv-id part, and the programs that take
# it, without spfmilter, for spfmilter's authserv-id.
KNOWN = {
    f"{_ID};": {OPENDMARC, SPAMASSASSIN},
    "MX.Test.EXAMPLE;": {OPENDMARC, SPAMASSASSIN},
    f"\r\n\t{_ID}\r\n\t;": {OPENDMARC, SPAMASSASSIN},
    f"{_ID} 1;": {OPENDMARC, SPAMASSASSIN},
    # RFC 8601 with RFC 5322 comments, quoted strings, CFWS around dots.
    f"(c) {_ID};": {OPENDMARC},
    f"(a (nested) b) {_ID};": {OPENDMARC},
    f"(a \\) b) {_ID};": {OPENDMARC},
    f"(;) {_ID};": {OPENDMARC},
    f"((a)b){_ID};": {OPENDMARC},
    f'"{_ID}";': {OPENDMARC},
    f'"{_ID}" 1;': {OPENDMARC},
    '"mx".test."example";': {OPENDMARC},
    "mx . test . example;": {OPENDMARC},
    "mx (c) . (d) test.\r\n\texample;": {OPENDMARC},
    f"{_ID} (a\\)b);": {OPENDMARC},
    # OpenDMARC's tokenizer: a ")" outside a comment is dropped ...
    f"{_ID});": {OPENDMARC},
    "m)x.test.example;": {OPENDMARC},
    "mx.t)est.exam)ple);": {OPENDMARC},
    "(c)m)x.test.example;": {OPENDMARC},
    f")(c){_ID};": {OPENDMARC},
    # ... any token that starts with "(", however written, is a comment ...
    f"\\( {_ID};": {OPENDMARC},
    f'"(" {_ID};': {OPENDMARC},
    f"\\(junk {_ID};": {OPENDMARC},
    f'"(junk; x=y." {_ID};': {OPENDMARC},
    f'""(c){_ID};': {OPENDMARC},
    f"\\(abc(def){_ID};": {OPENDMARC},
    f"\\(a((b)c){_ID};": {OPENDMARC},
    f"(c) \\(c {_ID};": {OPENDMARC},
    "mx \\(c .test. \\(d example;": {OPENDMARC},
    # ... quotes and escapes make one token of anything ...
    'm""x.te""st.example;': {OPENDMARC},
    "mx\\.test\\.example;": {OPENDMARC},
    'mx"."test"."example;': {OPENDMARC},
    # ... and with AuthservIDWithJobID "id/job" is id.
    f"{_ID}/{JOB};": {OPENDMARC},
    # SpamAssassin counts a comment's parentheses without quoted-pairs.
    f"{_ID} (\\().x) ;": {SPAMASSASSIN},
    f"{_ID}(c)1;": {SPAMASSASSIN},
}
# Ways each part may be written.  Prefixes come before the id, suffixes
# after it; a dot may carry comments of either reader.
PREFIXES = [
    *([""] * 6),
    " ",
    "\r\n\t",
    "(c) ",
    "(c)",
    "(a (nested) b) ",
    "(a \\) b) ",
    "(\\() ",
    "(;) ",
    "(x=y.z) ",
    "\\( ",
    "\\(junk ",
    "\\(\\( ",
    '"(" ',
    '"(junk; x=y." ',
    '""(c)',
    '"" ',
    "\\(abc(def)",
    "((a)b)",
    ")",
    ") ",
    ")(c) ",
    "relay.example.org ",
    "1 ",
]
SUFFIXES = [
    *([""] * 6),
    " ",
    "(c)",
    " (c)",
    " 1",
    "(c)1",
    " 1 (c)",
    "\r\n\t1",
    ")",
    " )",
    " \\(x",
    ' "(x"',
    " (\\().x)",
    " (a\\)b)",
    " (c) 1 (d)",
]
DOTS = [
    *(["."] * 8),
    " . ",
    ". ",
    " .",
    "\r\n\t.",
    "(c).",
    ".(c)",
    " (c) . ",
    " \\(c . ",
    ' "(c" . ',
    ' ""(c).',
    "\\.",
    '"."',
    ".)",
    ").",
]
ENDS = [*([""] * 6), ".", f"/{JOB}", f"./{JOB}", ")"]
SEPARATORS = [";", ";", " ;", "\r\n\t;", ";\r\n\t"]
# Characters with a meaning to some reader, put anywhere by a mutation.
SPECIALS = '()"\\ .;/'


def _label(rng: random.Random, label: str) -> str:
    """One label, written in one of the ways the readers allow."""
    way = rng.randrange(8)
    if way == 1:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in label)
    if way == 2:
        return "".join("\\" + c if rng.random() < 0.4 else c for c in label)
    if way in (3, 4):
        cut = rng.randrange(len(label) + 1)
        return label[:cut] + (")" if way == 3 else '""') + label[cut:]
    if way == 5:
        return f'"{label}"'
    if way == 6:
        cut = rng.randrange(1, len(label) + 1)
        return f'{label[:cut]}"{label[cut:]}"'
    return label


def _spelling(rng: random.Random) -> str:
    labels = [_label(rng, label) for label in AUTHSERV_ID.split(".")]
    if rng.random() < 0.15:
        name = '"' + rng.choice([AUTHSERV_ID, AUTHSERV_ID.upper(), "mx.test\\.example"]) + '"'
    else:
        name = labels[0] + "".join(rng.choice(DOTS) + label for label in labels[1:])
    spelling = "".join(
        (rng.choice(PREFIXES), name, rng.choice(ENDS), rng.choice(SUFFIXES), rng.choice(SEPARATORS))
    )
    if rng.random() < 0.25:  # one character more, anywhere before the ";"
        # but not after a CR or LF: a folded field goes on with white space.
        end = spelling.rindex(";") + 1
        cut = rng.choice([cut for cut in range(end) if spelling[cut - 1 : cut] not in ("\r", "\n")])
        spelling = spelling[:cut] + rng.choice(SPECIALS) + spelling[cut:]
    return spelling


def spellings(generated: int, seed: int) -> list[str]:
    """The KNOWN spellings, then `generated` others drawn with `seed`."""
    rng = random.Random(seed)
    found = dict.fromkeys(KNOWN)
    while len(found) < len(KNOWN) + generated:
        found.setdefault(_spelling(rng))
    return list(found)


# Fields of other receivers, however spelled: never deleted, never trusted.
OTHERS = [
    "relay.example.org;",
    "(c) relay.example.org 1;",
    '"relay.example.org";',
    "mx.test.example.evil;",
    "evil.mx.test.example;",
    "mx . test . example . evil;",
    "mx.test.examplex;",
    "xmx.test.example;",
    "mx.test.example-1;",
    "mx-test.example;",
    "relay.example.org; spf=pass smtp.helo=mx.test.example (via mx.test.example);",
]

# --- the programs ----------------------------------------------------------------


@dataclass
class Programs:
    dns: DNSTestServer
    daemon: Daemon
    opendmarc: PrivateOpenDMARC
    spamassassin: SpamAssassin


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Programs]:
    work = tmp_path_factory.mktemp("forged-ar")
    with ExitStack() as cleanup:
        zone = load_zone_file(ZONES / "core.yaml")
        dns = start_port53_dns({**zone, f"_dmarc.{VICTIM}": [{"TXT": "v=DMARC1; p=reject"}]})
        cleanup.callback(dns.stop)
        # Trusting as much as it can be made to: spfmilter's id is its own
        # (compared without case), and "id/job" stands for id in a message
        # of that job.
        opendmarc = PrivateOpenDMARC(
            work / "opendmarc",
            port=free_port(),
            nameserver=dns.host,
            authserv_id=AUTHSERV_ID,
            trusted_authserv_ids=[AUTHSERV_ID],
            authserv_id_with_job_id=True,
        )
        cleanup.enter_context(opendmarc)
        spamassassin = SpamAssassin(
            work / "spamassassin", nameserver=dns.host, authres_trusted=[AUTHSERV_ID]
        )
        spamassassin.prepare()
        config = config_text(
            dns, {"headers": {"type": "authentication-results", "authserv_id": AUTHSERV_ID}}
        )
        daemon = cleanup.enter_context(Daemon(work / "milter", config))
        yield Programs(dns, daemon, opendmarc, spamassassin)
    assert daemon.unexpected() == [], daemon.log_text()
    assert opendmarc.unexpected() == [], opendmarc.log_text()
    shutil.rmtree(work)


def message(spelling: str, method: str, job: str) -> list[Header]:
    """The headers of a message with a forged field, as Postfix passes them
    to its milters: its own Received: line first."""
    return [
        (
            "Received",
            f"from client.example (client.example [{PASS_IP}])\r\n\tby {AUTHSERV_ID} "
            f"(Postfix) with ESMTP id {job}\r\n\tfor <{RCPT}>; {DATE}",
        ),
        ("Authentication-Results", f"{spelling.replace(JOB, job)} {FORGED[method]}"),
        ("From", SENDER),
        ("To", RCPT),
        ("Subject", "forged"),
        ("Date", DATE),
        ("Message-ID", f"<{job}@test.example>"),
    ]


def run_milter(spec: str, headers: Sequence[Header], job: str) -> EomResult:
    """One message from PASS_IP through the milter at `spec`."""
    with MilterClient(spec) as client:
        client.negotiate()
        client.macros("C", {"j": AUTHSERV_ID})
        client.connect("client.example", PASS_IP)
        client.helo(HELO)
        sent = client.transaction(
            f"<{SENDER}>", [f"<{RCPT}>"], headers=headers, macros={"E": {"i": job}}
        )
    assert sent.eom is not None and sent.final.kind in ("continue", "accept"), sent
    return sent.eom


def dmarc(programs: Programs, headers: Sequence[Header], job: str) -> str:
    """OpenDMARC's verdict on the message: the result in the field it adds."""
    added = [
        change.value
        for change in run_milter(
            f"inet:{programs.opendmarc.port}@127.0.0.1", headers, job
        ).modifications
        if change.name == "Authentication-Results" and change.value and "dmarc=" in change.value
    ]
    assert len(added) == 1, added
    verdict = DmarcVerdict.from_value(added[0])
    assert verdict.header_from == VICTIM, verdict
    return verdict.result


def raw(headers: Sequence[Header], message_id: str) -> bytes:
    """The message as delivered, with its own Message-ID."""
    fields = [(n, v) for n, v in headers if n != "Message-ID"] + [("Message-ID", message_id)]
    text = "".join(f"{name}: {value}\n" for name, value in fields) + "\nhi\n"
    return text.replace("\r\n", "\n").encode()


@dataclass
class Trial:
    """What the programs concluded over many spellings."""

    spellings: int = 0
    seconds: float = 0.0
    # (spelling, forged result) OpenDMARC took a pass from, without
    # spfmilter and after it.
    opendmarc_alone: list[tuple[str, str]] = field(default_factory=list)
    opendmarc_after: list[tuple[str, str]] = field(default_factory=list)
    # Spellings SpamAssassin took a pass from, without spfmilter (of those
    # sampled) and after it (of those whose forged field spfmilter kept).
    spamassassin_sampled: int = 0
    spamassassin_alone: list[str] = field(default_factory=list)
    kept: int = 0
    spamassassin_after: list[str] = field(default_factory=list)
    # Spellings after which SpamAssassin's SPF plugin did not take
    # spfmilter's softfail.
    spf_plugin_misled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.spellings} spellings x {len(FORGED)} forged results in {self.seconds:.1f} s; "
            f"without spfmilter OpenDMARC passed {len(self.opendmarc_alone)}, SpamAssassin "
            f"took a pass from {len(self.spamassassin_alone)} of {self.spamassassin_sampled}; "
            f"spfmilter kept {self.kept} forged fields; after it OpenDMARC passed "
            f"{len(self.opendmarc_after)}, SpamAssassin took {len(self.spamassassin_after)}"
        )


def trial(programs: Programs, tried: Sequence[str], sampled: int) -> Trial:
    """Every spelling with every forged result, without and after spfmilter.

    SpamAssassin, which takes some 40 ms a message, reads the first
    `sampled` spellings without spfmilter, and after it each field that
    spfmilter kept (where it deleted the field there is nothing to read).
    """
    started = time.monotonic()
    result = Trial(spellings=len(tried), spamassassin_sampled=min(sampled, len(tried)))
    daemon = f"inet:{programs.daemon.port}@127.0.0.1"
    alone: dict[str, str] = {}  # by Message-ID, the spellings for SpamAssassin
    after: dict[str, str] = {}
    mailbox: list[bytes] = []
    for number, spelling in enumerate(tried):
        for method in FORGED:
            job = f"J{number}{method.upper()}"
            headers = message(spelling, method, job)
            if dmarc(programs, headers, job) == "pass":
                result.opendmarc_alone.append((spelling, method))
            changes = run_milter(daemon, headers, job).modifications
            filtered = apply_header_changes(headers, changes)
            if dmarc(programs, filtered, job) == "pass":
                result.opendmarc_after.append((spelling, method))
            if method != "spf":
                continue
            if number < sampled:
                alone[f"<alone.{job}@test.example>"] = spelling
                mailbox.append(raw(headers, f"<alone.{job}@test.example>"))
            if headers[1] in filtered:
                result.kept += 1
                after[f"<{job}@test.example>"] = spelling
                mailbox.append(raw(filtered, f"<{job}@test.example>"))
    hits = programs.spamassassin.check_many(mailbox) if mailbox else {}
    result.spamassassin_alone = [s for key, s in alone.items() if AUTHRES_SPF_PASS in hits[key]]
    for key, spelling in after.items():
        if {AUTHRES_SPF_PASS, AUTHRES_DKIM_PASS} & hits[key]:
            result.spamassassin_after.append(spelling)
        if "SPF_SOFTFAIL" not in hits[key] or "SPF_PASS" in hits[key]:
            result.spf_plugin_misled.append(spelling)
    result.seconds = time.monotonic() - started
    return result


def assert_none_trusted(result: Trial) -> None:
    print(result.summary())  # pytest -s shows it
    # The test means something: without spfmilter the programs fall for
    # the known spellings, and for many generated ones.
    taken = {
        OPENDMARC: {spelling for spelling, _ in result.opendmarc_alone},
        SPAMASSASSIN: set(result.spamassassin_alone),
    }
    for program, spellings_taken in taken.items():
        expected = {spelling for spelling, takers in KNOWN.items() if program in takers}
        assert spellings_taken & KNOWN.keys() == expected, program
    # A third of all messages fool OpenDMARC.
    assert len(result.opendmarc_alone) * 3 >= result.spellings * len(FORGED), result.summary()
    # After spfmilter, no program takes a pass from any of them.
    assert result.opendmarc_after == [], result.summary()
    assert result.spamassassin_after == [], result.summary()
    assert result.spf_plugin_misled == [], result.summary()


def test_no_spelling_of_our_authserv_id_is_trusted(programs: Programs) -> None:
    tried = spellings(GENERATED, seed=17)
    assert_none_trusted(trial(programs, tried, sampled=len(KNOWN) + SAMPLED))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # six minutes here, much of it SpamAssassin's
def test_many_more_spellings(programs: Programs) -> None:
    tried = spellings(GENERATED_SLOW, seed=8601)
    assert_none_trusted(trial(programs, tried, sampled=len(tried)))


@pytest.mark.parametrize("spelling", OTHERS)
def test_fields_of_other_receivers_are_kept(programs: Programs, spelling: str) -> None:
    headers = message(spelling, "spf", "OTHER")
    changes = run_milter(f"inet:{programs.daemon.port}@127.0.0.1", headers, "OTHER").modifications
    after = apply_header_changes(headers, changes)
    assert [change for change in changes if change.action == "chgheader"] == []
    assert headers[1] in after
    # Nor would the programs have trusted them.
    assert dmarc(programs, headers, "OTHER") == dmarc(programs, after, "OTHER") == "fail"


def test_a_clients_received_spf_is_not_taken_for_ours(programs: Programs) -> None:
    """spfmilter gives its result in Authentication-Results only here, and
    OpenDMARC, when no trusted A-R gave it an SPF pass, takes the topmost
    Received-SPF for the receiving MTA's verdict: the client's own must go."""
    job = "RECEIVEDSPF"
    headers = message("", "spf", job)
    headers[1] = (
        "Received-SPF",
        f"pass ({AUTHSERV_ID}: {PASS_IP} is authorized) receiver={AUTHSERV_ID}; "
        f'identity=mailfrom; envelope-from="{SENDER}"; helo={HELO}; client-ip={PASS_IP}',
    )
    # Without spfmilter OpenDMARC falls for it.
    assert dmarc(programs, headers, job) == "pass"
    changes = run_milter(f"inet:{programs.daemon.port}@127.0.0.1", headers, job).modifications
    after = apply_header_changes(headers, changes)
    assert [name for name, _ in after].count("Received-SPF") == 0
    assert dmarc(programs, after, job) == "fail"
