"""What a caller of the key fetcher relies on, pinned: the name and the
problem (and its detail, which the verdict's log line carries) for each
kind of bad or missing key, the bounds at their edge, and the Meter's
arithmetic with fake clocks."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest

from spfmilter.evaluation.dkimkeys import (
    MAX_KEY_RECORD_BYTES,
    Exhausted,
    Fetched,
    Key,
    KeyFetcher,
    KeyProblem,
    Meter,
    screen,
)
from testkit.dkimkit import LimitError, Record, TempError, Zone
from tests.unit.evaluation.test_dkimkeys import rsa_record

NAME = "sel._domainkey.example.com"
ED25519 = b"k=ed25519; p=" + base64.b64encode(bytes(range(32)))


class Clocks:
    def __init__(self, now: float = 0.0, cpu: float = 0.0) -> None:
        self.now = now
        self.cpu = cpu

    def meter(self, deadline: float = 10.0, cpu_budget: float = 1.0) -> Meter:
        return Meter(
            deadline=deadline,
            cpu_budget=cpu_budget,
            clock=lambda: self.now,
            cpu_clock=lambda: self.cpu,
        )


def fetcher(zone: Zone, clocks: Clocks, **options: int) -> KeyFetcher:
    return KeyFetcher(
        zone.lookup, clocks.meter(), temporary=(TempError,), refused=(LimitError,), **options
    )


# --- The Meter: remaining time, CPU used, and the exact edges of check().


def test_remaining_is_the_time_left_until_the_deadline() -> None:
    clocks = Clocks(now=4.0)
    meter = clocks.meter(deadline=10.0)
    assert meter.remaining() == pytest.approx(6.0)
    clocks.now = 9.5
    assert meter.remaining() == pytest.approx(0.5)


def test_cpu_used_counts_from_when_the_meter_was_made() -> None:
    clocks = Clocks(cpu=2.0)
    meter = clocks.meter()
    assert meter.cpu_used() == pytest.approx(0.0)
    clocks.cpu = 2.25
    assert meter.cpu_used() == pytest.approx(0.25)


def test_the_cpu_budget_is_spent_only_past_it() -> None:
    clocks = Clocks(cpu=2.0)
    meter = clocks.meter(cpu_budget=1.0)
    clocks.cpu = 3.0
    meter.check()  # exactly the budget used: still within it
    clocks.cpu = 3.001
    with pytest.raises(Exhausted) as raised:
        meter.check()
    assert raised.value.reason == "cpu_budget"


def test_the_deadline_is_reached_at_its_instant() -> None:
    clocks = Clocks(now=9.999)
    meter = clocks.meter(deadline=10.0)
    meter.check()
    clocks.now = 10.0
    with pytest.raises(Exhausted) as raised:
        meter.check()
    assert raised.value.reason == "deadline"


# --- The lookup is given the time left, never more, never unbounded.


def budgets_asked(now: float) -> list[float | None]:
    budgets: list[float | None] = []

    def lookup(name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        budgets.append(budget)
        return [((name, "TXT"), (ED25519,))]

    keys = KeyFetcher(lookup, Clocks(now=now).meter(deadline=10.0), temporary=(), refused=())
    assert keys(NAME) == ED25519
    return budgets


def test_the_lookup_gets_the_time_left_before_the_deadline() -> None:
    assert budgets_asked(4.0) == [pytest.approx(6.0)]


def test_the_lookup_gets_less_than_a_second_when_less_is_left() -> None:
    assert budgets_asked(9.75) == [pytest.approx(0.25)]


# --- What `last` reports for each outcome of a lookup: the name and the problem.


def test_last_is_none_before_any_lookup() -> None:
    assert fetcher(Zone(), Clocks()).last is None


def test_no_record_is_not_found_under_the_name_asked() -> None:
    keys = fetcher(Zone(), Clocks())
    assert keys(NAME + ".") is None
    assert keys.last == Fetched(NAME, problem=KeyProblem.NOT_FOUND)


def test_a_name_that_is_not_utf8_is_not_found() -> None:
    keys = fetcher(Zone(), Clocks())
    assert keys(b"\xff._domainkey.example.com") is None
    assert keys.last == Fetched("", problem=KeyProblem.NOT_FOUND)


@pytest.mark.parametrize(
    ("error", "problem"),
    [(TempError("timeout"), KeyProblem.TEMPORARY), (LimitError("big"), KeyProblem.REFUSED)],
)
def test_lookup_errors_report_the_name_and_the_error(error: Exception, problem: KeyProblem) -> None:
    keys = fetcher(Zone(errors={NAME: error}), Clocks())
    assert keys(NAME) is None
    assert keys.last == Fetched(NAME, problem=problem, detail=str(error))


def test_two_records_report_the_name() -> None:
    zone = Zone()
    zone.publish("sel", "example.com", ED25519)
    zone.publish("sel", "example.com", ED25519)
    keys = fetcher(zone, Clocks())
    assert keys(NAME) is None
    assert keys.last == Fetched(NAME, problem=KeyProblem.MULTIPLE)


def test_a_usable_key_is_reported_with_its_name() -> None:
    zone = Zone()
    zone.publish("sel", "example.com", ED25519)
    keys = fetcher(zone, Clocks())
    assert keys(NAME.upper().encode()) == ED25519
    assert keys.last == Fetched(NAME, Key(ED25519, "ed25519", 256))


def test_a_tuple_that_is_not_a_txt_record_is_not_a_second_record() -> None:
    def lookup(name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        return [((name, "CNAME"), ("x.example",)), ((name, "TXT"), (ED25519,))]

    keys = KeyFetcher(lookup, Clocks().meter(), temporary=(), refused=())
    assert keys(NAME) == ED25519


def test_the_name_past_the_bound_is_reported() -> None:
    zone = Zone()
    keys = fetcher(zone, Clocks(), max_names=2)
    keys(b"a._domainkey.example.com")
    keys(b"b._domainkey.example.com")
    assert keys.last == Fetched("b._domainkey.example.com", problem=KeyProblem.NOT_FOUND)
    keys(b"C._domainkey.example.com.")
    assert keys.last == Fetched("c._domainkey.example.com", problem=KeyProblem.TOO_MANY_NAMES)
    assert zone.asked == ["a._domainkey.example.com", "b._domainkey.example.com"]


# --- The configured key sizes reach the screen.


def test_the_configured_minimum_lets_a_smaller_key_through() -> None:
    record = rsa_record((1 << 767) | 1)
    zone = Zone()
    zone.publish("sel", "example.com", record)
    keys = fetcher(zone, Clocks(), min_bits=768)
    assert keys(NAME) == record
    assert keys.last == Fetched(NAME, Key(record, "rsa", 768))


def test_the_configured_maximum_refuses_a_larger_key() -> None:
    zone = Zone()
    zone.publish("sel", "example.com", rsa_record((1 << 3000) | 1))
    keys = fetcher(zone, Clocks(), max_bits=3000)
    assert keys(NAME) is None
    assert keys.last == Fetched(NAME, problem=KeyProblem.TOO_LARGE, detail="3001 bits")


# --- The screen: the problem and detail for each bad record, keys as found.


@pytest.mark.parametrize(
    ("record", "problem", "detail"),
    [
        (b"v=DKIM2; " + ED25519, KeyProblem.MALFORMED, "v= is not DKIM1"),
        (b"s=tlsrpt; " + ED25519, KeyProblem.MALFORMED, "not a key for email (s=)"),
        (b"v=DKIM1; k=rsa", KeyProblem.MALFORMED, "no p="),
        (b"p=%%%%", KeyProblem.MALFORMED, "p= is not base64"),
        (
            b"k=ed25519; p=" + base64.b64encode(bytes(31)),
            KeyProblem.MALFORMED,
            "Ed25519 key length",
        ),
        (b"k=dsa; p=AAAA", KeyProblem.MALFORMED, "unknown k="),
        (rsa_record((1 << 2047) | 1, 65536), KeyProblem.MALFORMED, "RSA public exponent"),
        (rsa_record((1 << 1022) | 1), KeyProblem.TOO_SMALL, "1023 bits"),
        (rsa_record((1 << 4096) | 1), KeyProblem.TOO_LARGE, "4097 bits"),
        (b"t=y; " + ED25519, KeyProblem.TESTING, ""),
        (b"p=", KeyProblem.REVOKED, ""),
    ],
)
def test_screen_reports(record: bytes, problem: KeyProblem, detail: str) -> None:
    assert screen(NAME, record) == Fetched(NAME, problem=problem, detail=detail)


@pytest.mark.parametrize(
    ("record", "prefix"),
    [(b"no tags at all", "tag list: "), (b"p=AAAA", "RSA key: ")],
)
def test_screen_reports_what_the_parser_said(record: bytes, prefix: str) -> None:
    fetched = screen(NAME, record)
    assert (fetched.name, fetched.problem) == (NAME, KeyProblem.MALFORMED)
    assert fetched.detail.startswith(prefix)


def padded(record: bytes, size: int) -> bytes:
    """`record` with a note (n=) that makes it `size` bytes long."""
    head = record + b"; n="
    return head + b"a" * (size - len(head))


def test_a_record_of_the_largest_size_is_read() -> None:
    record = padded(ED25519, MAX_KEY_RECORD_BYTES)
    assert screen(NAME, record) == Fetched(NAME, Key(record, "ed25519", 256))


def test_a_record_one_byte_larger_is_refused_unread() -> None:
    record = padded(ED25519, MAX_KEY_RECORD_BYTES + 1)
    assert screen(NAME, record) == Fetched(
        NAME, problem=KeyProblem.RECORD_TOO_LARGE, detail=f"{MAX_KEY_RECORD_BYTES + 1} bytes"
    )


@pytest.mark.parametrize(
    "services", [b"email", b"*", b"email:tlsrpt", b"tlsrpt:email", b"tlsrpt : email"]
)
def test_a_key_for_email_among_other_services_is_used(services: bytes) -> None:
    record = b"s=" + services + b"; " + ED25519
    assert screen(NAME, record) == Fetched(NAME, Key(record, "ed25519", 256))


def test_a_key_that_is_only_for_other_services_is_not_used() -> None:
    fetched = screen(NAME, b"s=tlsrpt:other; " + ED25519)
    assert fetched.problem is KeyProblem.MALFORMED


def test_p_may_be_folded_with_white_space() -> None:
    encoded = base64.b64encode(bytes(range(32)))
    record = b"k=ed25519; p=" + encoded[:20] + b"\r\n " + encoded[20:]
    assert screen(NAME, record) == Fetched(NAME, Key(record, "ed25519", 256))


def test_an_rsa_key_needs_no_k_tag() -> None:
    record = rsa_record((1 << 2047) | 1).replace(b"k=rsa; ", b"")
    assert b"k=" not in record
    assert screen(NAME, record) == Fetched(NAME, Key(record, "rsa", 2048))


@pytest.mark.parametrize(
    ("exponent", "usable"),
    [(1, False), (3, True), (65537, True), ((1 << 64) - 1, True), ((1 << 64) + 1, False)],
)
def test_the_rsa_exponent_bounds(exponent: int, usable: bool) -> None:
    record = rsa_record((1 << 2047) | 1, exponent)
    expected = (
        Fetched(NAME, Key(record, "rsa", 2048))
        if usable
        else Fetched(NAME, problem=KeyProblem.MALFORMED, detail="RSA public exponent")
    )
    assert screen(NAME, record) == expected
