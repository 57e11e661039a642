"""The report as one self-contained HTML page with bar charts.

This module owns the --html output, for an administrator who would rather
look than read: the same summary as the text, each table with CSS bars.
The page stands alone: its style is inline, it has no script and refers to
nothing outside itself (links only to its own sections), and its
Content-Security-Policy forbids loading anything, so that opening it never
reaches the network even if a value slipped through.  None can: every text
goes through html.escape here (after spfmilter.printable.escape made it printable), and
the only values in attributes are numbers computed here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import TypeVar

from spfmilter.report import summary
from spfmilter.report.summary import Summary, accuracy, config_section, figure, forwarder_rule

ROWS = 50  # rows per ranking

Item = TypeVar("Item")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .15em .6em; text-align: left; vertical-align: middle; }
th { border-bottom: 1px solid #999; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.name { max-width: 28em; overflow-wrap: anywhere; }
.bar { display: flex; width: 18em; height: .9em; background: #eee; }
.bar span { display: block; height: 100%; }
.accept, .rescued { background: #4a9d5b; } .reject, .refused { background: #c94a3d; }
.defer { background: #e0a030; } .unknown { background: #8c8c8c; }
.key span { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; }
pre { background: #f4f4f4; padding: .8em; }
p.note { color: #555; }
"""
# Content-Security-Policy: nothing may be loaded; the inline style may apply.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def render(s: Summary) -> str:
    """The whole page."""
    sections = [
        _overview(s),
        _verdicts(s),
        _skips(s),
        _refusals(s),
        _domains(s),
        _clients(s),
        _rescuers(s),
        _misses(s),
        _forwarders(s),
        f'<p class="note">{accuracy(s)}</p>\n',
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        "<title>spfmilter report</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>spfmilter report</h1>\n"
        "<nav>"
        + "".join(
            f'<a href="#{anchor}">{title}</a>'
            for anchor, title in (
                ("verdicts", "Verdicts"),
                ("refusals", "Refusals"),
                ("domains", "By sender domain"),
                ("clients", "By client"),
                ("forwarders", "Likely forwarders"),
            )
        )
        + "</nav>\n"
        + "".join(sections)
        + "</body>\n</html>\n"
    )


def _overview(s: Summary) -> str:
    inputs = ", ".join(s.inputs)
    rows = [
        ["verdicts", figure(s.verdicts)],
        ["of them in dry run (counted as what would have been done)", figure(s.dry_run)],
        ["skipped", figure(s.skipped)],
        ["other lines (not spfmilter's verdicts)", figure(s.other_lines)],
        ["unreadable (start as verdicts, fields do not read)", figure(s.unreadable)],
    ]
    return f"<p>{s.lines:,} lines read from {escape(inputs)}.</p>\n" + _table(
        ["", "count"], [[escape(label), count] for label, count in rows], "ln"
    )


def _verdicts(s: Summary) -> str:
    most = max((v.total for v in s.by_result), default=0)
    return (
        _heading("verdicts", "Verdicts by identity, result and action")
        + _key([("accept", "accept"), ("reject", "reject"), ("defer", "defer")])
        + _ranking(
            s,
            summary.VERDICT_COLUMNS,
            s.by_result,
            lambda v: _bar(most, [(v.accept, "accept"), (v.reject, "reject"), (v.defer, "defer")]),
        )
    )


def _skips(s: Summary) -> str:
    if not s.skips:
        return ""
    most = max(skip.count for skip in s.skips)
    return _heading("skips", "Skipped, by reason") + _ranking(
        s, summary.SKIP_COLUMNS, s.skips, lambda skip: _bar(most, [(skip.count, "unknown")])
    )


def _refusals(s: Summary) -> str:
    r = s.refusals
    parts = [
        ("rescued by DKIM", r.rescued_dkim, "rescued"),
        ("rescued by ARC", r.rescued_arc, "rescued"),
        ("evaluated, not rescued", r.not_rescued, "refused"),
        ("too large to evaluate", r.oversized, "refused"),
        ("deferred: temporary error in rescue", r.deferred, "defer"),
        ("rescue not evaluated", r.not_evaluated, "unknown"),
    ]
    rows = [["would refuse (MAIL FROM)", figure(r.total), _bar(r.total, [(r.total, "refused")])]]
    rows += [[escape(label), figure(n), _bar(r.total, [(n, kind)])] for label, n, kind in parts]
    rows.append(["would still refuse", figure(r.still_refused), ""])
    rows.append(["of them with exempt recipients", figure(r.exempt_recipients), ""])
    rows.append(["refused at HELO (whatever mailfrom_reject says)", figure(s.helo_refused), ""])
    reject = ", ".join(s.reject) or "(none)"
    return _heading(
        "refusals", f"Refusals with [policy] mailfrom_reject = {escape(reject)}"
    ) + _table(["", "transactions", ""], rows, "lnl")


def _domains(s: Summary) -> str:
    most = max((d.refused for d in s.domains), default=0)
    return (
        _heading("domains", "Would refuse, by sender domain")
        + _key([("rescued", "rescued"), ("refused", "still refused")])
        + _ranking(
            s,
            summary.DOMAIN_COLUMNS,
            s.domains[:ROWS],
            lambda d: _bar(most, [(d.rescued, "rescued"), (d.refused - d.rescued, "refused")]),
        )
    )


def _clients(s: Summary) -> str:
    most = max((c.refused + c.helo_refused for c in s.clients), default=0)
    return (
        _heading("clients", "Would refuse, by client")
        + _key([("rescued", "rescued"), ("refused", "still refused"), ("defer", "HELO refused")])
        + _ranking(
            s,
            summary.CLIENT_COLUMNS,
            s.clients[:ROWS],
            lambda c: _bar(
                most,
                [
                    (c.rescued, "rescued"),
                    (c.refused - c.rescued, "refused"),
                    (c.helo_refused, "defer"),
                ],
            ),
        )
    )


def _rescuers(s: Summary) -> str:
    if not s.rescuers:
        return ""
    most = max(r.count for r in s.rescuers)
    return _heading("rescuers", "Rescued, by method and domain") + _ranking(
        s, summary.RESCUER_COLUMNS, s.rescuers[:ROWS], lambda r: _bar(most, [(r.count, "rescued")])
    )


def _misses(s: Summary) -> str:
    if not s.misses:
        return ""
    most = max(m.count for m in s.misses)
    kinds = {"temporary": "defer"}
    return _heading("misses", "Not rescued, by outcome and reason") + _ranking(
        s,
        summary.MISS_COLUMNS,
        s.misses[:ROWS],
        lambda m: _bar(most, [(m.count, kinds.get(m.outcome, "refused"))]),
    )


def _forwarders(s: Summary) -> str:
    heading = _heading("forwarders", "Likely forwarders") + (
        f"<p>Clients {forwarder_rule(s)}.  A spam source fails for many domains too: check "
        "each one before trusting it.</p>\n"
    )
    if not s.forwarders:
        return heading + "<p>None.</p>\n"
    table = _ranking(s, summary.FORWARDER_COLUMNS, s.forwarders[:ROWS])
    section = config_section(s.forwarders[:ROWS])
    if not section:
        return heading + table
    return (
        heading
        + table
        + "<p>To skip SPF for all those listed, add to spfmilter.cfg (beside any values "
        "there):</p>\n" + f"<pre>{escape(section)}</pre>\n"
    )


def _heading(anchor: str, title: str) -> str:
    return f'<h2 id="{anchor}">{title}</h2>\n'


def _key(parts: Sequence[tuple[str, str]]) -> str:
    return (
        '<p class="key">'
        + "".join(f'<span class="{kind}"></span>{label}' for kind, label in parts)
        + "</p>\n"
    )


def _bar(most: int, parts: Sequence[tuple[int, str]]) -> str:
    """A bar as long as the parts' sum relative to `most`, one colour each."""
    if most <= 0:
        return ""
    spans = "".join(
        f'<span class="{kind}" style="width:{100 * n / most:.2f}%"></span>'
        for n, kind in parts
        if n > 0
    )
    return f'<div class="bar">{spans}</div>'


def _ranking(
    s: Summary,
    columns: Sequence[summary.Column[Item]],
    items: Sequence[Item],
    bar: Callable[[Item], str] | None = None,
) -> str:
    """Items as a table under their columns' headings, every cell escaped,
    numbers aligned right; then each item's bar, if `bar` draws one."""
    headers = [escape(column.heading) for column in columns]
    rows = [[escape(column.cell(s, item)) for column in columns] for item in items]
    kinds = "".join("n" if column.number else "l" for column in columns)
    if bar is None:
        return _table(headers, rows, kinds)
    bars = [[*row, bar(item)] for row, item in zip(rows, items, strict=True)]
    return _table([*headers, ""], bars, kinds + "l")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], kinds: str) -> str:
    """Cells already escaped; "n" columns are numbers, "l" names."""
    classes = ["n" if kind == "n" else "name" for kind in kinds]
    head = "".join(f'<th class="{c}">{h}</th>' for h, c in zip(headers, classes, strict=True))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{c}">{cell}</td>' for cell, c in zip(row, classes, strict=True))
        + "</tr>\n"
        for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"
