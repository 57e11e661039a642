"""The kinds of value: each parser at its bounds and in its error wording
(a value a parser refuses says what was expected), the factories that build
parsers (int_in, choice, token, networks) called at test time, and each
renderer writing what its parser reads back."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from spfmilter.config.loading import parse_config
from spfmilter.config.values import (
    Nameserver,
    choice,
    int_in,
    networks,
    parse_domains,
    parse_listen,
    parse_macros,
    parse_mode,
    parse_nameservers,
    parse_path,
    parse_recipients,
    parse_seconds,
    parse_size,
    parse_socket,
    parse_workers,
    render_size,
    render_value,
    render_workers,
    size_in,
    token,
)
from spfmilter.core.model import Macro, SpfResult, Stage


def test_macros_are_named_as_libmilter_takes_them() -> None:
    config = parse_config("[skip]\nmacros = daemon_name=ORIGINATING, {if_name}=lo, j=mx\n")
    assert [str(m) for m in config.skip.macros] == [
        "{daemon_name}=ORIGINATING",
        "{if_name}=lo",
        "j=mx",
    ]


def refused(parse: Callable[[str], Any], text: str) -> str:
    with pytest.raises(ValueError) as info:
        parse(text)
    return str(info.value)


def test_networks_for_defaults() -> None:
    assert networks("192.0.2.0/24", "::1") == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("::1/128"),
    )
    assert networks() == ()


def test_seconds_are_above_zero_and_at_most_an_hour() -> None:
    assert parse_seconds("3600") == 3600.0
    assert parse_seconds("0.001") == 0.001
    for text in ("0", "3600.5", "-1"):
        assert refused(parse_seconds, text) == (
            f"expected seconds between 0 and 3600, got {text!r}"
        )


def test_whole_numbers_in_a_range() -> None:
    parse = int_in(0, 100)
    assert (parse("0"), parse("100"), parse(" 7 ")) == (0, 100, 7)
    assert refused(parse, "101") == "expected a number from 0 to 100, got 101"
    assert refused(parse, "-1") == "expected a number from 0 to 100, got -1"
    assert refused(parse, "2.5") == "expected a whole number, got '2.5'"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("16M", 16 * 1024**2),
        ("16MB", 16 * 1024**2),
        ("16MiB", 16 * 1024**2),
        ("16 mib", 16 * 1024**2),
        ("512k", 512 * 1024),
        ("1.5K", 1536),
        ("64G", 64 * 1024**3),
    ],
)
def test_sizes_with_their_unit(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_sizes_refused() -> None:
    assert refused(parse_size, "16") == (
        "expected a size with its unit (K, M or G) such as 16M, got '16'"
    )
    assert refused(parse_size, "lots") == "expected a size such as 16M, got 'lots'"
    for text in ("65G", "64.1G", "1T"):
        assert refused(parse_size, text).startswith("expected a size")
    assert refused(parse_size, "65G") == "expected a size from 0 to 64G, got '65G'"


def test_a_bounded_size_takes_both_ends_and_names_them_when_refused() -> None:
    parse = size_in(1024, 2 * 1024**2)
    assert (parse("1K"), parse("2M"), parse("1.5M")) == (1024, 2 * 1024**2, 1536 * 1024)
    assert refused(parse, "1023") == (
        "expected a size with its unit (K, M or G) such as 16M, got '1023'"
    )
    assert refused(parse, "0.5K") == "expected a size from 1K to 2M, got '0.5K'"
    assert refused(parse, "2049K") == "expected a size from 1K to 2M, got '2049K'"


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0"), (1536, "1.5K"), (2048, "2K"), (3 * 1024**2, "3M"), (1024**3, "1G")]
)
def test_sizes_are_rendered_in_the_largest_exact_unit(size: int, text: str) -> None:
    assert render_size(size) == text
    assert parse_size(text) == size


def test_a_choice_is_one_of_the_enum_values() -> None:
    parse = choice(Stage)
    assert parse(" MAIL ") is Stage.MAIL
    assert refused(parse, "data") == "expected one of mail, rcpt; got 'data'"


def test_domains_are_lower_cased_without_the_trailing_dot() -> None:
    assert parse_domains("Example.COM., mail.example.net") == ("example.com", "mail.example.net")
    assert parse_domains("") == ()
    assert refused(parse_domains, "ok.example, -bad.example") == (
        "expected domain names, got '-bad.example'"
    )


def test_recipients_drop_angle_brackets_and_keep_a_quoted_local_part() -> None:
    assert parse_recipients("<Abuse@Example.NET>, postmaster@") == (
        "abuse@example.net",
        "postmaster@",
    )
    assert parse_recipients('"odd@name"@') == ('"odd@name"@',)
    for text in ("@example.com", "@", "postmaster"):
        assert refused(parse_recipients, text) == (
            f"expected addresses like postmaster@ or abuse@example.com, got {text!r}"
        )


def test_nameservers_bare_ipv6_in_either_case_and_port_bounds() -> None:
    assert parse_nameservers("2001:DB8::53, fe80::1, 127.0.0.1:1, [::1]:65535") == (
        Nameserver("2001:db8::53"),
        Nameserver("fe80::1"),
        Nameserver("127.0.0.1", 1),
        Nameserver("::1", 65535),
    )
    assert refused(parse_nameservers, "127.0.0.1:0") == (
        "expected a port from 1 to 65535, got '127.0.0.1:0'"
    )
    assert refused(parse_nameservers, "[::1]:65536").startswith("expected a port from 1")
    assert refused(parse_nameservers, "dns:53:1") == "expected IP or IP:PORT, got 'dns:53:1'"


def test_a_nameserver_is_written_as_it_is_read() -> None:
    assert str(Nameserver("::1")) == "[::1]:53"
    assert str(Nameserver("127.0.0.1", 5353)) == "127.0.0.1:5353"


@pytest.mark.parametrize(
    "spec",
    ["inet:8891@127.0.0.1", "inet:1@localhost", "inet6:65535@[::1]", "local:/run/x.sock"],
)
def test_sockets_accepted(spec: str) -> None:
    assert parse_socket(f" {spec} ") == spec


@pytest.mark.parametrize("spec", ["inet:0@127.0.0.1", "inet:65536@127.0.0.1", "INET:1@x"])
def test_sockets_refused(spec: str) -> None:
    assert refused(parse_socket, spec) == (
        f"expected unix:/PATH, inet:PORT@HOST or inet6:PORT@HOST; got {spec!r}"
    )


@pytest.mark.parametrize(
    ("spec", "loopback", "everywhere"),
    [("inet:8891", "127.0.0.1", "0.0.0.0"), ("inet6:8891", "[::1]", "[::]")],
)
def test_an_inet_socket_without_its_address_is_refused_with_advice(
    spec: str, loopback: str, everywhere: str
) -> None:
    assert refused(parse_socket, spec) == (
        f"{spec} would listen on every address, and the milter protocol has no "
        f"authentication: name the address, e.g. {spec}@{loopback} "
        f"({spec}@{everywhere} for all, on purpose)"
    )


def test_macro_values_may_hold_equals_signs_and_short_long_names_get_braces() -> None:
    assert parse_macros("ab=x, {daemon_name}=a=b, j=mx") == (
        Macro("{ab}", "x"),
        Macro("{daemon_name}", "a=b"),
        Macro("j", "mx"),
    )


@pytest.mark.parametrize("text", ["j=", "{if_name}=", "=x"])
def test_a_macro_needs_a_name_and_a_value(text: str) -> None:
    assert refused(parse_macros, text) == (
        f"expected NAME=VALUE such as {{daemon_name}}=ORIGINATING, got {text!r}"
    )


def test_workers_are_written_as_they_are_read() -> None:
    assert (render_workers(4), render_workers(0)) == ("4", "auto")


def test_modes_are_octal_up_to_0777() -> None:
    assert (parse_mode("0"), parse_mode("777"), parse_mode("0660")) == (0, 0o777, 0o660)
    assert refused(parse_mode, "1000") == "expected an octal mode from 0000 to 0777, got '1000'"
    assert refused(parse_mode, "rw") == "expected an octal mode such as 0660, got 'rw'"


def test_a_token_is_optional_but_must_match_when_given() -> None:
    parse = token(r"[a-z]+", "a word")
    assert (parse(""), parse("  "), parse(" abc ")) == ("", "", "abc")
    assert refused(parse, "ABC") == "expected a word, got 'ABC'"


@pytest.mark.parametrize("text", ["127.0.0.1:9101", "[::1]:9101", "localhost:1", "h:65535", ""])
def test_listeners_accepted(text: str) -> None:
    assert parse_listen(text) == text


@pytest.mark.parametrize("text", ["127.0.0.1:0", "[::1]:65536", "h:99999"])
def test_listener_ports_refused(text: str) -> None:
    assert refused(parse_listen, text) == f"expected a port from 1 to 65535, got {text!r}"


def test_paths_must_be_absolute() -> None:
    assert parse_path(" /dev/log ") == "/dev/log"
    assert refused(parse_path, "dev/log") == "expected an absolute path, got 'dev/log'"


def test_result_sets_are_rendered_sorted_and_comma_separated() -> None:
    assert render_value(frozenset({SpfResult.SOFTFAIL, SpfResult.FAIL})) == "fail, softfail"


@pytest.mark.parametrize(("text", "workers"), [("1", 1), ("64", 64), ("auto", 0), ("AUTO", 0)])
def test_workers_are_1_to_64_or_auto(text: str, workers: int) -> None:
    assert parse_workers(text) == workers


@pytest.mark.parametrize("text", ["0", "65", "-1", "two"])
def test_other_numbers_of_workers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected auto or a number"):
        parse_workers(text)
