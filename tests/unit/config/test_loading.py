"""Reading configuration files: values parsed, errors that name file, line and
key, warnings."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from spfmilter.config import loading
from spfmilter.config.loading import ConfigError, load_config, parse_config
from spfmilter.config.schema import Config, HeaderType
from spfmilter.config.values import Nameserver
from spfmilter.core.model import SpfResult, Stage


def test_no_file_means_the_design_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.policy.helo_reject == {SpfResult.FAIL}
    assert config.policy.mailfrom_reject == {SpfResult.FAIL}
    assert config.policy.reject_stage is Stage.RCPT
    assert config.policy.temperror_defer and not config.policy.permerror_reject
    assert ipaddress.ip_address("127.0.0.5") in config.skip.networks[0]
    assert config.dns.lookup_time == 20


def test_values_are_parsed() -> None:
    config = parse_config(
        """
[policy]
helo_reject = fail, softfail   # inline comment
mailfrom_reject = FAIL,permerror
reject_stage = mail
exempt_recipients = postmaster@, abuse@example.net
[skip]
trusted_relays = 192.0.2.0/24, 2001:db8::/32
[headers]
type = both
[dns]
nameservers = 127.0.0.1:5353, ::1, [::1]:53, 127.0.0.2
timeout = 0.5
"""
    )
    assert config.policy.helo_reject == {SpfResult.FAIL, SpfResult.SOFTFAIL}
    assert config.policy.mailfrom_reject == {SpfResult.FAIL, SpfResult.PERMERROR}
    assert config.policy.reject_stage is Stage.MAIL
    assert config.policy.exempt_recipients == ("postmaster@", "abuse@example.net")
    assert len(config.skip.trusted_relays) == 2
    assert config.headers.type is HeaderType.BOTH
    assert config.dns.nameservers == (
        Nameserver("127.0.0.1", 5353),
        Nameserver("::1", 53),
        Nameserver("::1", 53),
        Nameserver("127.0.0.2", 53),
    )
    assert config.dns.timeout == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[policy]\nhelo_rejekt = fail\n",
            "x.cfg:2: [policy] helo_rejekt: unknown key; "
            "[policy] takes dry_run, exempt_recipients, ",
        ),
        ("[polcy]\n", "x.cfg:1: [polcy]: unknown section; expected one of milter, policy"),
        (
            "[policy]\ndry_run = maybe\n",
            "x.cfg:2: [policy] dry_run: expected yes or no (or true, false), got 'maybe'",
        ),
        (
            "[policy]\ndry_run = on\n",
            "x.cfg:2: [policy] dry_run: expected yes or no (or true, false), got 'on'",
        ),
        (
            "[policy]\nhelo_reject = pass\n",
            "x.cfg:2: [policy] helo_reject: expected a comma list of fail, softfail, neutral, "
            "none, permerror; got 'pass'",
        ),
        (
            "[policy]\nreject_stage = data\n",
            "x.cfg:2: [policy] reject_stage: expected one of mail, rcpt; got 'data'",
        ),
        (
            "[skip]\nnetworks = 10.0.0.0/33\n",
            "x.cfg:2: [skip] networks: expected CIDR networks, got '10.0.0.0/33'",
        ),
        (
            "[skip]\ntrusted_relays = 192.0.2.1/24\n",
            "x.cfg:2: [skip] trusted_relays: expected CIDR networks, got '192.0.2.1/24': "
            "192.0.2.1/24 has host bits set",
        ),
        (
            "[dns]\ntimeout = soon\n",
            "x.cfg:2: [dns] timeout: expected a number of seconds, got 'soon'",
        ),
        (
            "[dns]\nlookup_time = -1\n",
            "x.cfg:2: [dns] lookup_time: expected seconds between 0 and 3600, got '-1'",
        ),
        (
            "[dns]\nnameservers = dns.example\n",
            "x.cfg:2: [dns] nameservers: expected an IP address, got 'dns.example'",
        ),
        (
            "[dns]\nnameservers = 127.0.0.1:99999\n",
            "x.cfg:2: [dns] nameservers: expected a port from 1 to 65535, got '127.0.0.1:99999'",
        ),
        (
            "[dns]\nvoid_lookup_limit = two\n",
            "x.cfg:2: [dns] void_lookup_limit: expected a whole number, got 'two'",
        ),
        (
            "[milter]\nsocket = /run/x.sock\n",
            "x.cfg:2: [milter] socket: expected unix:/PATH, inet:PORT@HOST or inet6:PORT@HOST; "
            "got '/run/x.sock'",
        ),
        (
            "[headers]\ntype = x-spf\n",
            "x.cfg:2: [headers] type: expected one of received-spf, authentication-results, both, "
            "none; got 'x-spf'",
        ),
        (
            "[headers]\nauthserv_id = mx example\n",
            "x.cfg:2: [headers] authserv_id: expected a host name such as mx.example.net, "
            "got 'mx example'",
        ),
        (
            "[log]\nlevel = loud\n",
            "x.cfg:2: [log] level: expected one of debug, info, warning, error; got 'loud'",
        ),
        (
            "[skip]\nmacros = {daemon_name}\n",
            "x.cfg:2: [skip] macros: expected NAME=VALUE such as {daemon_name}=ORIGINATING, "
            "got '{daemon_name}'",
        ),
        (
            "[skip]\nmacros = {daemon name}=x\n",
            "x.cfg:2: [skip] macros: expected NAME=VALUE such as {daemon_name}=ORIGINATING, "
            "got '{daemon'",
        ),
        (
            "[milter]\nworkers = 0\n",
            "x.cfg:2: [milter] workers: expected auto or a number from 1 to 64, got 0",
        ),
        (
            "[milter]\nworkers = many\n",
            "x.cfg:2: [milter] workers: expected auto or a number of processes, got 'many'",
        ),
        ("[policy]\ndry_run = yes\ndry_run = no\n", "x.cfg:3: [policy] dry_run: set twice"),
        ("dry_run = yes\n", "x.cfg:1: expected a [section] header before 'dry_run = yes'"),
        ("[policy]\n\njust words\n", "x.cfg:3: expected 'key = value', got 'just words'"),
        (
            "[policy]\nexempt_recipients = postmaster\n",
            "x.cfg:2: [policy] exempt_recipients: expected addresses like postmaster@ or "
            "abuse@example.com, got 'postmaster'",
        ),
    ],
)
def test_errors_name_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.cfg")
    assert str(info.value).startswith(message)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.cfg: cannot read"):
        load_config(tmp_path / "missing.cfg")


def test_long_lookup_time_is_accepted_with_a_warning() -> None:
    config = parse_config("[dns]\nlookup_time = 28\n", "x.cfg")
    assert config.dns.lookup_time == 28
    assert len(config.warnings) == 1
    assert "milter_command_timeout" in config.warnings[0]


def test_exempt_recipients_need_the_rcpt_stage() -> None:
    config = parse_config(
        "[policy]\nreject_stage = mail\nexempt_recipients = postmaster@\n", "x.cfg"
    )
    assert config.warnings == (
        "x.cfg: [policy] exempt_recipients has no effect with reject_stage = mail "
        "(recipients are not known yet at MAIL FROM)",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Read as configparser reads them, and named at their line.
        ("[dns]\n  timeout = soon\n", "x.cfg:2: [dns] timeout: expected a number of seconds"),
        ("\n[ dnsx ]\n", "x.cfg:2: [dnsx]: unknown section"),
        ("\n\n[a]b]\n", "x.cfg:3: [a]b]: unknown section"),
        ("[dns] # the resolver [x]\ntimeout = bad\n", "x.cfg:2: [dns] timeout: expected"),
        ("[dns]\n[ DNS ]\n", "x.cfg:2: [dns]: section given twice"),
    ],
)
def test_errors_name_the_line_however_it_is_written(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.cfg")
    assert str(info.value).startswith(message)


def test_a_section_name_is_read_without_its_spaces_and_case() -> None:
    assert parse_config("[ DNS ]\ntimeout = 2\n").dns.timeout == 2.0


def test_rescue_settings_and_the_public_suffix_list() -> None:
    config = parse_config(
        "[rescue]\ndkim = yes\narc_trusted_sealers = Lists.Example.org.\nmax_message_size = 20M\n"
    )
    assert config.rescue.enabled and config.rescue.dkim
    assert config.rescue.arc_trusted_sealers == ("lists.example.org",)
    assert config.rescue.max_message_size == 20 * 1024**2
    assert config.suffixes is not None and config.suffixes.loaded
    assert config.suffixes.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    # Off: no list is read.
    assert not Config().rescue.enabled
    assert parse_config("[rescue]\nmax_message_size = 1M\n").suffixes is None


def test_rescue_without_a_public_suffix_list_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(loading, "PUBLIC_SUFFIX_LIST", str(tmp_path / "missing.dat"))
    with pytest.raises(ConfigError) as error:
        parse_config("[policy]\ndry_run = yes\n\n[rescue]\narc_trusted_sealers = l.example\n", "f")
    assert str(error.value).startswith("f:4: [rescue]: cannot read the public suffix list ")
    assert str(error.value).endswith("; the rescue needs it (Debian package publicsuffix)")
    # Nothing needs it while the rescue is off.
    assert parse_config("[rescue]\ndkim = no\n").suffixes is None


@pytest.mark.parametrize("size", ["0", "512", "2G", "ten"])
def test_max_message_size_is_bounded(size: str) -> None:
    with pytest.raises(ConfigError, match=r"\[rescue\] max_message_size"):
        parse_config(f"[rescue]\nmax_message_size = {size}\n")
