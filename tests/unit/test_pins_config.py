"""Configuration behaviour that mutation testing found unpinned: each value
parser at its bounds and in its error wording (values), the factories that
build parsers (int_in, choice, token, networks) and declare keys (schema.key)
called at test time rather than only at import, warnings at their
thresholds, and the effective configuration read back (config.render).

STYLE rule 3: a value a parser refuses is an error that says what was
expected; every key is declared once with its default, parser, renderer and
doc.  tests/unit/test_config.py holds the file-level behaviour.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import locale
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spfmilter.config.loading import ConfigError, load_config, parse_config, render
from spfmilter.config.schema import Config, key, rendered
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
    render_size,
    render_value,
    render_workers,
    token,
)
from spfmilter.core.model import Macro, SpfResult, Stage


def refused(parse: Callable[[str], Any], text: str) -> str:
    with pytest.raises(ValueError) as info:
        parse(text)
    return str(info.value)


# --- config: the file ---------------------------------------------------------


def test_a_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # A daemon may run under the C locale (LANG unset); the file is UTF-8.
    path = tmp_path / "spfmilter.cfg"
    path.write_bytes("# r\u00e9solveur local\n[dns]\ntimeout = 3\n".encode())
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        config = load_config(path)
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    assert config.dns.timeout == 3


def test_text_without_a_file_name_is_called_config_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[nope]\n")
    assert str(info.value).startswith("<config>:1: [nope]: unknown section")


def test_a_default_section_is_an_unknown_section_not_defaults_for_all() -> None:
    with pytest.raises(ConfigError, match=r"^x\.cfg:2: \[DEFAULT\]: unknown section"):
        parse_config("[dns]\n[DEFAULT]\ntimeout = 3\n", "x.cfg")


def test_a_percent_sign_in_a_value_is_taken_literally() -> None:
    # No interpolation: '%' is an ordinary character in paths and names.
    config = parse_config("[log]\ntarget = syslog\nsyslog_socket = /run/100%/log\n")
    assert config.log.syslog_socket == "/run/100%/log"


def test_a_section_given_twice_is_an_error_naming_the_second() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[dns]\ntimeout = 1\n[dns]\n", "x.cfg")
    assert str(info.value) == "x.cfg:3: [dns]: section given twice"


def test_an_unknown_section_with_a_bracket_inside_is_reported_at_its_line() -> None:
    # configparser reads a header up to its last "]": this is section "a]b".
    with pytest.raises(ConfigError) as info:
        parse_config("[policy]\n[a]b]\n", "x.cfg")
    assert str(info.value).startswith("x.cfg:2: [a]b]: unknown section")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[dns]\n[polcy]  # not [policy]\n", "x.cfg:2: [polcy]: unknown section"),
        ("[dns] # the resolver [x]\ntimeout = bad\n", "x.cfg:2: [dns] timeout: expected"),
    ],
)
def test_a_comment_after_a_section_header_does_not_hide_the_line(text: str, where: str) -> None:
    # configparser drops an inline comment before it reads the header.
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.cfg")
    assert str(info.value).startswith(where)


def test_a_section_repeated_in_another_spelling_is_given_twice() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[dns]\ntimeout = 1\n\n[ DNS ]\ntimeout = 2\n", "x.cfg")
    assert str(info.value) == "x.cfg:4: [dns]: section given twice"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("\n[ nope ]\n", "x.cfg:2: [", "unknown section"),
        ("[dns]\n  timeout = soon\n", "x.cfg:2: [dns] timeout: ", "expected a number of seconds"),
    ],
)
def test_errors_name_the_line_however_the_line_is_indented(
    text: str, where: str, problem: str
) -> None:
    # configparser reads "[ nope ]" and an indented "key = value" as a
    # header and a key: the error must still name their line.
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.cfg")
    assert str(info.value).startswith(where) and problem in str(info.value)


def test_lookup_time_warns_only_above_25_seconds() -> None:
    assert parse_config("[dns]\nlookup_time = 25\n", "x.cfg").warnings == ()
    assert parse_config("[dns]\nlookup_time = 25.5\n", "x.cfg").warnings == (
        "x.cfg: [dns] lookup_time = 25.5 s is above 25 s; Postfix's milter_command_timeout "
        "defaults to 30 s and would give up on the milter first",
    )


def test_reject_stage_mail_warns_only_together_with_exempt_recipients() -> None:
    assert parse_config("[policy]\nreject_stage = mail\n").warnings == ()
    assert parse_config("[policy]\nexempt_recipients = postmaster@\n").warnings == ()


def test_the_effective_configuration_reads_back_as_the_same_configuration() -> None:
    config = parse_config(
        "[milter]\nsocket = inet6:8891@[::1]\nsocket_mode = 0640\n"
        "[policy]\nhelo_reject = softfail, fail\n"
        "[skip]\nhelo_names = Backup.Example.NET.\nnetworks = 10.0.0.0/8, 2001:db8::/32\n"
        "[dns]\nnameservers = ::1, 127.0.0.1:5353\ncache_size = 1.5K\ntimeout = 2.5\n",
        "x.cfg",
    )
    text = render(config)
    assert text.startswith("# effective configuration from x.cfg\n\n[milter]\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    for line in (
        "socket_mode = 0640",
        "helo_reject = fail, softfail",
        "helo_names = backup.example.net",
        "nameservers = [::1]:53, 127.0.0.1:5353",
        "cache_size = 1.5K",
        "timeout = 2.5",
    ):
        assert line in lines
    again = parse_config(text, "x.cfg")
    assert again == config


def test_the_built_in_defaults_say_so_when_rendered() -> None:
    assert render(Config()).startswith("# effective configuration from built-in defaults\n")


# --- schema: a key declared once ------------------------------------------------


def test_a_key_declares_default_parser_renderer_and_documentation_together() -> None:
    parse = int_in(0, 9)

    @dataclasses.dataclass(frozen=True)
    class Section:
        knob: int = key(3, parse, "a knob", "A knob from 0 to 9.")
        word: str = key("", str.strip, "a word", "A word.", example="w", render=str.upper)

    knob, word = dataclasses.fields(Section)
    assert Section() == Section(3, "")
    assert knob.default == 3 and word.default == ""
    assert dict(knob.metadata) == {
        "parse": parse,
        "render": render_value,
        "summary": "a knob",
        "doc": "A knob from 0 to 9.",
        "example": "",
    }
    assert word.metadata["example"] == "w"
    assert rendered(Section(word="abc"), word) == "ABC"
    assert rendered(Section(), knob) == "3"


# --- values: each kind of value -------------------------------------------------


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
