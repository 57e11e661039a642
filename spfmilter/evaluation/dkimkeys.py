"""DKIM key records (RFC 6376 section 3.6) fetched through spfmilter's resolver.

This module owns how a DKIM or ARC verification reads DNS: the TXT record
of <selector>._domainkey.<domain> comes from the resolver the SPF checks
use (same servers, cache and answer limits), within the message's wall
clock deadline, its CPU budget and its number of distinct key names; and
the record is screened before the DKIM library sees it, so that what the
library would spend unbounded CPU on (a huge modulus or public exponent) or
trip over (malformed ASN.1) never reaches it, and so that the reason a key
was not used is known: none published, revoked, in testing mode, too small,
too large, DNS trouble.

One KeyFetcher serves one message, in one thread: it is the DKIM library's
``dnsfunc`` and records what each lookup found.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import dkim
import dkim.crypto
import dkim.util

# RFC 8301 section 3.2: verifiers MUST NOT accept RSA keys shorter than this.
MIN_KEY_BITS = 1024
# RFC 8301 section 3.1: verifiers MUST handle keys from 1024 to 4096 bits;
# larger ones cost DNS bytes and CPU and are not accepted.
MAX_KEY_BITS = 4096
# An RSA public exponent is 65537 (or 3) in practice; verifying costs time
# proportional to its length, and a hostile key could carry one as long as
# its modulus.  OpenSSL refuses exponents over 64 bits for large moduli.
MAX_EXPONENT_BITS = 64
# A 4096-bit key is 736 characters of base64 in p=; the other tags of RFC
# 6376 section 3.6.1 (v, h, k, n, s, t) add a few dozen.  A record past this
# is refused unread.
MAX_KEY_RECORD_BYTES = 2048
# Distinct key names one message may make us look up: every aligned DKIM
# signature examined and the ARC sets' sealers and signers, each name at
# most once (a chain sealed by the same hops reuses its names).
MAX_KEY_NAMES = 16

# RFC 8032 section 5.1.5: an Ed25519 public key is 32 bytes.
_ED25519_KEY_BYTES = 32
_SPACE = re.compile(rb"\s+")


class KeyProblem(enum.StrEnum):
    """Why a key record was not handed to the verifier; the value is the
    token of the verdict line."""

    NOT_FOUND = "key_not_found"
    REVOKED = "key_revoked"
    TESTING = "key_testing"
    MALFORMED = "key_malformed"
    TOO_SMALL = "key_too_small"
    TOO_LARGE = "key_too_large"
    RECORD_TOO_LARGE = "key_record_too_large"
    MULTIPLE = "key_multiple"
    REFUSED = "key_refused"
    TEMPORARY = "key_temperror"
    TOO_MANY_NAMES = "key_names"

    @property
    def temporary(self) -> bool:
        """Whether asking again later may find the key (DNS trouble)."""
        return self is KeyProblem.TEMPORARY


class Lookup(Protocol):
    """The resolver's lookup: (name, type, time budget or None) -> records
    ((owner, type), value), a TXT value being its character-strings."""

    def __call__(
        self, name: str, qtype: str, budget: float | None, /
    ) -> Sequence[tuple[tuple[str, str], object]]: ...


class Exhausted(Exception):
    """The message's CPU budget or wall-clock deadline ran out.

    Deliberately no DKIMException: the DKIM library catches those per
    signature and goes on; this one stops the whole verification.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Key:
    """A screened key record: the record as published, its algorithm
    (k=), its size in bits (RSA modulus; 256 for Ed25519)."""

    record: bytes
    algorithm: str
    bits: int


@dataclass(frozen=True)
class Fetched:
    """What a key name yielded: a usable key, or the problem."""

    name: str
    key: Key | None = None
    problem: KeyProblem | None = None
    detail: str = ""


class Meter:
    """The message's bounds: a CPU budget of the calling thread and a
    wall-clock deadline, both read from injected clocks."""

    def __init__(
        self,
        *,
        deadline: float,
        cpu_budget: float,
        clock: Callable[[], float],
        cpu_clock: Callable[[], float],
    ) -> None:
        self._deadline = deadline
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._cpu_started = cpu_clock()
        self._cpu_deadline = self._cpu_started + cpu_budget

    def check(self) -> None:
        """Raise Exhausted when the CPU budget or the deadline is used up."""
        if self._cpu_clock() > self._cpu_deadline:
            raise Exhausted("cpu_budget")
        if self._clock() >= self._deadline:
            raise Exhausted("deadline")

    def remaining(self) -> float:
        """Seconds left until the deadline."""
        return self._deadline - self._clock()

    def cpu_used(self) -> float:
        """CPU seconds this message has used so far."""
        return self._cpu_clock() - self._cpu_started


class KeyFetcher:
    """The DKIM library's ``dnsfunc`` for one message.

    `temporary` and `refused` are the exception classes the lookup raises
    for DNS trouble (retry later) and for an answer it refuses (too large);
    anything else it raises is a fault and propagates.
    """

    def __init__(
        self,
        lookup: Lookup,
        meter: Meter,
        *,
        temporary: tuple[type[Exception], ...],
        refused: tuple[type[Exception], ...],
        max_names: int = MAX_KEY_NAMES,
        min_bits: int = MIN_KEY_BITS,
        max_bits: int = MAX_KEY_BITS,
    ) -> None:
        self._lookup = lookup
        self._meter = meter
        self._temporary = temporary
        self._refused = refused
        self._max_names = max_names
        self._min_bits = min_bits
        self._max_bits = max_bits
        self._seen: dict[str, Fetched] = {}
        self.last: Fetched | None = None

    @property
    def fetched(self) -> tuple[Fetched, ...]:
        """Every distinct name looked up, in order."""
        return tuple(self._seen.values())

    def __call__(self, name: bytes | str, timeout: float = 0.0) -> bytes | None:
        """dnsfunc(name, timeout=...): the key record, or None for no
        usable key (the library then fails that signature).  `timeout` is
        the library's own setting; the message's deadline bounds instead."""
        self._meter.check()
        fetched = self._fetch(_text(name))
        self.last = fetched
        return fetched.key.record if fetched.key is not None else None

    def _fetch(self, name: str) -> Fetched:
        key = name.lower().rstrip(".")
        known = self._seen.get(key)
        if known is not None:
            return known
        if len(self._seen) >= self._max_names:
            return Fetched(key, problem=KeyProblem.TOO_MANY_NAMES)
        fetched = self._ask(key)
        self._seen[key] = fetched
        return fetched

    def _ask(self, name: str) -> Fetched:
        if not name:
            return Fetched(name, problem=KeyProblem.NOT_FOUND)
        try:
            records = self._lookup(name, "TXT", max(self._meter.remaining(), 0.0))
        except self._temporary as error:
            return Fetched(name, problem=KeyProblem.TEMPORARY, detail=str(error))
        except self._refused as error:
            return Fetched(name, problem=KeyProblem.REFUSED, detail=str(error))
        texts = [
            b"".join(part for part in value if isinstance(part, bytes))
            for (_, kind), value in records
            if kind == "TXT" and isinstance(value, tuple)
        ]
        if not texts:
            return Fetched(name, problem=KeyProblem.NOT_FOUND)
        if len(texts) > 1:
            # RFC 6376 section 3.6.2.2 lets a verifier pick one of several
            # records; which one DNS lists first varies, so none is used.
            return Fetched(name, problem=KeyProblem.MULTIPLE)
        self._meter.check()
        return screen(name, texts[0], min_bits=self._min_bits, max_bits=self._max_bits)


def screen(
    name: str, record: bytes, *, min_bits: int = MIN_KEY_BITS, max_bits: int = MAX_KEY_BITS
) -> Fetched:
    """Whether the key record at `name` may be handed to the verifier."""
    if len(record) > MAX_KEY_RECORD_BYTES:
        return Fetched(name, problem=KeyProblem.RECORD_TOO_LARGE, detail=f"{len(record)} bytes")
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList as error:
        return Fetched(name, problem=KeyProblem.MALFORMED, detail=f"tag list: {error}")
    # RFC 6376 section 3.6.1: v= is optional and then must come first; the
    # verifier (as dkimpy does) only insists on its value.
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return Fetched(name, problem=KeyProblem.MALFORMED, detail="v= is not DKIM1")
    services = {part.strip() for part in tags.get(b"s", b"*").split(b":")}
    if not services & {b"*", b"email"}:
        return Fetched(name, problem=KeyProblem.MALFORMED, detail="not a key for email (s=)")
    flags = {part.strip() for part in tags.get(b"t", b"").split(b":")}
    if b"y" in flags:
        # RFC 6376 section 3.6.1: mail signed in testing mode MUST NOT be
        # treated differently from unsigned mail.
        return Fetched(name, problem=KeyProblem.TESTING)
    if b"p" not in tags:
        return Fetched(name, problem=KeyProblem.MALFORMED, detail="no p=")
    try:
        data = base64.b64decode(_SPACE.sub(b"", tags[b"p"]), validate=True)
    except binascii.Error:
        return Fetched(name, problem=KeyProblem.MALFORMED, detail="p= is not base64")
    if not data:
        # RFC 6376 section 3.6.1: an empty p= means the key was revoked.
        return Fetched(name, problem=KeyProblem.REVOKED)
    algorithm = tags.get(b"k", b"rsa")
    if algorithm == b"ed25519":
        if len(data) != _ED25519_KEY_BYTES:
            return Fetched(name, problem=KeyProblem.MALFORMED, detail="Ed25519 key length")
        return Fetched(name, Key(record, "ed25519", 256))
    if algorithm != b"rsa":
        return Fetched(name, problem=KeyProblem.MALFORMED, detail="unknown k=")
    try:
        public = dkim.crypto.parse_public_key(data)
        modulus, exponent = public["modulus"], public["publicExponent"]
    except (dkim.crypto.UnparsableKeyError, AssertionError, IndexError, KeyError) as error:
        # dkimpy's ASN.1 reader asserts on some malformed input (a NULL
        # with contents) instead of raising its own error.
        return Fetched(name, problem=KeyProblem.MALFORMED, detail=f"RSA key: {error}")
    bits = int(modulus).bit_length()
    if bits < min_bits:
        return Fetched(name, problem=KeyProblem.TOO_SMALL, detail=f"{bits} bits")
    if bits > max_bits:
        return Fetched(name, problem=KeyProblem.TOO_LARGE, detail=f"{bits} bits")
    if not 3 <= int(exponent) < 1 << MAX_EXPONENT_BITS or int(exponent) % 2 == 0:
        return Fetched(name, problem=KeyProblem.MALFORMED, detail="RSA public exponent")
    return Fetched(name, Key(record, "rsa", bits))


def _text(name: bytes | str) -> str:
    # The library builds the name from s= and d= as bytes; a name that is
    # not UTF-8 names no key.
    if isinstance(name, str):
        return name
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return ""
