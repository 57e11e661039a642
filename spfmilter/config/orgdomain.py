"""Organizational domains (RFC 7489 section 3.2) from the Public Suffix List.

This module owns when two domains count as aligned for the rescue of
forwarded mail: the same name, or the same organizational domain, the
public suffix of a name plus one more label.  The list is read with the
configuration that turns the rescue on (once per load, from the file the
administrator's system provides: Debian's publicsuffix package); a list
that cannot be read is a configuration error, and the loader says why.

Both sections of the list count, the ICANN one and the private one:
RFC 7489 section 3.2 names no section, OpenDMARC reads every rule of the
file, and the private section is what keeps two customers of one hosting
service apart (alice.github.io and bob.github.io are separate
organizations; with ICANN rules alone both would belong to github.io and
each could vouch for the other).

Names are compared as A-labels in lower case without a trailing dot: DKIM's
d= is in A-labels (RFC 6376 section 3.5), a MAIL FROM domain may come in
U-labels (RFC 6531), and the list itself is written in U-labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PublicSuffixes:
    """The rules of the Public Suffix List, as A-labels.

    `rules` are plain suffixes ("co.uk"), `wildcards` the parents of "*"
    rules ("ck" for "*.ck"), `exceptions` the names of "!" rules ("www.ck").
    `problem` says why the list is missing (then every set is empty and
    alignment means equality).
    """

    rules: frozenset[str] = frozenset()
    wildcards: frozenset[str] = frozenset()
    exceptions: frozenset[str] = frozenset()
    problem: str | None = field(default=None, compare=False)

    @property
    def loaded(self) -> bool:
        """Whether a list was read (else alignment is exact match only)."""
        return self.problem is None

    def public_suffix(self, domain: str) -> str:
        """The public suffix of `domain` (normalised with normalise()).

        The list's algorithm: an exception rule prevails (its suffix is the
        rule less its first label), else the matching rule with the most
        labels, else the implicit rule "*" (the last label).
        """
        labels = domain.split(".")
        for start in range(len(labels)):
            suffix = ".".join(labels[start:])
            if suffix in self.exceptions:
                return ".".join(labels[start + 1 :])
            if suffix in self.rules:
                return suffix
            parent = ".".join(labels[start + 1 :])
            if parent and parent in self.wildcards:
                return suffix
        return labels[-1]

    def organizational_domain(self, domain: str) -> str | None:
        """The organizational domain of `domain` (RFC 7489 section 3.2): its
        public suffix and one more label.  None for a public suffix itself,
        which has no such label, and for a name that is not a domain."""
        name = normalise(domain)
        if not name:
            return None
        suffix = self.public_suffix(name)
        if name == suffix:
            return None
        owner = name[: -len(suffix) - 1]
        return f"{owner.rpartition('.')[2]}.{suffix}"

    def aligned(self, first: str, second: str) -> bool:
        """Relaxed alignment (RFC 7489 section 3.1): the same name, or the
        same organizational domain.  Without the list: the same name."""
        one, other = normalise(first), normalise(second)
        if not one or not other:
            return False
        if one == other:
            return True
        if not self.loaded:
            return False
        organization = self.organizational_domain(one)
        return organization is not None and organization == self.organizational_domain(other)


def normalise(domain: str) -> str:
    """`domain` in lower case, without a trailing dot, its U-labels as
    A-labels; "" when it is no domain name (an empty label, a label IDNA
    cannot encode)."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    if not name or any(not label for label in name.split(".")):
        return ""
    return name


def load(path: Path | str) -> PublicSuffixes:
    """Read the Public Suffix List at `path` (once, at start-up).

    A file that cannot be read yields a list without rules and a `problem`
    for the caller's warning; a rule IDNA cannot encode is left out (no
    domain can match it).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        return PublicSuffixes(problem=f"cannot read the public suffix list {path}: {error}")
    rules: set[str] = set()
    wildcards: set[str] = set()
    exceptions: set[str] = set()
    for line in text.splitlines():
        # The list's format: one rule a line, up to the first white space;
        # "//" starts a comment line.
        words = line.split()
        if not words or words[0].startswith("//"):
            continue
        rule = words[0]
        if rule.startswith("!"):
            target, rule = exceptions, rule[1:]
        elif rule.startswith("*."):
            target, rule = wildcards, rule[2:]
        else:
            target = rules
        name = normalise(rule)
        if name:
            target.add(name)
    if not rules:
        return PublicSuffixes(problem=f"the public suffix list {path} has no rules")
    return PublicSuffixes(frozenset(rules), frozenset(wildcards), frozenset(exceptions))
