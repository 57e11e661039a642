"""Sender domains as the report groups them, and names fit for a config line.

This module owns two small judgements about names.  Which sender domains
are "unrelated": without the Public Suffix List (the report reads logs and
uses no data files), a domain's organization is guessed as its last two
labels, or three under a two-letter country code whose second label is one
of the common second-level registries (example.co.uk, example.com.au).
The guess is weak where a suffix is private (each blog under a hosting
suffix counts as that host's one organization), and errs that way, towards
fewer distinct organizations and so fewer forwarder candidates.  And which
client names may go into a config line as they are: names of two labels
or more, each of letters, digits, hyphens and underscores, which the
config's domain lists take.
"""

from __future__ import annotations

import re

# Second-level labels under which country-code registries hand out names.
_SECOND_LEVEL = frozenset(
    {"ac", "co", "com", "edu", "go", "gob", "gov", "ltd", "mil", "ne", "net", "or", "org", "plc"}
)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")


def sender_domain(sender: str) -> str:
    """The domain part of a MAIL FROM address, lower case, without a final
    dot ("" when there is none)."""
    return sender.rpartition("@")[2].lower().rstrip(".")


def organization(domain: str) -> str:
    """The registered domain as far as two or three labels tell it."""
    labels = domain.split(".")
    if len(labels) > 2 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def host_name(name: str) -> bool:
    """Whether `name` is a host name a config file can take as it is."""
    return _HOST_NAME.fullmatch(name.lower()) is not None
