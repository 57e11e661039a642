"""Reading a file, as mutation testing found it unpinned: the encoding, the
name in errors, sections given twice or in odd spellings, the line an error
names however the line is written, warnings at their thresholds, and the
effective configuration read back."""

from __future__ import annotations

import locale
from pathlib import Path

import pytest

from spfmilter.config.loading import ConfigError, load_config, parse_config, render
from spfmilter.config.schema import Config


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


@pytest.mark.parametrize("header", ["\0none", "\0NONE", "XX\0noneXX", "\0none ", "\\n"])
def test_a_section_named_like_the_default_section_marker_is_unknown(header: str) -> None:
    # No section is configparser's default section, whose keys every section
    # would take: whatever the header, an unknown section is an error.
    with pytest.raises(ConfigError, match=r"^<config>:1: \[.*\]: unknown section"):
        parse_config(f"[{header}]\nbogus = 1\n")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[dns]\n# a line separator \u2028 in a comment\ntimeout = x\n", 3),
        ("[dns]\n# a form feed \x0c in a comment\ntimeout = x\n", 3),
        ("[dns]\ntimeout\x0c= x\n", 2),
        ("[dns]\r\n\r\ntimeout = x\r\n", 3),
    ],
)
def test_lines_are_counted_as_configparser_reads_them(text: str, line: int) -> None:
    # configparser ends a line at "\n" only.
    with pytest.raises(ConfigError, match=rf"^<config>:{line}: \[dns\] timeout: "):
        parse_config(text)


def test_a_line_that_is_no_key_nor_section_is_quoted_from_its_own_line() -> None:
    with pytest.raises(ConfigError, match=r"^<config>:3: expected 'key = value', got 'bad'$"):
        parse_config("[dns]\n# a line separator \u2028 in a comment\nbad\n")


def test_a_section_given_twice_is_found_past_a_line_separator() -> None:
    with pytest.raises(ConfigError, match=r"^<config>:3: \[dns\]: section given twice$"):
        parse_config("[dns]\n# a line separator \u2028 in a comment\n[DNS]\n")


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
