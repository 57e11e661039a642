"""The report as text: aligned tables for a terminal or a mail.

This module owns the default output.  Every value from a log was made
visible when the summary was made (no control character reaches the
terminal), and counts that may be off (a kept name's error, see TopK)
were marked with "~"; here every name in a ranking is shortened to keep
the columns, and numbers are aligned right.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TypeVar

from spfmilter.report import summary
from spfmilter.report.summary import Summary, accuracy, config_section, figure, forwarder_rule

ROWS = 20  # rows per ranking
WIDTH = 40  # characters of a name in a column

Item = TypeVar("Item")


def render(s: Summary) -> str:
    """The whole report, ending with a line feed."""
    parts = [
        _overview(s),
        _verdicts(s),
        _skips(s),
        _refusals(s),
        _domains(s),
        _clients(s),
        _rescuers(s),
        _misses(s),
        _forwarders(s),
        _prose(accuracy(s), ""),
    ]
    return "\n".join(part for part in parts if part)


def _overview(s: Summary) -> str:
    inputs = ", ".join(s.inputs)
    lines = [
        f"spfmilter report: {s.lines:,} lines read from {inputs}",
        *_rows(
            [
                ["verdicts", figure(s.verdicts), _dry_run(s)],
                ["skipped", figure(s.skipped), ""],
                ["other lines", figure(s.other_lines), "not spfmilter's verdicts"],
                *(
                    [["unreadable", figure(s.unreadable), "start as verdicts, fields do not read"]]
                    if s.unreadable
                    else []
                ),
            ],
            "lrl",
        ),
    ]
    return _block(lines)


def _dry_run(s: Summary) -> str:
    if not s.dry_run:
        return ""
    return f"{s.dry_run:,} in dry run, counted as what would have been done"


def _verdicts(s: Summary) -> str:
    if not s.by_result:
        return ""
    verdicts = _ranking(s, summary.VERDICT_COLUMNS, s.by_result)
    return _block(["Verdicts by identity, result and action", *verdicts])


def _skips(s: Summary) -> str:
    if not s.skips:
        return ""
    # The reasons need no heading; the other rankings' columns do.
    return _block(["Skipped, by reason", *_ranking(s, summary.SKIP_COLUMNS, s.skips, headed=False)])


def _refusals(s: Summary) -> str:
    r = s.refusals
    rows = [
        ["would refuse (MAIL FROM)", figure(r.total)],
        ["  rescued by DKIM", figure(r.rescued_dkim)],
        ["  rescued by ARC", figure(r.rescued_arc)],
        ["  evaluated, not rescued", figure(r.not_rescued)],
        ["  too large to evaluate", figure(r.oversized)],
        ["  deferred: temporary error in rescue", figure(r.deferred)],
        ["  rescue not evaluated", figure(r.not_evaluated)],
        ["would still refuse", figure(r.still_refused)],
    ]
    if r.exempt_recipients:
        rows.append(["  of them with exempt recipients", figure(r.exempt_recipients)])
    rows.append(["refused at HELO (whatever mailfrom_reject says)", figure(s.helo_refused)])
    title = f"Refusals with [policy] mailfrom_reject = {', '.join(s.reject) or '(none)'}"
    return _block([title, *_rows(rows, "lr")])


def _domains(s: Summary) -> str:
    if not s.domains:
        return ""
    title = f"Would refuse, by sender domain ({_top(len(s.domains), s.domains_seen, s.exact)})"
    return _block([title, *_ranking(s, summary.DOMAIN_COLUMNS, s.domains[:ROWS])])


def _clients(s: Summary) -> str:
    if not s.clients:
        return ""
    title = f"Would refuse, by client ({_top(len(s.clients), s.clients_seen, s.exact)})"
    return _block([title, *_ranking(s, summary.CLIENT_COLUMNS, s.clients[:ROWS])])


def _rescuers(s: Summary) -> str:
    if not s.rescuers:
        return ""
    rescuers = _ranking(s, summary.RESCUER_COLUMNS, s.rescuers[:ROWS])
    return _block(["Rescued, by method and domain", *rescuers])


def _misses(s: Summary) -> str:
    if not s.misses:
        return ""
    misses = _ranking(s, summary.MISS_COLUMNS, s.misses[:ROWS])
    return _block(["Not rescued, by outcome and reason", *misses])


def _forwarders(s: Summary) -> str:
    lines = ["Likely forwarders", _prose(f"Clients {forwarder_rule(s)}.", "  ").rstrip("\n")]
    if not s.forwarders:
        return _block([*lines, "  none"])
    lines += _ranking(s, summary.FORWARDER_COLUMNS, s.forwarders[:ROWS])
    lines.append("  A spam source fails for many domains too: check each one before trusting it.")
    section = config_section(s.forwarders[:ROWS])
    if section:
        lines.append(
            "  To skip SPF for all those listed, add to spfmilter.cfg (beside any values there):"
        )
        lines += [f"    {line}" for line in section.splitlines()]
    return _block(lines)


def _top(shown: int, seen: int, exact: bool) -> str:
    kept = min(shown, ROWS)
    if exact:
        return f"{kept:,} of {seen:,}"
    return f"{kept:,} most frequent"


def _ranking(
    s: Summary,
    columns: Sequence[summary.Column[Item]],
    items: Sequence[Item],
    *,
    headed: bool = True,
) -> list[str]:
    """Items as aligned lines, under their columns' headings if `headed`:
    names shortened to WIDTH, numbers aligned right."""
    rows = [[column.heading for column in columns]] if headed else []
    rows += [
        [
            column.cell(s, item) if column.number else _cut(column.cell(s, item))
            for column in columns
        ]
        for item in items
    ]
    return _rows(rows, "".join("r" if column.number else "l" for column in columns))


def _cut(name: str) -> str:
    return name if len(name) <= WIDTH else name[: WIDTH - 3] + "..."


def _rows(rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Rows as lines, indented, each column as wide as its widest cell
    ("l" or "r" per column: which side a cell keeps)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    return [
        "  "
        + "  ".join(
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ).rstrip()
        for row in rows
    ]


def _prose(text: str, indent: str) -> str:
    return textwrap.fill(text, 79, initial_indent=indent, subsequent_indent=indent) + "\n"


def _block(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
