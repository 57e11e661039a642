"""Property-based tests of the text spfmilter writes, for any input: the result
headers (they parse back as RFC 5322 fields, 7-bit, folded, comments
balanced, one spf resinfo), sanitising and SMTP replies (what libmilter's
smfi_setreply accepts), and the parser of Authentication-Results
authserv-ids."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from spfmilter.core.headers import (
    AUTHENTICATION_RESULTS,
    FOLD_AT,
    RECEIVED_SPF,
    REPLY_TEXT_LIMIT,
    Lexeme,
    authentication_results,
    authserv_id_key,
    claimed_authserv_ids,
    clean,
    fold,
    lexemes,
    quote_value,
    received_spf,
    reply_text,
)
from spfmilter.core.model import (
    Identity,
    IPAddress,
    Skip,
    SkipReason,
    SpfOutcome,
    SpfResult,
)
from tests.support.checks import (
    HEADER_VALUE,
    assert_field,
    assert_result_header,
    assert_setreply_ok,
    parse_received_spf,
    unquote,
)
from tests.support.strategies import SETTINGS, hostnames, ips, outcomes, spelled, texts


@SETTINGS
@given(texts, st.integers(3, 1000))
@example("a\n\rb", 255)
def test_clean(text: str, limit: int) -> None:
    cleaned = clean(text, limit)
    assert cleaned.isascii() and cleaned.isprintable() and len(cleaned) <= limit
    assert cleaned == cleaned.strip() and clean(cleaned, limit) == cleaned
    if text.isascii() and text.isprintable() and text == text.strip() and len(text) <= limit:
        assert cleaned == text  # harmless text is left alone


@SETTINGS
@given(texts)
@example("100% not ours\r\n550 fake %s%%%")
def test_reply_text_is_acceptable_to_setreply(text: str) -> None:
    sent = reply_text(clean(text, REPLY_TEXT_LIMIT))
    assert_setreply_ok("550", "5.7.23", sent)
    assert sent.replace("%%", "%") == clean(text, REPLY_TEXT_LIMIT)


client_ips = st.one_of(st.none(), ips)
any_outcome = st.one_of(outcomes(Identity.MAIL_FROM), outcomes(Identity.HELO))
skips = st.builds(Skip, st.sampled_from(SkipReason), texts.map(clean))


# Found by this property: a fold at a run of spaces dropped one, so the
# quoted envelope-from no longer said what MAIL FROM said.
FOLDED_SENDER = '"johnxxxxxxxxxxxx  smith"@example.com'


@SETTINGS
@given(
    any_outcome,
    client_ips,
    texts,
    st.one_of(st.none(), texts, hostnames),
)
@example(
    SpfOutcome(Identity.MAIL_FROM, SpfResult.PASS, "example.com", FOLDED_SENDER),
    ipaddress.ip_address("192.0.2.1"),
    "mail.example.com",
    "mx.example.net",
)
def test_received_spf_parses_back(
    outcome: SpfOutcome, ip: IPAddress | None, helo: str, receiver: str | None
) -> None:
    value = received_spf(outcome, client_ip=ip, helo=helo, receiver=receiver)
    assert_result_header(RECEIVED_SPF, value, outcome)
    pairs = parse_received_spf(assert_field(RECEIVED_SPF, value))[2]
    keys = [key for key, _ in pairs]
    assert keys == [
        k
        for k, present in (
            ("receiver", receiver is not None),
            ("identity", True),
            ("envelope-from", outcome.identity is Identity.MAIL_FROM),
            ("helo", bool(helo)),
            ("client-ip", ip is not None),
        )
        if present
    ]
    found = dict(pairs)
    assert found.get("helo", "") == (clean(helo) if helo else "")
    assert found.get("receiver") == (None if receiver is None else clean(receiver))


@SETTINGS
@given(
    hostnames,
    # What a Session has: an outcome to report, or the reason SPF was skipped.
    st.one_of(st.tuples(any_outcome, st.none()), st.tuples(st.none() | any_outcome, skips)),
    client_ips,
)
def test_authentication_results_parses_back(
    authserv_id: str, facts: tuple[SpfOutcome | None, Skip | None], ip: IPAddress | None
) -> None:
    report, skip = facts
    value = authentication_results(authserv_id, report, client_ip=ip, skip=skip)
    assert_result_header(AUTHENTICATION_RESULTS, value, None if skip else report)
    assert claimed_authserv_ids(value) == {authserv_id.lower()}  # ours, and only ours


@SETTINGS
@given(texts)
def test_result_comment_cannot_be_left_early(text: str) -> None:
    """Whatever DNS says, a comment ends only where spfmilter ends it."""
    hostile = SpfOutcome(Identity.MAIL_FROM, SpfResult.PERMERROR, text, text, text, text, text)
    for outcome in (hostile, dataclasses.replace(hostile, result=SpfResult.PASS)):
        value = received_spf(outcome, client_ip=None, helo="", receiver=None)
        pairs = parse_received_spf(value.replace("\n\t", " "))[2]
        assert pairs == [("identity", "mailfrom"), ("envelope-from", clean(text))]


@SETTINGS
@given(
    st.sampled_from([RECEIVED_SPF, AUTHENTICATION_RESULTS]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
)
@example(RECEIVED_SPF, "x" * 70 + "  y")  # a fold at a run of spaces
def test_fold_only_turns_spaces_into_folds(name: str, value: str) -> None:
    assume(value.strip(" ") and not value.startswith(" ") and not value.endswith(" "))
    folded = fold(name, value)
    assert folded.replace("\n\t", " ") == value
    for number, line in enumerate(folded.split("\n")):
        shown = f"{name}: {line}" if number == 0 else line
        assert len(shown) <= FOLD_AT or " " not in line.strip("\t")


@SETTINGS
@given(texts.map(clean))
def test_quote_value_round_trips(value: str) -> None:
    quoted = quote_value(value)
    assert re.fullmatch(HEADER_VALUE, quoted) and unquote(quoted) == value


@SETTINGS
@given(texts)
def test_claimed_authserv_ids_of_any_text(value: str) -> None:
    # A malformed value may claim anything, but only as compared: case
    # folded, no trailing dot, never empty.
    for name in claimed_authserv_ids(value):
        assert name and authserv_id_key(name) == name


@SETTINGS
@given(texts)
def test_lexemes_give_the_value_back(value: str) -> None:
    pieces = list(lexemes(value))
    assert "".join(text for _, text in pieces) == value
    for kind, text in pieces:
        if kind is Lexeme.COMMENT:
            assert text.startswith("(")
        elif kind is Lexeme.QUOTED_PAIR:
            assert text.startswith("\\") and len(text) <= 2
        else:
            assert len(text) == 1


# A host name's last label is never all digits (RFC 3696 section 2), which
# is how a version after the id ("mx.example.net . 1") is told from a label.
authserv_ids = hostnames.filter(lambda name: not name.rpartition(".")[2].isdigit())


@SETTINGS
@given(st.data(), authserv_ids)
def test_every_spelling_is_claimed(data: st.DataObject, authserv_id: str) -> None:
    assert authserv_id in claimed_authserv_ids(data.draw(spelled(authserv_id)))


@pytest.mark.parametrize(
    "value",
    [
        "MX.Example.NET; spf=pass",
        r'(a (nested \( one)) "mx.example.NET". ; spf=pass',
        "mx . (c) example\\.net\r\n\t1; spf=pass",
        # Found by the property above: a comment alone is CFWS before the
        # version (RFC 8601 section 2.2), and so is space after a trailing dot.
        "mx.example.net(comment)1; spf=pass",
        "mx.example.net. 1; spf=pass",
    ],
)
def test_spellings_found_are_claimed(value: str) -> None:
    assert "mx.example.net" in claimed_authserv_ids(value)


@SETTINGS
@given(st.data(), hostnames, st.sampled_from(["{}.evil", "evil.{}", "{}x", "x{}", "{}-1"]))
def test_other_ids_do_not_claim_ours(data: st.DataObject, authserv_id: str, variant: str) -> None:
    spelling = data.draw(spelled(variant.format(authserv_id)))
    assert authserv_id not in claimed_authserv_ids(spelling)


@SETTINGS
@given(hostnames, hostnames, any_outcome, client_ips)
def test_names_in_the_results_claim_nothing(
    authserv_id: str, ours: str, outcome: SpfOutcome, ip: IPAddress | None
) -> None:
    """Another receiver's header naming our host anywhere in its results
    (smtp.helo=, a comment, the domain) is not deleted."""
    named = dataclasses.replace(outcome, domain=ours, sender=f"postmaster@{ours}", mechanism=ours)
    value = authentication_results(authserv_id, named, client_ip=ip)
    assert claimed_authserv_ids(value) == {authserv_id.lower()}
