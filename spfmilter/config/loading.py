"""Reading the configuration file into a frozen, validated Config.

This module owns reading spfmilter.cfg against the declarations of the
schema: unknown sections and keys, and values their parser refuses, are
errors naming file, line and key (a file that does not parse never
silently means defaults); the Public Suffix List a configuration with the
rescue on needs, read with it; the warnings a valid file may still
deserve; and the effective configuration written back (--check-config).
No I/O besides reading the file and that list.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spfmilter.config import orgdomain
from spfmilter.config.schema import SECTIONS, Config, keys, rendered
from spfmilter.core.model import Stage

EX_CONFIG = 78  # sysexits.h: configuration error

# Postfix's milter_command_timeout defaults to 30 s; a lookup budget above
# this leaves too little margin for the rest of the callback.
LOOKUP_TIME_WARN = 25.0

# The Public Suffix List the rescue aligns domains with (Debian's
# publicsuffix package).
PUBLIC_SUFFIX_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"


class ConfigError(Exception):
    """A configuration problem, worded as ``file:line: [section] key: ...``."""


def line_numbers(text: str) -> dict[tuple[str, str], int]:
    """Map (section, key) to the 1-based line that sets it.

    configparser does not keep line numbers, and an administrator needs
    them to find a typo.
    """
    lines: dict[tuple[str, str], int] = {}
    section = ""
    # Lines end at "\n" only, as configparser reads them: str.splitlines()
    # would also end one at a form feed or U+2028 and miscount the rest.
    for number, line in enumerate(text.split("\n"), start=1):
        # As configparser reads a header: the line without its inline
        # comment (a "#" after whitespace), stripped, up to its last "]".
        header = re.match(r"\[(.+)\]", re.split(r"\s#", line.strip(), maxsplit=1)[0])
        if header:
            section = header.group(1).strip().lower()
            lines.setdefault((section, ""), number)
            continue
        # configparser takes an indented line for a key too, unless it
        # continues the value of the key above.
        name = re.match(r"\s*([^\s#;=:][^=:]*?)\s*[=:]", line)
        if name:
            lines.setdefault((section, name.group(1).strip().lower()), number)
    return lines


def load_config(path: str | Path | None) -> Config:
    """Read and validate a configuration file; None means built-in defaults.

    Raises ConfigError naming file, line and key on the first problem.
    """
    if path is None:
        return Config()
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{name}: cannot read: {error}") from None
    return parse_config(text, name)


def parse_config(text: str, name: str = "<config>") -> Config:
    """Validate configuration text (see load_config)."""
    # configparser gives the keys of its default section to every section;
    # no header can name a section "\n" (a header is one line), so none is
    # the default section and every section is checked.
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#",), default_section="\n"
    )
    try:
        parser.read_string(text, source=name)
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{name}:{error.lineno}: [{error.section}] {error.option}: set twice"
        ) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError(
            f"{name}:{error.lineno}: [{error.section}]: section given twice"
        ) from None
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{name}:{error.lineno}: expected a [section] header before {error.line.strip()!r}"
        ) from None
    except configparser.ParsingError as error:
        lineno = error.errors[0][0]
        line = text.split("\n")[lineno - 1].strip()
        raise ConfigError(f"{name}:{lineno}: expected 'key = value', got {line!r}") from None
    lines = line_numbers(text)
    sections: dict[str, Any] = {}
    for section in parser.sections():
        # "[ dns ]" and "[DNS]" are [dns], as for keys.
        normal = section.strip().lower()
        where = f"{name}:{lines.get((normal, ''), 0)}"
        schema = SECTIONS.get(normal)
        if schema is None:
            raise ConfigError(
                f"{where}: [{section.strip()}]: unknown section; expected one of "
                + ", ".join(SECTIONS)
            )
        if normal in sections:
            again = [
                number
                for number, line in enumerate(text.split("\n"), start=1)
                if re.fullmatch(rf"\s*\[\s*{re.escape(normal)}\s*\]\s*", line, re.IGNORECASE)
            ]
            raise ConfigError(f"{name}:{again[1]}: [{normal}]: section given twice")
        sections[normal] = schema(**_parse_section(parser[section], normal, schema, name, lines))
    config = Config(source=name, **sections)
    suffixes = None
    if config.rescue.enabled:
        suffixes = orgdomain.load(PUBLIC_SUFFIX_LIST)
        if suffixes.problem is not None:
            raise ConfigError(
                f"{name}:{lines['rescue', '']}: [rescue]: {suffixes.problem}; "
                "the rescue needs it (Debian package publicsuffix)"
            )
    return dataclasses.replace(config, warnings=_warnings(config), suffixes=suffixes)


def _parse_section(
    items: Mapping[str, str],
    section: str,
    schema: type[Any],
    name: str,
    lines: Mapping[tuple[str, str], int],
) -> dict[str, Any]:
    declared = {f.name: f for f in keys(schema)}
    values: dict[str, Any] = {}
    for key_name, raw in items.items():
        where = f"{name}:{lines.get((section, key_name), 0)}: [{section}] {key_name}"
        declaration = declared.get(key_name)
        if declaration is None:
            raise ConfigError(
                f"{where}: unknown key; [{section}] takes " + ", ".join(sorted(declared))
            )
        try:
            values[key_name] = declaration.metadata["parse"](raw)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    return values


def _warnings(config: Config) -> tuple[str, ...]:
    warnings = []
    if config.dns.lookup_time > LOOKUP_TIME_WARN:
        warnings.append(
            f"{config.source}: [dns] lookup_time = {config.dns.lookup_time:g} s is above "
            f"{LOOKUP_TIME_WARN:g} s; Postfix's milter_command_timeout defaults to 30 s "
            "and would give up on the milter first"
        )
    if config.policy.exempt_recipients and config.policy.reject_stage is Stage.MAIL:
        warnings.append(
            f"{config.source}: [policy] exempt_recipients has no effect with "
            "reject_stage = mail (recipients are not known yet at MAIL FROM)"
        )
    return tuple(warnings)


def render(config: Config) -> str:
    """The effective configuration as INI text (for --check-config)."""
    out = [f"# effective configuration from {config.source or 'built-in defaults'}"]
    for name in SECTIONS:
        out.append(f"\n[{name}]")
        values = getattr(config, name)
        out.extend(f"{f.name} = {rendered(values, f)}" for f in keys(type(values)))
    return "\n".join(out) + "\n"
