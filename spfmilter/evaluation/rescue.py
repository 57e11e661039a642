"""The rescue of forwarded mail: does a failed MAIL FROM domain vouch for the
message by DKIM, or does a trusted ARC sealer vouch for it?

This module owns the verification behind [rescue]: given a message whose
MAIL FROM got SPF `fail`, it returns a RescueOutcome value saying whether
an aligned DKIM signature (RFC 6376, alignment as RFC 7489 section 3.1) or
a valid ARC chain (RFC 8617) whose newest seal is by a trusted sealer that
recorded an SPF pass for that domain (or an aligned DKIM pass) rescues it,
why not, or that DNS trouble keeps us from knowing (the SPF temperror
analogue: the caller defers rather than refuses).

dkimpy does the cryptography; what this module adds are the bounds that
make it safe on hostile input within a milter callback (header bytes and
fields, signatures examined, ARC sets, key sizes through dkimkeys, CPU and
wall time), the rules RFC 6376 leaves to the verifier (l= shorter than the
body, From not signed, more than one From, rsa-sha1 per RFC 8301), and the
exceptions dkimpy lets escape on malformed input, turned into results.

Everything runs in the calling thread with objects of its own: dkimpy's
verifiers hold per-message state only, and nothing here changes a module
global, so verifications may run in parallel milter threads.
"""

from __future__ import annotations

import binascii
import enum
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dkim
import dkim.canonicalization
import dkim.util

from spfmilter.config.orgdomain import PublicSuffixes, normalise
from spfmilter.core.model import RescueKind
from spfmilter.evaluation import arcresults
from spfmilter.evaluation.dkimkeys import (
    MAX_KEY_BITS,
    MAX_KEY_NAMES,
    MIN_KEY_BITS,
    Exhausted,
    KeyFetcher,
    KeyProblem,
    Lookup,
    Meter,
)

# The bounds of one message's verification (docs: the module's report).
# The header section: generous for real mail (a long Received chain is tens
# of KB; Postfix's header_size_limit is 100 KB), bounding dkimpy's header
# work, which grows with fields times signed-field names.
MAX_HEADER_BYTES = 256 * 1024
MAX_HEADER_FIELDS = 1000
# DKIM-Signature fields examined, from the top (the newest): real mail has
# one to three (author, ESP, list).  Only those aligned with the MAIL FROM
# domain are verified.
MAX_SIGNATURES = 8
# One DKIM-Signature or ARC field: a 4096-bit b= is 684 characters and a
# long h= some hundreds.  dkimpy's regular expressions on these fields take
# time growing with the square of a run of white space in them.
MAX_SIGNATURE_FIELD_BYTES = 4096
# Names in one h= list: signers list 10 to 40, some twice (oversigning).
MAX_SIGNED_FIELDS = 100
# RFC 8617 section 4.2.1: instances run from 1 to 50; a longer chain fails.
MAX_ARC_SETS = 50
# Thread CPU one message may use: a base, and an allowance per megabyte of
# message.  A 2048-bit RSA verify costs about 0.5 ms and a 4096-bit one
# 1.3 ms; what dominates is dkimpy's reading and canonicalization of the
# body, 50 to 70 ms per megabyte and signature (relaxed), repeated for
# every signature and every ARC set.  Measured (benchmarks/bench_rescue.py):
# a plain forward of 20 KB takes 3 ms, a two-hop list message 10 ms, a chain
# of 50 sets (RFC 8617's most; dkimpy checks every set) 0.47 s, half the
# base; with a 10 MB body the forward takes 1.3 s and the list message
# 2.7 s, within 1 + 10 x 0.3 = 4 s.
# Checked before every key lookup, so it is exceeded by at most one
# signature's work.
CPU_BUDGET = 1.0
CPU_PER_MEGABYTE = 0.3
# The wall-clock time a caller should give the whole verification: well
# inside Postfix's milter_content_timeout (300 s) and its per-command
# milter_command_timeout (30 s), leaving the rest of end-of-message time.
RESCUE_SECONDS = 15.0

# RFC 8301 section 3.1: rsa-sha1 MUST NOT be used for verifying.
_ACCEPTED_ALGORITHMS = frozenset({b"rsa-sha256", b"ed25519-sha256"})
_ARC_FIELDS = frozenset({b"arc-seal", b"arc-message-signature", b"arc-authentication-results"})
_HEADER_END = re.compile(rb"\n\r?\n")
_WSP_RUN = re.compile(rb"[ \t]+")
_AAR_INSTANCE = re.compile(rb"\s*i\s*=\s*([0-9]{1,9})\s*;")

# What dkimpy 1.1 raises on malformed input besides its own DKIMException:
# binascii.Error for a bh= that is not base64, ValueError from PyNaCl for an
# Ed25519 signature of the wrong length, IndexError when an ARC-Message-
# Signature's " i=N;" is written otherwise than it looks for, KeyError for a
# missing tag, TypeError and AssertionError from its ASN.1 and integer code.
_MALFORMED = (
    dkim.DKIMException,
    dkim.util.InvalidTagValueList,
    binascii.Error,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    AssertionError,
)


class AuthResult(enum.StrEnum):
    """RFC 8601 section 2.7.1 results (dkim) and RFC 8617 section 6 (arc)."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    POLICY = "policy"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Reason(enum.StrEnum):
    """Why a message was not rescued (or how it was); the value is the
    verdict line's token."""

    DKIM = "dkim"
    ARC = "arc"
    DISABLED = "disabled"
    NO_SIGNATURE = "no_signature"
    UNALIGNED = "unaligned"
    NOT_EXAMINED = "not_examined"
    BODY_HASH = "body_hash"
    BAD_SIGNATURE = "bad_signature"
    PARTIAL_BODY = "partial_body"
    FROM_NOT_SIGNED = "from_not_signed"
    WEAK_ALGORITHM = "weak_algorithm"
    TOO_MANY_SIGNED = "too_many_signed_fields"
    SIGNATURE_TOO_LARGE = "signature_too_large"
    MALFORMED_SIGNATURE = "malformed_signature"
    FROM_COUNT = "from_count"
    HEADER_TOO_LARGE = "header_too_large"
    MALFORMED_MESSAGE = "malformed_message"
    CPU_BUDGET = "cpu_budget"
    DEADLINE = "deadline"
    NO_CHAIN = "no_chain"
    CHAIN_TOO_LONG = "chain_too_long"
    CHAIN_INVALID = "chain_invalid"
    SEALER_UNTRUSTED = "sealer_untrusted"
    NOT_VOUCHED = "not_vouched"
    ARC_UNSUPPORTED = "arc_unsupported"
    KEY_NOT_FOUND = KeyProblem.NOT_FOUND.value
    KEY_REVOKED = KeyProblem.REVOKED.value
    KEY_TESTING = KeyProblem.TESTING.value
    KEY_MALFORMED = KeyProblem.MALFORMED.value
    KEY_TOO_SMALL = KeyProblem.TOO_SMALL.value
    KEY_TOO_LARGE = KeyProblem.TOO_LARGE.value
    KEY_RECORD_TOO_LARGE = KeyProblem.RECORD_TOO_LARGE.value
    KEY_MULTIPLE = KeyProblem.MULTIPLE.value
    KEY_REFUSED = KeyProblem.REFUSED.value
    KEY_TEMPERROR = KeyProblem.TEMPORARY.value
    KEY_NAMES = KeyProblem.TOO_MANY_NAMES.value


# A key problem as a DKIM result: DNS trouble is temporary; keys refused by
# local policy (size, testing mode) are "policy"; the rest permanent.
_KEY_RESULTS = {
    KeyProblem.TEMPORARY: AuthResult.TEMPERROR,
    KeyProblem.TESTING: AuthResult.POLICY,
    KeyProblem.TOO_SMALL: AuthResult.POLICY,
    KeyProblem.TOO_LARGE: AuthResult.POLICY,
    KeyProblem.RECORD_TOO_LARGE: AuthResult.POLICY,
    KeyProblem.TOO_MANY_NAMES: AuthResult.POLICY,
}


@dataclass(frozen=True)
class RescueSettings:
    """[rescue]: rescue by aligned DKIM, and the ARC sealers trusted
    (domains, matched exactly: see Rescuer)."""

    dkim: bool = False
    arc_trusted_sealers: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        """Whether a MAIL FROM fail waits for the message at all."""
        return self.dkim or bool(self.arc_trusted_sealers)


@dataclass(frozen=True)
class RescueLimits:
    """The bounds of one verification (defaults: the module constants)."""

    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_fields: int = MAX_HEADER_FIELDS
    max_signatures: int = MAX_SIGNATURES
    max_signature_field_bytes: int = MAX_SIGNATURE_FIELD_BYTES
    max_signed_fields: int = MAX_SIGNED_FIELDS
    max_arc_sets: int = MAX_ARC_SETS
    max_key_names: int = MAX_KEY_NAMES
    min_key_bits: int = MIN_KEY_BITS
    max_key_bits: int = MAX_KEY_BITS
    cpu_budget: float = CPU_BUDGET
    cpu_per_megabyte: float = CPU_PER_MEGABYTE


@dataclass(frozen=True)
class DkimCheck:
    """One DKIM-Signature examined: its d=, s=, the start of its b= (RFC
    6008 header.b), the RFC 8601 result (None: not verified, as an
    unaligned signature is not), the reason, and whether d= is aligned."""

    domain: str
    selector: str
    signature: str
    result: AuthResult | None
    reason: Reason
    aligned: bool
    detail: str = ""


@dataclass(frozen=True)
class ArcCheck:
    """The ARC chain: its result (None: not validated, for lack of a
    trusted newest seal or of a vouching result), the newest seal's d=,
    the number of sets, the oldest instance whose AMS validated (RFC 8617
    section 5.2, header.oldest-pass: 0 when all did), and the reason."""

    result: AuthResult | None
    reason: Reason
    sealer: str = ""
    sets: int = 0
    oldest_pass: int | None = None
    vouched_by: str = ""
    detail: str = ""


@dataclass(frozen=True)
class RescueOutcome:
    """The verdict on one message.

    `kind` tells the caller what to do: accept (DKIM or ARC rescued it),
    refuse with the SPF fail reply (NONE), or defer as for an SPF temperror
    (TEMPORARY: DNS could not say); `domain` (the MAIL FROM domain that
    vouched), `selector` (DKIM) or `sealer` (ARC) say how it was rescued;
    `reason` says why not (or repeats the kind); `dkim` and
    `arc` hold the results for Authentication-Results; `cpu_seconds` what
    the verification cost.
    """

    kind: RescueKind
    reason: Reason
    domain: str = ""
    selector: str = ""
    sealer: str = ""
    dkim: tuple[DkimCheck, ...] = ()
    arc: ArcCheck | None = None
    cpu_seconds: float = field(default=0.0, compare=False)

    @property
    def rescued(self) -> bool:
        """Whether the message is accepted despite the SPF fail."""
        return self.kind.rescues


class _Quiet:
    """dkimpy's logger: it logs at ERROR what hostile senders control (a
    missing key, a bad signature) and would flood the daemon's log; the
    outcome carries the reasons instead."""

    def isEnabledFor(self, level: int) -> bool:
        return False

    def debug(self, *args: object) -> None:
        pass

    def error(self, *args: object) -> None:
        pass


_QUIET = _Quiet()


class Rescuer:
    """Verifies messages pending rescue, one call per message.

    `suffixes`: the Public Suffix List (orgdomain.load), for alignment.
    `lookup`: the resolver's lookup, raising an instance of one of
    `temporary` for DNS trouble and of `refused` for an answer it refuses.
    Trusted sealers match the newest seal's d= exactly (case and a final
    dot aside): a subdomain of a trusted domain may be run by someone else
    (a key under any name can be delegated), so each sealing domain is
    listed on its own.
    """

    def __init__(
        self,
        settings: RescueSettings,
        suffixes: PublicSuffixes,
        lookup: Lookup,
        *,
        temporary: tuple[type[Exception], ...],
        refused: tuple[type[Exception], ...] = (),
        limits: RescueLimits = RescueLimits(),
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._settings = settings
        self._sealers = frozenset(normalise(s) for s in settings.arc_trusted_sealers) - {""}
        self._suffixes = suffixes
        self._lookup = lookup
        self._temporary = temporary
        self._refused = refused
        self._limits = limits
        self._clock = clock
        self._cpu_clock = cpu_clock

    def check(self, message: bytes, mail_from_domain: str, deadline: float) -> RescueOutcome:
        """Verify `message` (header and body as received, CRLF or LF line
        ends) for a MAIL FROM in `mail_from_domain`, by the clock() time
        `deadline` at the latest."""
        meter = Meter(
            deadline=deadline,
            cpu_budget=self._limits.cpu_budget
            + self._limits.cpu_per_megabyte * len(message) / 1_000_000,
            clock=self._clock,
            cpu_clock=self._cpu_clock,
        )
        if not self._settings.enabled:
            return RescueOutcome(RescueKind.NONE, Reason.DISABLED)
        keys = KeyFetcher(
            self._lookup,
            meter,
            temporary=self._temporary,
            refused=self._refused,
            max_names=self._limits.max_key_names,
            min_bits=self._limits.min_key_bits,
            max_bits=self._limits.max_key_bits,
        )
        checks: list[DkimCheck] = []
        arc: ArcCheck | None = None
        try:
            meter.check()
            parsed = self._parse(message)
            if isinstance(parsed, Reason):
                return RescueOutcome(RescueKind.NONE, parsed, cpu_seconds=meter.cpu_used())
            headers, body = parsed
            bodies = _Bodies(body)
            if self._settings.dkim:
                for check in self._dkim(headers, bodies, mail_from_domain, keys, meter):
                    checks.append(check)
                    if check.result is AuthResult.PASS and check.aligned:
                        return RescueOutcome(
                            RescueKind.DKIM,
                            Reason.DKIM,
                            domain=normalise(check.domain),
                            selector=check.selector,
                            dkim=tuple(checks),
                            cpu_seconds=meter.cpu_used(),
                        )
            if self._sealers:
                arc = self._arc(headers, bodies, mail_from_domain, keys, meter)
                if arc.result is AuthResult.PASS and arc.vouched_by:
                    return RescueOutcome(
                        RescueKind.ARC,
                        Reason.ARC,
                        domain=normalise(mail_from_domain),
                        sealer=arc.sealer,
                        dkim=tuple(checks),
                        arc=arc,
                        cpu_seconds=meter.cpu_used(),
                    )
        except Exhausted as stop:
            reason = Reason(stop.reason)
            # Running out of wall time means DNS was slow: ask again later.
            # Running out of CPU is the message's own doing: refuse it.
            kind = RescueKind.TEMPORARY if reason is Reason.DEADLINE else RescueKind.NONE
            return RescueOutcome(
                kind, reason, dkim=tuple(checks), arc=arc, cpu_seconds=meter.cpu_used()
            )
        return _not_rescued(tuple(checks), arc, meter.cpu_used())

    def _parse(self, message: bytes) -> tuple[list[list[bytes]], bytes] | Reason:
        """dkimpy's reading of the message, after the header bounds."""
        limit = self._limits.max_header_bytes
        end = _HEADER_END.search(message, 0, limit + 3)
        if end is None and len(message) > limit:
            return Reason.HEADER_TOO_LARGE
        try:
            headers, body = dkim.rfc822_parse(message)
        except (dkim.MessageFormatError, IndexError):
            # IndexError: dkimpy's reader on a first line that starts with
            # white space (a continuation of no field).
            return Reason.MALFORMED_MESSAGE
        if len(headers) > self._limits.max_header_fields:
            return Reason.HEADER_TOO_LARGE
        # RFC 5322 section 3.6: exactly one From.  With two, the signed
        # From and the one a reader (or DMARC) looks at can differ (RFC
        # 6376 section 8.15).
        if sum(1 for name, _ in headers if name.lower() == b"from") != 1:
            return Reason.FROM_COUNT
        return headers, body

    def _dkim(
        self,
        headers: list[list[bytes]],
        bodies: _Bodies,
        mail_from_domain: str,
        keys: KeyFetcher,
        meter: Meter,
    ) -> Iterable[DkimCheck]:
        fields = [value for name, value in headers if name.lower() == b"dkim-signature"]
        verifier = dkim.DKIM(None, logger=_QUIET, minkey=self._limits.min_key_bits)
        verifier.headers = headers
        for index, value in enumerate(fields):
            if index >= self._limits.max_signatures:
                yield DkimCheck("", "", "", None, Reason.NOT_EXAMINED, False)
                continue
            meter.check()
            yield self._signature(verifier, index, value, bodies, mail_from_domain, keys)

    def _signature(
        self,
        verifier: dkim.DKIM,
        index: int,
        value: bytes,
        bodies: _Bodies,
        mail_from_domain: str,
        keys: KeyFetcher,
    ) -> DkimCheck:
        if len(value) > self._limits.max_signature_field_bytes:
            return DkimCheck("", "", "", AuthResult.PERMERROR, Reason.SIGNATURE_TOO_LARGE, False)
        try:
            tags = dkim.util.parse_tag_value(value)
            domain, selector = _text(tags[b"d"]), _text(tags[b"s"])
            # RFC 6376 section 6.1.1: a signature without a required tag
            # (a=, d=, h=, s=) is ignored (PERMFAIL); a= is read here, before
            # dkimpy checks the rest, so its absence is no weak algorithm.
            algorithm = tags[b"a"]
            signed = [n.strip().lower() for n in tags[b"h"].split(b":")]
            body_algorithm = _body_algorithm(tags)
        except (dkim.util.InvalidTagValueList, KeyError, _BadCanonicalization):
            return DkimCheck("", "", "", AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE, False)
        stamp = _text(re.sub(rb"\s+", b"", tags.get(b"b", b""))[:8])
        aligned = self._suffixes.aligned(domain, mail_from_domain)

        def result(outcome: AuthResult | None, reason: Reason, detail: str = "") -> DkimCheck:
            return DkimCheck(domain, selector, stamp, outcome, reason, aligned, detail)

        if not aligned:
            return result(None, Reason.UNALIGNED)
        if algorithm not in _ACCEPTED_ALGORITHMS:
            return result(AuthResult.POLICY, Reason.WEAK_ALGORITHM, _text(algorithm))
        if len(signed) > self._limits.max_signed_fields:
            return result(AuthResult.POLICY, Reason.TOO_MANY_SIGNED, str(len(signed)))
        # RFC 6376 section 6.1.1: a signature whose h= lacks From MUST be
        # ignored (PERMFAIL); dkimpy checks this only when signing.
        if b"from" not in signed:
            return result(AuthResult.PERMERROR, Reason.FROM_NOT_SIGNED)
        if b"l" in tags:
            # RFC 6376 section 8.2: with l= shorter than the body, what
            # follows it is unsigned, and anyone can have appended it.
            length = tags[b"l"]
            if not length.isdigit() or int(length) < len(bodies.canonical(body_algorithm)):
                return result(AuthResult.POLICY, Reason.PARTIAL_BODY)
        verifier.body = bodies.for_algorithm(body_algorithm)
        keys.last = None
        try:
            valid = verifier.verify(index, dnsfunc=keys)
        except dkim.ValidationError as error:
            if str(error).startswith("body hash mismatch"):
                return result(AuthResult.FAIL, Reason.BODY_HASH)
            return result(AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE, str(error))
        except _MALFORMED as error:
            return result(AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE, str(error))
        if valid:
            return result(AuthResult.PASS, Reason.DKIM)
        fetched = keys.last
        if fetched is not None and fetched.problem is not None:
            problem = fetched.problem
            return result(
                _KEY_RESULTS.get(problem, AuthResult.PERMERROR),
                Reason(problem.value),
                fetched.detail,
            )
        return result(AuthResult.FAIL, Reason.BAD_SIGNATURE)

    def _arc(
        self,
        headers: list[list[bytes]],
        bodies: _Bodies,
        mail_from_domain: str,
        keys: KeyFetcher,
        meter: Meter,
    ) -> ArcCheck:
        sets = _arc_sets(headers, self._limits.max_signature_field_bytes)
        if isinstance(sets, Reason):
            return ArcCheck(AuthResult.FAIL, sets)
        if not sets:
            return ArcCheck(AuthResult.NONE, Reason.NO_CHAIN)
        newest = max(sets)
        if newest > self._limits.max_arc_sets or len(sets) > self._limits.max_arc_sets:
            return ArcCheck(AuthResult.FAIL, Reason.CHAIN_TOO_LONG, sets=len(sets))
        members = sets[newest]
        seal = members.get(b"arc-seal")
        results = members.get(b"arc-authentication-results")
        if (
            seal is None
            or results is None
            or any(b"arc-message-signature" not in m for m in sets.values())
        ):
            return ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, sets=len(sets))
        try:
            sealer = normalise(_text(dkim.util.parse_tag_value(seal)[b"d"]))
            algorithms = {
                instance: _body_algorithm(
                    dkim.util.parse_tag_value(m[b"arc-message-signature"]), arc=True
                )
                for instance, m in sets.items()
            }
        except (dkim.util.InvalidTagValueList, KeyError, _BadCanonicalization):
            return ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, sets=len(sets))
        body_algorithm = algorithms[newest]
        if body_algorithm != b"relaxed" and b"relaxed" in algorithms.values():
            # dkimpy canonicalizes every set's body with the one body it is
            # given: the newest AMS needs the body as received, and relaxed
            # canonicalization of that can take quadratic time (_Bodies).
            return ArcCheck(AuthResult.FAIL, Reason.ARC_UNSUPPORTED, sets=len(sets))
        if sealer not in self._sealers:
            return ArcCheck(None, Reason.SEALER_UNTRUSTED, sealer, len(sets))
        recorded = arcresults.parse(_text(results))
        if recorded is None or not arcresults.vouches(recorded, mail_from_domain, self._suffixes):
            return ArcCheck(None, Reason.NOT_VOUCHED, sealer, len(sets))
        meter.check()
        verifier = dkim.ARC(None, logger=_QUIET, minkey=self._limits.min_key_bits)
        verifier.headers = headers
        # dkimpy hashes the body of every set's AMS, though only the newest
        # counts (RFC 8617 section 5.2): give it the body for that one.
        verifier.body = bodies.for_algorithm(body_algorithm)
        try:
            status, instances, why = verifier.verify(dnsfunc=keys)
        except _MALFORMED as error:
            return ArcCheck(
                AuthResult.FAIL, Reason.CHAIN_INVALID, sealer, len(sets), detail=str(error)
            )
        if status != dkim.CV_Pass:
            temporary = [f for f in keys.fetched if f.problem is KeyProblem.TEMPORARY]
            if temporary:
                return ArcCheck(
                    AuthResult.TEMPERROR,
                    Reason.KEY_TEMPERROR,
                    sealer,
                    len(sets),
                    detail=temporary[0].detail,
                )
            return ArcCheck(
                AuthResult.FAIL, Reason.CHAIN_INVALID, sealer, len(sets), detail=str(why)
            )
        # What dkimpy validated must be what was read above: the same newest
        # instance, sealer and results.
        top = instances[0]
        checked = arcresults.parse(_text(top["aar-value"]))
        vouched_by = (
            arcresults.vouches(checked, mail_from_domain, self._suffixes) if checked else None
        )
        if (
            top["instance"] != newest
            or normalise(_text(top["as-domain"])) != sealer
            or not vouched_by
        ):
            return ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, sealer, len(sets))
        return ArcCheck(
            AuthResult.PASS,
            Reason.ARC,
            sealer,
            len(sets),
            oldest_pass=_oldest_pass(instances),
            vouched_by=vouched_by,
        )


def _not_rescued(checks: tuple[DkimCheck, ...], arc: ArcCheck | None, cpu: float) -> RescueOutcome:
    """The outcome when nothing rescued: temporary when DNS trouble kept an
    aligned signature or the trusted chain from being checked (asking again
    may rescue: the SPF temperror analogue), else refused, for the reason
    of the aligned signature that got furthest, or the chain's."""
    aligned = [c for c in checks if c.aligned]
    temporary = [c for c in aligned if c.result is AuthResult.TEMPERROR]
    if arc is not None and arc.result is AuthResult.TEMPERROR:
        return RescueOutcome(
            RescueKind.TEMPORARY, arc.reason, dkim=checks, arc=arc, cpu_seconds=cpu
        )
    if temporary:
        return RescueOutcome(
            RescueKind.TEMPORARY, temporary[0].reason, dkim=checks, arc=arc, cpu_seconds=cpu
        )
    if aligned:
        reason = aligned[0].reason
    elif arc is not None and arc.reason is not Reason.NO_CHAIN:
        reason = arc.reason
    elif any(c.reason is Reason.UNALIGNED for c in checks):
        reason = Reason.UNALIGNED
    elif checks:
        reason = checks[0].reason
    else:
        reason = Reason.NO_SIGNATURE if arc is None else arc.reason
    return RescueOutcome(RescueKind.NONE, reason, dkim=checks, arc=arc, cpu_seconds=cpu)


class _BadCanonicalization(Exception):
    """A c= value that names no canonicalization (RFC 6376 section 3.4)."""


def _body_algorithm(tags: dict[bytes, bytes], *, arc: bool = False) -> bytes:
    """The body canonicalization of a signature's c= (RFC 6376 section
    3.5: "simple" when absent; dkimpy takes an ARC-Message-Signature
    without c= as relaxed)."""
    default = b"relaxed/relaxed" if arc else b"simple/simple"
    try:
        policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(tags.get(b"c", default))
    except dkim.canonicalization.InvalidCanonicalizationPolicyError as error:
        raise _BadCanonicalization(str(error)) from None
    name: bytes = policy.body_algorithm.name
    return name


class _Bodies:
    """The message body in the forms dkimpy is given.

    dkimpy's relaxed body canonicalization removes trailing white space
    with a regular expression that takes time growing with the square of
    each run of spaces and tabs not followed by a line end (a megabyte of
    spaces: hours).  RFC 6376 section 3.4.4 reduces every such run to one
    space anyway, so for relaxed signatures it is given the body with the
    runs already reduced: the same canonical body, in linear time.
    """

    def __init__(self, body: bytes) -> None:
        self._raw = body
        self._reduced: bytes | None = None
        self._canonical: dict[bytes, bytes] = {}

    def for_algorithm(self, algorithm: bytes) -> bytes:
        """The body to hand dkimpy for this body canonicalization."""
        if algorithm != b"relaxed":
            return self._raw
        if self._reduced is None:
            self._reduced = _WSP_RUN.sub(b" ", self._raw)
        return self._reduced

    def canonical(self, algorithm: bytes) -> bytes:
        """The canonical body (RFC 6376 section 3.4.3, 3.4.4)."""
        if algorithm not in self._canonical:
            canonicalize = dkim.canonicalization.ALGORITHMS[algorithm].canonicalize_body
            self._canonical[algorithm] = canonicalize(self.for_algorithm(algorithm))
        return self._canonical[algorithm]


def _arc_sets(headers: list[list[bytes]], max_field: int) -> dict[int, dict[bytes, bytes]] | Reason:
    """The ARC fields by instance and name (RFC 8617 section 4.1), each
    value unfolded; a field without an instance, too large, or twice in
    one instance makes the chain invalid (section 5.2)."""
    sets: dict[int, dict[bytes, bytes]] = {}
    for name, raw in headers:
        kind = name.lower()
        if kind not in _ARC_FIELDS:
            continue
        if len(raw) > max_field:
            return Reason.CHAIN_INVALID
        value = raw.replace(b"\r\n", b"").replace(b"\n", b"")
        if kind == b"arc-authentication-results":
            match = _AAR_INSTANCE.match(value)
            instance = match.group(1) if match else None
        else:
            try:
                instance = dkim.util.parse_tag_value(value).get(b"i")
            except dkim.util.InvalidTagValueList:
                return Reason.CHAIN_INVALID
        if instance is None or not instance.isdigit() or len(instance) > 9:
            return Reason.CHAIN_INVALID
        members = sets.setdefault(int(instance), {})
        if kind in members:
            return Reason.CHAIN_INVALID
        members[kind] = value.strip()
    return sets


def _oldest_pass(instances: list[dict[str, object]]) -> int:
    """RFC 8617 section 5.2 header.oldest-pass: the oldest instance from
    which on every AMS validated, 0 when all did."""
    oldest = 0
    for result in instances:  # newest first
        if not result.get("ams-valid"):
            return oldest
        oldest = int(str(result["instance"]))
    return 0


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
