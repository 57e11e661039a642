"""The configuration's declarations written out as documentation.

This module owns the texts made from spfmilter.config.schema: the commented
example file (spfmilter.cfg in the source, /etc/spfmilter/spfmilter.cfg in
the package, ``spfmilter --example-config``), the reference table in docs/configuration.md, and
the key list of the spfmilter.cfg(5) man page.  Tests check that the files
in the repository equal what this writes, so the documentation cannot drift
from the code.  Regenerate with ``python -m spfmilter.config.docs example``
(or ``man``, ``table``).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Sequence

from spfmilter.config.schema import SECTIONS, keys, rendered

EXAMPLE_HEADER = """\
# spfmilter.cfg: every key, set to its built-in default.
#
# spfmilter runs without any configuration file; this file changes nothing
# until you edit it.  Read once at start and again on SIGUSR1.  Unknown
# sections or keys and bad values are errors that name the file, line and key
# (exit status 78 at start; on reload the previous configuration is kept).
# Booleans: yes or no (or true, false).  Lists: comma separated.  Times are
# seconds and may be fractional.  [milter], [dns], [log] and [metrics] are set
# up once at start: a reload keeps them (and says so) until a restart.
# Started as root, the daemon refuses this file if anyone but root or its own
# user could have written it.  Check with:
#   spfmilter --check-config --config /etc/spfmilter/spfmilter.cfg
"""


def _defaults() -> Iterator[tuple[str, str | None, str, str, str, str]]:
    """(section, section doc or None after its first key, key, default,
    summary, doc) for every declared key, in file order."""
    for section, schema in SECTIONS.items():
        defaults = schema()
        for number, declaration in enumerate(keys(schema)):
            yield (
                section,
                (schema.__doc__ or "") if number == 0 else None,
                declaration.name,
                rendered(defaults, declaration),
                declaration.metadata["summary"],
                declaration.metadata["doc"],
            )


def example() -> str:
    """The commented example file: every key at its default."""
    out = [EXAMPLE_HEADER]
    for section, schema in SECTIONS.items():
        out.append(f"\n[{section}]\n# {schema.__doc__}\n\n")
        defaults = schema()
        for declaration in keys(schema):
            out.extend(f"# {line}\n" for line in textwrap.wrap(declaration.metadata["doc"], 76))
            if declaration.metadata["example"]:
                out.append(f"# Example: {declaration.name} = {declaration.metadata['example']}\n")
            value = rendered(defaults, declaration)
            out.append(f"{declaration.name} = {value}".rstrip() + "\n")
    return "".join(out)


def table() -> str:
    """the reference table in docs/configuration.md (Markdown)."""
    out = ["| section | key | default | meaning |", "|---|---|---|---|"]
    for section, first, name, default, summary, _ in _defaults():
        where = f"`[{section}]`" if first is not None else ""
        shown = f"`{default}`" if default else "(none)"
        out.append(f"| {where} | `{name}` | {shown} | {summary} |")
    return "\n".join(out) + "\n"


def man_keys() -> str:
    """The KEYS section of spfmilter.cfg(5), in man(7) markup."""
    out = []
    for section, first, name, default, _, doc in _defaults():
        if first is not None:
            out.append(f".SS [{section}]\n{_roff(first)}")
        shown = default or "(empty)"
        # One quoted argument: a default may hold spaces ("a, b").
        value = _roff(shown).replace('"', "\\(dq")
        out.append(f'.TP\n.BR {name} " = " "{value}"\n{_roff(doc)}')
    return "\n".join(out) + "\n"


def _roff(text: str) -> str:
    # man(7): a backslash starts an escape, and a leading dot or quote a
    # request.
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def main(argv: Sequence[str] | None = None) -> int:
    """Print one of the texts: example, table or man."""
    args = list(sys.argv[1:] if argv is None else argv)
    texts = {"example": example, "table": table, "man": man_keys}
    if len(args) != 1 or args[0] not in texts:
        print(f"usage: python -m spfmilter.config.docs {'|'.join(texts)}", file=sys.stderr)
        return 2
    sys.stdout.write(texts[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
