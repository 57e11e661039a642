"""Header text that mutation testing found unpinned: the length cap at its
boundary, the comment's fallbacks when the client address, the domain or a
problem text is missing, RFC 5322 comments in an authserv-id, and where
folding breaks a line (78 characters, RFC 5322 section 2.1.1).

Exact strings, as in tests/unit/test_headers.py (which holds the layouts).
"""

from __future__ import annotations

import ipaddress

import pytest

from spfmilter.core.headers import (
    FOLD_AT,
    RECEIVED_SPF,
    authentication_results,
    claimed_authserv_ids,
    clean,
    fold,
    received_spf,
    result_comment,
)
from spfmilter.core.model import Identity, SpfOutcome, SpfResult

IP = ipaddress.ip_address("192.0.2.10")


def unfold(value: str) -> str:
    return value.replace("\n\t", " ")


def test_text_of_exactly_the_limit_is_kept_whole() -> None:
    assert clean("x" * 255) == "x" * 255
    assert clean("x" * 256) == "x" * 252 + "..."
    assert clean("abcdef", 6) == "abcdef"
    assert clean("abcdefg", 6) == "abc..."


def test_without_a_client_address_the_comment_says_unknown() -> None:
    outcome = SpfOutcome(Identity.MAIL_FROM, SpfResult.PASS, "example.com", "a@example.com")
    assert unfold(received_spf(outcome, client_ip=None, helo="", receiver=None)) == (
        "pass (example.com: unknown is authorized to use 'a@example.com' in 'mfrom' "
        'identity) identity=mailfrom; envelope-from="a@example.com"'
    )


def test_a_result_without_a_problem_text_is_named_by_its_result() -> None:
    for result in (SpfResult.PERMERROR, SpfResult.TEMPERROR):
        outcome = SpfOutcome(Identity.MAIL_FROM, result, "example.com", "a@example.com")
        assert result_comment(outcome, IP) == f"example.com: {result.value}"


def test_an_outcome_without_a_domain_names_it_unknown() -> None:
    outcome = SpfOutcome(Identity.HELO, SpfResult.NONE, "", "postmaster@")
    assert result_comment(outcome, IP) == "unknown: No applicable sender policy available"
    assert unfold(authentication_results("mx.example.net", outcome, client_ip=IP)) == (
        'mx.example.net; spf=none (unknown: No applicable sender policy available) smtp.helo=""'
    )


@pytest.mark.parametrize(
    "value",
    [
        # RFC 5322 section 3.2.2: comments nest ...
        "(a (nested) comment) mx.example.net; spf=pass",
        "(((deep)) still) mx.example.net; spf=pass",
        # ... and a quoted-pair inside one does not end it.
        "(a \\) b) mx.example.net; spf=pass",
        "(a \\( b) mx.example.net; spf=pass",
    ],
)
def test_comments_before_the_authserv_id_are_dropped_whole(value: str) -> None:
    assert claimed_authserv_ids(value) == {"mx.example.net"}


def test_a_quoted_pair_outside_a_comment_stands_for_its_character() -> None:
    assert claimed_authserv_ids("mx\\(x\\).example.net; spf=pass") == {"mx(x).example.net"}


def test_a_value_that_fits_is_returned_unchanged() -> None:
    assert fold(RECEIVED_SPF, "pass  (two  spaces) x=y") == "pass  (two  spaces) x=y"


def test_the_first_line_may_be_exactly_78_characters() -> None:
    room = FOLD_AT - len(RECEIVED_SPF + ": ")
    fits = "a" * 30 + " " + "b" * (room - 31)
    assert fold(RECEIVED_SPF, fits) == fits
    assert fold(RECEIVED_SPF, fits + "b") == "a" * 30 + "\n\t" + "b" * (room - 30)


def test_a_continuation_line_may_be_exactly_78_characters_with_its_tab() -> None:
    value = "a" * 60 + " " + "c" * 38 + " " + "d" * 38
    assert fold(RECEIVED_SPF, value) == "a" * 60 + "\n\t" + "c" * 38 + " " + "d" * 38
    longer = value + "d"
    assert fold(RECEIVED_SPF, longer) == "a" * 60 + "\n\t" + "c" * 38 + "\n\t" + "d" * 39
