"""The report as text: aligned tables for a terminal or a mail.

This module owns the default output.  Every value from a log was made
visible when the summary was made (no control character reaches the
terminal); here long names are shortened to keep the columns, and counts
that may be off (a kept name's error, see TopK) are marked with "~".
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from spfmilter.report.summary import (
    Summary,
    accuracy,
    config_section,
    figure,
    forwarder_rule,
    organizations,
)

ROWS = 20  # rows per ranking
WIDTH = 40  # characters of a name in a column


def render(summary: Summary) -> str:
    """The whole report, ending with a line feed."""
    parts = [
        _overview(summary),
        _verdicts(summary),
        _skips(summary),
        _refusals(summary),
        _domains(summary),
        _clients(summary),
        _rescuers(summary),
        _misses(summary),
        _forwarders(summary),
        _prose(accuracy(summary), ""),
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
    rows = [["identity", "result", "accept", "reject", "defer", "total"]]
    rows += [
        [v.identity, v.result, figure(v.accept), figure(v.reject), figure(v.defer), figure(v.total)]
        for v in s.by_result
    ]
    return _block(["Verdicts by identity, result and action", *_rows(rows, "llrrrr")])


def _skips(s: Summary) -> str:
    if not s.skips:
        return ""
    rows = [[skip.reason, figure(skip.count)] for skip in s.skips]
    return _block(["Skipped, by reason", *_rows(rows, "lr")])


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
    rows = [["sender domain", "refused", "rescued"]]
    rows += [
        [_cut(d.domain or "(none)"), figure(d.refused, d.error), figure(d.rescued)]
        for d in s.domains
    ]
    title = f"Would refuse, by sender domain ({_top(len(s.domains), s.domains_seen, s.exact)})"
    return _block([title, *_rows(rows[: ROWS + 1], "lrr")])


def _clients(s: Summary) -> str:
    if not s.clients:
        return ""
    rows = [["client", "name", "refused", "rescued", "MAIL FROM", "domains", "HELO refused"]]
    rows += [
        [
            _cut(c.client_ip),
            _cut(c.client_name or "-"),
            figure(c.refused, c.error),
            figure(c.rescued),
            figure(c.mailfrom, c.error),
            organizations(s, c.domains),
            figure(c.helo_refused),
        ]
        for c in s.clients
    ]
    title = f"Would refuse, by client ({_top(len(s.clients), s.clients_seen, s.exact)})"
    return _block([title, *_rows(rows[: ROWS + 1], "llrrrrr")])


def _rescuers(s: Summary) -> str:
    if not s.rescuers:
        return ""
    rows = [["method", "domain", "rescued"]]
    rows += [[r.method, _cut(r.domain), figure(r.count, r.error)] for r in s.rescuers]
    return _block(["Rescued, by method and domain", *_rows(rows[: ROWS + 1], "llr")])


def _misses(s: Summary) -> str:
    if not s.misses:
        return ""
    rows = [["outcome", "reason", "count"]]
    rows += [[m.outcome, _cut(m.reason), figure(m.count, m.error)] for m in s.misses]
    return _block(["Not rescued, by outcome and reason", *_rows(rows[: ROWS + 1], "llr")])


def _forwarders(s: Summary) -> str:
    lines = ["Likely forwarders", _prose(f"Clients {forwarder_rule(s)}.", "  ").rstrip("\n")]
    if not s.forwarders:
        return _block([*lines, "  none"])
    rows = [["client", "name", "domains", "refused", "share", "rescued", "config"]]
    rows += [
        [
            _cut(f.client.client_ip),
            _cut(f.client.client_name or "-"),
            organizations(s, f.client.domains),
            figure(f.client.refused, f.client.error),
            f"{f.share:.0%}",
            figure(f.client.rescued),
            f.config or "-",
        ]
        for f in s.forwarders
    ]
    lines += _rows(rows[: ROWS + 1], "llrrrrl")
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
