"""Key records: fetched once per name within the message's bounds, and
screened before dkimpy sees them."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest

from spfmilter.evaluation.dkimkeys import (
    Exhausted,
    KeyFetcher,
    KeyProblem,
    Meter,
    screen,
)
from testkit.dkimkit import LimitError, Record, TempError, Zone


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def integer(value: int) -> bytes:
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def rsa_record(modulus: int, exponent: int = 65537) -> bytes:
    """An RSAPublicKey (RFC 8017 appendix A.1.1) in a key record: the
    screen reads sizes, so the numbers need not make a real key."""
    key = der(0x30, integer(modulus) + integer(exponent))
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(key)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (rsa_record((1 << 2047) | 1), None),
        (rsa_record((1 << 4095) | 1), None),
        (rsa_record((1 << 1022) | 1), KeyProblem.TOO_SMALL),
        (rsa_record((1 << 4096) | 1), KeyProblem.TOO_LARGE),
        (rsa_record((1 << 2047) | 1, (1 << 2000) | 1), KeyProblem.MALFORMED),
        (rsa_record((1 << 2047) | 1, 65536), KeyProblem.MALFORMED),
        (b"v=DKIM1; k=rsa; p=", KeyProblem.REVOKED),
        (b"v=DKIM1; k=rsa; p=%%%%", KeyProblem.MALFORMED),
        (b"v=DKIM1; k=rsa; p=AAAA", KeyProblem.MALFORMED),
        (b"v=DKIM1; k=rsa", KeyProblem.MALFORMED),
        (b"v=DKIM2; p=AAAA", KeyProblem.MALFORMED),
        (b"k=dsa; p=AAAA", KeyProblem.MALFORMED),
        (b"s=tlsrpt; p=AAAA", KeyProblem.MALFORMED),
        (b"t=y:s; p=AAAA", KeyProblem.TESTING),
        (b"no tags at all", KeyProblem.MALFORMED),
        (b"p=a; p=b", KeyProblem.MALFORMED),
        (b"k=ed25519; p=" + base64.b64encode(bytes(32)), None),
        (b"k=ed25519; p=" + base64.b64encode(bytes(31)), KeyProblem.MALFORMED),
        (b"p=" + b"A" * 65536, KeyProblem.RECORD_TOO_LARGE),
        # An ASN.1 NULL with contents: dkimpy's reader asserts.
        (
            b"p=" + base64.b64encode(der(0x30, der(0x30, der(0x06, b"\x2a") + der(0x05, b"x")))),
            KeyProblem.MALFORMED,
        ),
        # A length that runs past the end of the data.
        (b"p=" + base64.b64encode(b"\x30\x84\xff\xff\xff\xff"), KeyProblem.MALFORMED),
    ],
)
def test_screen(record: bytes, problem: KeyProblem | None) -> None:
    fetched = screen("sel._domainkey.example.com", record)
    assert fetched.problem is problem, fetched
    assert (fetched.key is None) is (problem is not None)


class Clocks:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0


def fetcher(zone: Zone, clocks: Clocks, **options: int) -> KeyFetcher:
    meter = Meter(
        deadline=10.0, cpu_budget=1.0, clock=lambda: clocks.now, cpu_clock=lambda: clocks.cpu
    )
    return KeyFetcher(zone.lookup, meter, temporary=(TempError,), refused=(LimitError,), **options)


def test_each_name_is_asked_once_and_its_answer_kept() -> None:
    zone = Zone()
    zone.publish("sel", "example.com", b"k=ed25519; p=" + base64.b64encode(bytes(32)))
    keys = fetcher(zone, Clocks())
    for _ in range(3):
        assert keys(b"sel._domainkey.example.com.", timeout=5) is not None
    assert keys(b"SEL._domainkey.Example.com") is not None
    assert zone.asked == ["sel._domainkey.example.com"]


@pytest.mark.parametrize(
    ("error", "problem"),
    [(TempError("timeout"), KeyProblem.TEMPORARY), (LimitError("big"), KeyProblem.REFUSED)],
)
def test_lookup_errors(error: Exception, problem: KeyProblem) -> None:
    zone = Zone(errors={"sel._domainkey.example.com": error})
    keys = fetcher(zone, Clocks())
    assert keys(b"sel._domainkey.example.com.") is None
    assert keys.last is not None and keys.last.problem is problem


def test_other_lookup_failures_are_faults() -> None:
    zone = Zone(errors={"sel._domainkey.example.com": RuntimeError("bug")})
    with pytest.raises(RuntimeError):
        fetcher(zone, Clocks())(b"sel._domainkey.example.com.")


def test_two_records_are_none() -> None:
    zone = Zone()
    zone.publish("sel", "example.com", b"p=")
    zone.publish("sel", "example.com", b"p=")
    keys = fetcher(zone, Clocks())
    assert keys(b"sel._domainkey.example.com.") is None
    assert keys.last is not None and keys.last.problem is KeyProblem.MULTIPLE


def test_character_strings_are_joined_and_other_types_ignored() -> None:
    record = b"k=ed25519; p=" + base64.b64encode(bytes(32))

    def lookup(name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        return [((name, "CNAME"), "x.example"), ((name, "TXT"), (record[:5], record[5:]))]

    meter = Meter(deadline=10, cpu_budget=1, clock=lambda: 0.0, cpu_clock=lambda: 0.0)
    keys = KeyFetcher(lookup, meter, temporary=(TempError,), refused=())
    assert keys("sel._domainkey.example.com") == record


def test_the_number_of_names_is_bounded() -> None:
    zone = Zone()
    keys = fetcher(zone, Clocks(), max_names=2)
    for selector in (b"a", b"b", b"c", b"d"):
        keys(selector + b"._domainkey.example.com")
    assert len(zone.asked) == 2
    assert keys.last is not None and keys.last.problem is KeyProblem.TOO_MANY_NAMES


def test_a_name_that_is_not_utf8_names_no_key() -> None:
    zone = Zone()
    keys = fetcher(zone, Clocks())
    assert keys(b"\xff._domainkey.example.com") is None
    assert zone.asked == []


def test_the_budget_and_the_deadline_stop_lookups() -> None:
    clocks = Clocks()
    keys = fetcher(Zone(), clocks)
    clocks.cpu = 1.5
    with pytest.raises(Exhausted, match="cpu_budget"):
        keys(b"a._domainkey.example.com")
    clocks.cpu, clocks.now = 0.0, 10.0
    with pytest.raises(Exhausted, match="deadline"):
        keys(b"a._domainkey.example.com")
